//! `client-sim scale`: seed-like load from one machine against one running hub and edge.
//!
//! Tens of thousands of drivers (QUIC datagrams, a share on the HTTPS fallback) each keep
//! one session for the whole run and do delivery after delivery along road routes planned as
//! the hub plans them (a wrong turn now and then); each delivery has its own consumer
//! (WebTransport or WebSocket); the order service creates the deliveries and moves their
//! status, and every acknowledged status event must reach the delivery's consumer.
//!
//! The coordinator ([`coordinator`]) re-executes this binary as worker processes
//! ([`worker`]), each under the 20,000-open-files limit and with its TCP connections bound to
//! its own loopback source addresses; it merges their lines ([`snapshot`]), samples the nodes'
//! CPU and memory from /proc ([`procstat`]), shows progress, and writes the JSON report and
//! an SVG plot ([`plot`]).

pub mod coordinator;
pub mod plot;
pub mod procstat;
pub mod snapshot;
pub mod worker;

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// `client-sim scale`.
#[derive(clap::Args, Debug, Clone)]
pub struct ScaleArgs {
    /// The edge, as `quic=HOST:PORT,https=HOST:PORT`.
    #[arg(long)]
    pub edge: String,
    /// The hub, as `https=HOST:PORT,wt=HOST:PORT`.
    #[arg(long)]
    pub hub: String,
    /// CA certificate (PEM) the nodes' certificates chain to.
    #[arg(long)]
    pub ca: PathBuf,
    /// The region's token signing key (PKCS#8 DER): signs operator and driver tokens.
    #[arg(long)]
    pub token_key: PathBuf,
    #[arg(long, default_value_t = 1)]
    pub token_kid: u32,
    /// Deliveries in flight at once: one driver each (who keeps its session across
    /// deliveries) and one consumer per delivery.
    #[arg(long, default_value_t = 50_000)]
    pub deliveries: usize,
    /// Share of consumers on WebSocket; the rest use WebTransport.
    #[arg(long, default_value_t = 0.3)]
    pub ws_share: f64,
    /// Share of drivers on the HTTPS fallback; the rest send QUIC datagrams.
    #[arg(long, default_value_t = 0.05)]
    pub https_share: f64,
    /// Drivers (with their first delivery) started per second.
    #[arg(long, default_value = "500/s", value_parser = parse_rate)]
    pub ramp_rate: f64,
    /// How long to run once every driver has started.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub steady: Duration,
    /// Time after the ramp before the steady-state window that is judged begins.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Time between two fixes of a driver (the seed's phones: 4 s).
    #[arg(long, default_value = "4s", value_parser = humantime::parse_duration)]
    pub fix_interval: Duration,
    /// Share of trips with a wrong turn that leads more than 500 m off the hub's route.
    #[arg(long, default_value_t = 0.02)]
    pub wrong_turn_share: f64,
    /// Mean wait at the pickup (the order is being prepared), seconds.
    #[arg(long, default_value_t = 600.0)]
    pub pickup_wait_s: f64,
    /// Shortest leg of a trip (driver -> pickup, pickup -> drop-off), straight line, metres.
    #[arg(long, default_value_t = 300.0)]
    pub min_leg_m: f64,
    /// Longest leg of a trip, metres (short trips let a short run see whole deliveries).
    #[arg(long, default_value_t = 5000.0)]
    pub max_leg_m: f64,
    /// Idle time of a driver between two deliveries (jittered +-50%).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub between: Duration,
    /// Worker processes (0: enough to keep each under ~9,000 TCP connections).
    #[arg(long, default_value_t = 0)]
    pub workers: usize,
    /// QUIC client endpoints (UDP sockets) per worker for drivers, and as many for
    /// WebTransport consumers: each quinn endpoint has one I/O task.
    #[arg(long, default_value_t = 4)]
    pub endpoints: usize,
    /// First two octets of the loopback source addresses (`127.X.w.n`; X from 1 to 254).
    #[arg(long, default_value_t = 77)]
    pub source_net: u8,
    /// A node process to sample (CPU, RSS) as `NAME=PID`; repeat per node.
    #[arg(long = "node")]
    pub nodes: Vec<String>,
    /// Sampling interval of nodes, sessions and latency.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub sample_interval: Duration,
    /// Seed of trips and jitter (random when absent).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Write the JSON report here (also printed); the plot goes beside it (`.svg`).
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Internal: run as worker `INDEX` of `--workers` (started by the coordinator).
    #[arg(long, hide = true)]
    pub worker_index: Option<usize>,
    /// Internal: the run's start (unix ms), shared by the workers.
    #[arg(long, hide = true)]
    pub start_unix_ms: Option<u64>,
}

