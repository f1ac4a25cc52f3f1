//! `edge-node`: the edge PoP binary (thin: CLI, tracing, config, spawn, drain on a signal).

use anyhow::Context;
use clap::Parser;
use edge_node::EdgeConfig;
use std::path::PathBuf;

/// Trackline edge node: driver sessions in, filtered batches out to the region hub.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// TOML config file; the defaults are used without one.
    #[arg(long, env = "EDGE_CONFIG")]
    config: Option<PathBuf>,
    /// Load and validate the config, print it, and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    nodekit::init_tracing("info,edge_node=info");
    certs::install_default_crypto_provider();
    let config: EdgeConfig = nodekit::load_config(cli.config.as_deref())?;
    config.validate()?;
    if cli.check_config {
        config.tls.load().context("loading TLS files")?;
        print!(
            "{}",
            toml::to_string_pretty(&config).context("printing config")?
        );
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
