//! `edge-node`: the edge PoP binary (thin: CLI, tracing, config, spawn, drain on a signal).

use anyhow::Context;
use clap::Parser;
use edge_node::EdgeConfig;
use std::path::PathBuf;

/// Trackline edge node: driver sessions in, filtered batches out to the region hub.
#[derive(Debug, Parser)]
#[command(
    version,
    about,
    after_help = "Config layers, later wins: the --config file, then TRACKLINE_EDGE_<FIELD> \
                  variables (`__` between nesting levels: TRACKLINE_EDGE_BATCH__FLUSH_INTERVAL_MS=5), \
                  then --set. Values are TOML; anything else is a plain string."
)]
struct Cli {
    /// TOML config file; the defaults are used without one.
    #[arg(long, env = "EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Set one config field over the file and the environment, e.g.
    /// `--set batch.flush_interval_ms=5` (repeatable; the last one of a key wins).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Validate the config (and read the TLS files it names) and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the effective config (file, environment and --set merged) as TOML, secret
    /// values redacted, and exit; with --check-config, after validating it.
    #[arg(long)]
    print_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    nodekit::init_tracing("info,edge_node=info");
    certs::install_default_crypto_provider();
    let config: EdgeConfig =
        edge_node::config::CONFIG_LAYERS.load_from_process(cli.config.as_deref(), &cli.set)?;
    if cli.print_config && !cli.check_config {
        print!(
            "{}",
            nodekit::redacted_toml(&config).context("printing config")?
        );
        return Ok(());
    }
    config.validate()?;
    if cli.check_config {
        config.tls.load().context("loading TLS files")?;
        if cli.print_config {
            print!(
                "{}",
                nodekit::redacted_toml(&config).context("printing config")?
            );
        } else {
            println!("config ok");
        }
        return Ok(());
    }
    let edge = edge_node::spawn(config).await?;
    tokio::select! {
        _ = nodekit::shutdown_signal() => {
            tracing::info!("signal received: draining (a second signal stops at once)");
            tokio::select! {
                _ = edge.drain(None) => {}
                _ = nodekit::shutdown_signal() => tracing::warn!("second signal: stopping now"),
            }
        }
        // `POST /drain` on the admin listener drained the edge.
        _ = edge.stopped() => {}
    }
    tracing::info!("shutting down");
    edge.shutdown();
    edge.join().await;
    Ok(())
}
