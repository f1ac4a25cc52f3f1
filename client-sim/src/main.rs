//! `client-sim`: runs the demo (a hub, an edge and a simulated fleet in one process).

use anyhow::Context;
use clap::{Parser, Subcommand};
use client_sim::demo::{run_demo, DemoPorts};
use client_sim::scenario::ScenarioConfig;
use region_hub::MapConfig;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "client-sim",
    version,
    about = "Trackline fleet simulator, demo and load generator"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    demo: DemoArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a hub and an edge in this process and drive a simulated fleet through them (default).
    Demo(DemoArgs),
    /// Drive an already running cluster (edges and hubs given by address) and report lost
    /// status events, position gaps and what consumers saw around injected faults.
    Load(client_sim::load::LoadArgs),
    /// Seed-like load against one running hub and edge: tens of thousands of drivers (each
    /// one session, delivery after delivery along road routes) and a consumer per delivery,
    /// from worker processes; reports sessions held, handshakes, reconnects, latency, lost
    /// status events and the nodes' CPU and memory (JSON and an SVG plot).
    Scale(client_sim::scale::ScaleArgs),
}

/// Built-in road networks.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum City {
    /// Central Helsinki from OpenStreetMap (built into `roadnet`).
    Helsinki,
    /// A generated grid city (`--grid-size`, `--grid-spacing-m`).
    Grid,
}

#[derive(clap::Args, Debug, Clone)]
struct DemoArgs {
    /// Simulated drivers (one delivery each), all measured; see also `--warmup-trips`.
    #[arg(long, default_value_t = 50)]
    drivers: usize,
    /// Simulated consumers, spread over the deliveries.
    #[arg(long, default_value_t = 50)]
    consumers: usize,
    /// How long to run, in real time (e.g. 30s, 5m); Ctrl-C stops earlier.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "30s")]
    duration: Duration,
    /// Time between two fixes of one driver, in simulated time (phones in production send
    /// every 4 s).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    fix_interval: Duration,
    /// Compress time: simulated seconds per real second. The hub, the edge and the drivers
    /// share this clock, so fixes, the edge's filter and ETAs agree.
    #[arg(long, default_value_t = 1.0)]
    speedup: f64,
    /// Road network: the built-in Helsinki extract, or a generated grid city.
    #[arg(long, value_enum, default_value_t = City::Helsinki)]
    city: City,
    /// Intersections per side of the grid city (`--city grid`).
    #[arg(long, default_value_t = 40)]
    grid_size: usize,
    /// Distance between intersections of the grid city, metres.
    #[arg(long, default_value_t = 150.0)]
    grid_spacing_m: f64,
    /// Your own OpenStreetMap extract (.osm.pbf) instead of `--city`.
    #[arg(long, value_name = "FILE")]
    map: Option<PathBuf>,
    /// Share of trips whose driver takes a wrong turn more than 500 m off the plan.
    #[arg(long, default_value_t = 0.05)]
    wrong_turn_share: f64,
    /// GPS noise per axis (standard deviation), metres.
    #[arg(long, default_value_t = 5.0)]
    gps_noise_m: f64,
    /// Seed of the trips and of the traffic field (random when absent; the report has it).
    #[arg(long)]
    seed: Option<u64>,
    /// Extra trips dispatched first, without consumers and not scored, so the hub's speed
    /// model has learnt the city before the measured trips (`--drivers` of them) set off.
    #[arg(long, default_value_t = 0)]
    warmup_trips: usize,
    /// Also write each trip's ETA figures at its midpoint (JSON) to this file.
    #[arg(long, value_name = "FILE")]
    trips_out: Option<PathBuf>,
    /// Who moves the status after assignment: `api` (the order service) or `geofence` (the
    /// hub's geofences, then the driver's photo proof at the door).
    #[arg(long, value_enum, default_value = "api")]
    lifecycle: client_sim::lifecycle::LifecycleMode,
    /// Share of consumers on WebSocket; the rest use WebTransport.
    #[arg(long, default_value_t = 0.5)]
    websocket_share: f64,
    /// Share of drivers on the HTTPS fallback; the rest send QUIC datagrams.
    #[arg(long, default_value_t = 0.1)]
    https_driver_share: f64,
    /// Share of fixes sent with a bad accuracy on purpose, to exercise the filter.
    #[arg(long, default_value_t = 0.01)]
    bad_fix_share: f64,
    /// Where the demo keeps its certificates, keys and hub database.
    #[arg(long, default_value = "data/demo")]
    data_dir: PathBuf,
    /// Listen on the nodes' default ports instead of ephemeral ones.
    #[arg(long)]
    fixed_ports: bool,
    /// Write the run's JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let args = match cli.command {
        Some(Command::Demo(a)) => a,
        Some(Command::Load(a)) => return run_load(a),
        Some(Command::Scale(a)) => return run_scale(a),
        None => cli.demo,
    };
    nodekit::init_tracing("warn");
    certs::install_default_crypto_provider();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    rt.block_on(async move {
        let cfg = ScenarioConfig {
            drivers: args.drivers.max(1),
            consumers: args.consumers,
            websocket_share: args.websocket_share,
            https_driver_share: args.https_driver_share,
            bad_fix_share: args.bad_fix_share,
            duration: args.duration,
            fix_interval: args.fix_interval,
            progress: std::io::stderr().is_terminal(),
            drain: Duration::from_secs(5),
            speedup: args.speedup,
            map: match args.city {
                City::Helsinki => MapConfig::Helsinki,
                City::Grid => MapConfig::Grid {
                    rows: args.grid_size,
                    cols: args.grid_size,
                    spacing_m: args.grid_spacing_m,
                },
            },
            map_pbf: args.map.clone(),
            wrong_turn_share: args.wrong_turn_share,
            gps_noise_m: args.gps_noise_m,
            seed: args.seed,
            trips_out: args.trips_out.clone(),
            lifecycle: args.lifecycle,
            warmup_trips: args.warmup_trips,
        };
        let ports = DemoPorts {
            ip: std::net::Ipv4Addr::LOCALHOST.into(),
            fixed: args.fixed_ports,
        };
        let report = run_demo(&args.data_dir, ports, &cfg).await?;
        let json = serde_json::to_string_pretty(&report)?;
        println!("{json}");
        if let Some(path) = &args.report {
            std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("report written to {}", path.display());
        }
        anyhow::Ok(())
    })
}

/// `client-sim load`: prints the JSON report (and writes it with `--report`).
fn run_load(args: client_sim::load::LoadArgs) -> anyhow::Result<()> {
    nodekit::init_tracing("warn");
    certs::install_default_crypto_provider();
    let rt = tokio::runtime::Runtime::new().context("starting the tokio runtime")?;
    let path = args.report.clone();
    let report = rt.block_on(client_sim::load::run(args))?;
    let json = serde_json::to_string_pretty(&report)?;
    println!("{json}");
    if let Some(path) = &path {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("{}", client_sim::load::summary(&report));
    Ok(())
}

/// `client-sim scale`: the coordinator (or one of its workers).
fn run_scale(args: client_sim::scale::ScaleArgs) -> anyhow::Result<()> {
    nodekit::init_tracing("warn");
    certs::install_default_crypto_provider();
    let code = client_sim::scale::main(args)?;
    if code != 0 {
        std::process::exit(code);
    }
    Ok(())
}
