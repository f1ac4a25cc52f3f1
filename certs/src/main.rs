//! `certs`: create the dev cluster CA, issue node and browser certificates, show them.

use clap::Parser as _;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    certs::install_default_crypto_provider();
    let cli = certs::cli::Cli::parse();
    certs::cli::run(cli, &mut std::io::stdout().lock())
}