impl ScaleArgs {
    /// Seconds the ramp takes.
    pub fn ramp(&self) -> Duration {
        Duration::from_secs_f64(self.deliveries as f64 / self.ramp_rate.max(0.001))
    }

    /// Workers to run: as asked, or enough for the TCP connections (WebSocket consumers and
    /// HTTPS drivers) to stay under ~9,000 per process.
    pub fn worker_count(&self) -> usize {
        if self.workers > 0 {
            return self.workers;
        }
        let tcp = self.deliveries as f64 * (self.ws_share + self.https_share);
        let by_fds = (tcp / 9000.0).ceil() as usize;
        // And at most ~25,000 deliveries (50,000 sessions) per worker.
        let by_sessions = (self.deliveries as f64 / 25_000.0).ceil() as usize;
        by_fds.max(by_sessions).max(1)
    }

    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.deliveries > 0, "--deliveries must be at least 1");
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.ws_share) && (0.0..=1.0).contains(&self.https_share),
            "--ws-share and --https-share are shares between 0 and 1"
        );
        anyhow::ensure!(self.ramp_rate > 0.0, "--ramp-rate must be positive");
        anyhow::ensure!(
            (1..=254).contains(&self.source_net),
            "--source-net must be 1..254"
        );
        anyhow::ensure!(self.worker_count() <= 250, "at most 250 workers");
        Ok(())
    }
}

/// Parses `500/s`, `500` or `30/min` into sessions per second.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let (n, per) = s.split_once('/').unwrap_or((s, "s"));
    let n: f64 = n
        .trim()
        .parse()
        .map_err(|_| format!("`{s}` is not a rate like 500/s"))?;
    let secs = match per.trim() {
        "s" | "sec" => 1.0,
        "m" | "min" => 60.0,
        other => return Err(format!("unknown unit `{other}` in `{s}` (use /s or /min)")),
    };
    Ok(n / secs)
}

/// Parses `key=HOST:PORT[,key=HOST:PORT...]` and returns the address under `key`.
pub fn target_addr(spec: &str, key: &str) -> anyhow::Result<SocketAddr> {
    for part in spec.split(',') {
        if let Some((k, v)) = part.split_once('=') {
            if k.trim() == key {
                return v
                    .trim()
                    .parse()
                    .with_context(|| format!("`{v}` in `{spec}` is not HOST:PORT"));
            }
        }
    }
    bail!("`{spec}` names no `{key}=HOST:PORT`")
}

/// Runs `scale` as the coordinator, or as a worker when started as one. Returns the exit code.
pub fn main(args: ScaleArgs) -> anyhow::Result<i32> {
    args.check()?;
    match args.worker_index {
        Some(i) => {
            // Two threads per worker: on a machine shared with the nodes (and with anything
            // else), the scheduler shares CPU per thread, and a one-thread worker starved of
            // it stops draining its UDP sockets (measured: 8 MiB queues, drops, at 20,000).
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(worker::run(args, i))?;
            Ok(0)
        }
        None => coordinator::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_and_worker_counts() {
        assert_eq!(parse_rate("500/s"), Ok(500.0));
        assert_eq!(parse_rate("120/min"), Ok(2.0));
        assert_eq!(parse_rate("7"), Ok(7.0));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("5/h").is_err());
    }
}
