//! `trackline-baseline`: the bare quinn sink and the load generators of the side-by-side
//! benchmark (thin: CLI, tracing, run, print the report).

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde::Serialize;
use std::path::Path;
use tokio_util::sync::CancellationToken;
use trackline_baseline::{mqtt_load, quic_load, sink};

/// Baselines for the side-by-side CPU benchmark (scripts/bench-baseline.sh).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Bare quinn server: accepts connections and counts their datagrams (`/metrics`).
    QuicSink(sink::SinkArgs),
    /// QUIC load: N connections (raw, or edge driver sessions), a datagram each per interval.
    QuicLoad(quic_load::QuicLoadArgs),
    /// MQTT load: N publishers -> broker -> N subscribers, QoS 0.
    MqttLoad(mqtt_load::MqttLoadArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    nodekit::init_tracing("info");
    certs::install_default_crypto_provider();
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        nodekit::shutdown_signal().await;
        on_signal.cancel();
    });
    match cli.command {
        Command::QuicSink(args) => {
            let sink = sink::spawn_sink(&args).await?;
            eprintln!(
                "quic sink on {} (admin http://{}/metrics)",
                sink.quic_addr, sink.admin_addr
            );
            stop.cancelled().await;
            sink.stop().await;
        }
        Command::QuicLoad(args) => {
            let path = args.report.clone();
            let report = quic_load::run(args, stop).await?;
            emit(&report, path.as_deref())?;
        }
        Command::MqttLoad(args) => {
            let path = args.report.clone();
            let report = mqtt_load::run(args, stop).await?;
            emit(&report, path.as_deref())?;
        }
    }
    Ok(())
}

/// Prints the report and writes it to `path`.
fn emit<T: Serialize>(report: &T, path: Option<&Path>) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(report).context("encoding the report")?;
    println!("{text}");
    if let Some(path) = path {
        std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
