//! Load mode against an existing cluster: deliveries created on the hubs, drivers spread over
//! the edges, one WebSocket consumer per delivery, status changes retried across failures, and
//! a report of lost events, position gaps and what consumers saw around each injected fault.
//!
//! Drivers and consumers are the client library's sessions (`trackline-client`: backoff with
//! jitter, redirects, resume); drivers follow road trips planned as the hub plans them
//! ([`crate::trips`]). This mode measures continuity through faults rather than ETA quality.

use crate::trips::{fix_at, TripPlanner};
use crate::truth::Timeline;
use anyhow::{bail, Context};
use parking_lot::Mutex;
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::token::{Subject, TokenSigner};
use rand::SeedableRng;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use trackline_client::io::consumer::redirect_authority;
use trackline_client::io::{
    run_consumer as run_consumer_io, run_driver as run_driver_io, ConsumerApp, ConsumerIo,
    DriverApp, DriverIo, WsConnector,
};
use trackline_client::{
    ConsumerConfig, ConsumerEvent, ConsumerSession, ConsumerTransport, DriverConfig, DriverEvent,
    DriverSession, DriverTransport, Failure,
};

/// `client-sim load`: drive an already running cluster.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// An edge, as `quic=HOST:PORT` (repeat the flag per edge). Drivers are spread over them
    /// and move to the next one when theirs fails.
    #[arg(long = "edge", required = true)]
    pub edges: Vec<String>,
    /// A hub, as `https=HOST:PORT[,wt=HOST:PORT]` (repeat per hub). Requests go to any hub and
    /// follow `307` redirects to the owner; consumers follow in-band `redirect` frames.
    #[arg(long = "hub", required = true)]
    pub hubs: Vec<String>,
    /// CA certificate (PEM) the edges' and hubs' certificates chain to.
    #[arg(long)]
    pub ca: PathBuf,
    /// The region's token signing key (PKCS#8 DER, `region-hub keygen`): signs the operator
    /// and driver tokens.
    #[arg(long)]
    pub token_key: PathBuf,
    /// Key id of `token_key` (the hubs' `token_kid`).
    #[arg(long, default_value_t = 1)]
    pub token_kid: u32,
    /// How long to run (then wait up to `settle` for consumers to catch up).
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Longest wait after `duration` for consumers to see every acknowledged event.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Share of consumers on WebTransport (needs `wt=HOST:PORT` in every `--hub`, and hubs
    /// whose `webtransport_tls` certificate chains to `--ca`); the rest use WebSocket.
    #[arg(long, default_value_t = 0.0)]
    pub wt_share: f64,
    /// Share of drivers that send their fixes over HTTPS (`POST /api/v1/tracking/locations`,
    /// the fallback of apps whose network blocks UDP; needs `https=HOST:PORT` in every
    /// `--edge`); the rest use QUIC datagrams.
    #[arg(long, default_value_t = 0.0)]
    pub https_share: f64,
    /// Deliveries in flight at once (one driver and one consumer each).
    #[arg(long, default_value_t = 12)]
    pub deliveries: usize,
    /// Lifetime of one delivery (four status changes spread over it), then a new one starts.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    pub delivery_lifetime: Duration,
    /// Time over which the slots start, evenly spread; default: one `delivery_lifetime`, so
    /// status changes spread over time (a short ramp reaches a steady fix rate sooner).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ramp: Option<Duration>,
    /// Time between two fixes of a driver.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub fix_interval: Duration,
    /// Faults injected by a harness, read at the end: one JSON object per line,
    /// `{"name": "kill-hub-2", "kind": "kill", "unix_ms": 1700000000000}`.
    #[arg(long)]
    pub faults_file: Option<PathBuf>,
    /// Write the JSON report here (it is also printed).
    #[arg(long)]
    pub report: Option<PathBuf>,
}

/// Parses `key=HOST:PORT[,key=HOST:PORT...]` and returns the address under `key`.
fn target_addr(spec: &str, key: &str) -> anyhow::Result<SocketAddr> {
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

/// The report's `status_events`.
#[derive(Debug, Default, Serialize)]
pub struct EventCounts {
    /// Status changes the hubs acknowledged (new events, not replays).
    pub acknowledged: u64,
    /// Of those, seen by the delivery's consumer as a `status` frame.
    pub seen: u64,
    /// Acknowledged but never seen: must be 0.
    pub lost: u64,
    /// The lost events (first 20), `delivery_id/event_seq`, to look up in the hubs' logs.
    pub lost_events: Vec<String>,
    /// Acknowledged answers that were replays of an earlier attempt (idempotency key).
    pub replayed: u64,
    /// Status changes given up on (no hub accepted them in time).
    pub failed: u64,
    /// Acknowledgements that arrived after the consumers were stopped (a status change still
    /// in flight when the settle time ran out). Counted as lost if unseen; should be 0.
    pub acknowledged_after_consumers_stopped: u64,
}

/// A delivery that ends this soon after a fault without a new position is not counted as
/// unrecovered (failure detection alone takes ~5 s with the `lan` profile).
pub const RECOVERY_BUDGET_MS: u64 = 10_000;

/// How long a consumer may take after its delivery ended to see the events acknowledged
/// before: longer than a failover (failure detection plus takeover, ~5-8 s) with margin.
const CATCH_UP: Duration = Duration::from_secs(30);

/// How long one status change is retried (across hubs, through failovers) before it counts
/// as failed.
const STATUS_BUDGET: Duration = Duration::from_secs(30);

/// One injected fault, as the consumers lived through it.
#[derive(Debug, Serialize)]
pub struct FaultReport {
    /// Deliveries that ended (`delivered`) less than [`RECOVERY_BUDGET_MS`] after the
    /// fault without a position in between: too short to judge.
    pub ended_before_recovery: usize,
    /// Seconds after the load started.
    pub at_s: f64,
    pub kind: String,
    /// Deliveries whose consumer had a position before the fault and whose delivery was
    /// still active afterwards (minus `ended_before_recovery`).
    pub active_deliveries: usize,
    /// Of those, how many consumers received a position afterwards (before their delivery
    /// ended).
    pub recovered: usize,
    /// Longest time from the fault to a consumer's next position, seconds (the failover time
    /// seen by consumers).
    pub max_time_to_next_position_s: f64,
    /// Positions received by all consumers in the 30 s after the fault.
    pub positions_within_30s: u64,
}

/// The report's `history`: whether the positions consumers saw are in the delivery's stored
/// history (`GET /api/v1/tracking/{id}/history` at its owner) once it has ended, through
/// whatever failovers it lived through.
#[derive(Debug, Default, Serialize)]
pub struct HistoryCheck {
    /// Completed deliveries whose history was read.
    pub deliveries_checked: u64,
    /// Positions their consumers received.
    pub positions_seen: u64,
    /// Of those, not in the history (lost with a hub, or shed).
    pub missing_from_history: u64,
    /// Deliveries with at least one missing position.
    pub deliveries_with_gaps: u64,
    /// Deliveries whose history could not be read (no hub answered within the budget).
    pub read_failures: u64,
}

/// The load mode's report.
#[derive(Debug, Serialize)]
pub struct LoadReport {
    pub duration_s: f64,
    pub edges: usize,
    pub hubs: usize,
    pub deliveries_created: u64,
    pub deliveries_completed: u64,
    pub fixes_sent: u64,
    pub positions_received: u64,
    pub status_events: EventCounts,
    pub history: HistoryCheck,
    /// Longest time any consumer went without a position while its delivery was active
    /// (from its first position to the `delivered` acknowledgement).
    pub max_position_gap_s: f64,
    /// When that gap began, seconds after the load started (to match it with a fault).
    pub max_position_gap_from_s: f64,
    pub faults: BTreeMap<String, FaultReport>,
    pub driver_reconnects: u64,
    pub driver_redirects: u64,
    pub consumer_reconnects: u64,
    pub consumer_redirects: u64,
    /// Redirects naming the other transport's URL (a WebSocket URL sent to a WebTransport
    /// consumer or the reverse), followed to the same hub's right address.
    pub consumer_redirects_wrong_transport: u64,
    /// Consumers (deliveries) watched over WebSocket and over WebTransport.
    pub consumers_websocket: u64,
    pub consumers_webtransport: u64,
    /// Drivers (deliveries) sending over QUIC and over the HTTPS fallback.
    pub drivers_quic: u64,
    pub drivers_https: u64,
    pub http_redirects_followed: u64,
    pub http_retries: u64,
    /// Number of errors, and the first few.
    pub errors: u64,
    pub first_errors: Vec<String>,
}

#[derive(Default)]
struct Counters {
    deliveries_created: u64,
    deliveries_completed: u64,
    fixes_sent: u64,
    driver_reconnects: u64,
    driver_redirects: u64,
    consumer_reconnects: u64,
    consumer_redirects: u64,
    consumers_ws: u64,
    consumers_wt: u64,
    drivers_quic: u64,
    drivers_https: u64,
    consumer_redirects_wrong_transport: u64,
    http_redirects: u64,
    http_retries: u64,
    replayed: u64,
    failed: u64,
    errors: u64,
    first_errors: Vec<String>,
}

/// What happened to one delivery, for the report.
#[derive(Default)]
struct Track {
    acked: BTreeSet<u64>,
    /// Of `acked`, those acknowledged after the consumers were stopped.
    acked_late: BTreeSet<u64>,
    seen: BTreeSet<u64>,
    /// Unix ms of every position received.
    positions: Vec<u64>,
    /// The driver's timestamp of every position received (to find it in the history).
    position_ts: BTreeSet<u64>,
    /// Unix ms the delivery ended (`delivered` acknowledged, or the run stopped).
    active_to_ms: Option<u64>,
}

struct Shared {
    hubs: Vec<SocketAddr>,
    /// WebTransport address of each hub (same order as `hubs`), when given.
    hubs_wt: Vec<Option<SocketAddr>>,
    edges: Vec<SocketAddr>,
    /// HTTPS address of each edge (same order as `edges`), when given.
    edges_https: Vec<Option<SocketAddr>>,
    https_share: f64,
    wt_client: Option<Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>>>,
    wt_share: f64,
    http: reqwest::Client,
    ws: WsConnector,
    planner: TripPlanner,
    quic: quinn::Endpoint,
    signer: TokenSigner,
    operator_token: String,
    counters: Mutex<Counters>,
    tracks: Mutex<BTreeMap<u64, Arc<Mutex<Track>>>>,
    fix_interval: Duration,
    /// Status changes sent and not yet answered: the run waits for them before judging
    /// whether consumers saw every acknowledged event.
    status_in_flight: AtomicUsize,
    /// Set when the consumers are stopped (`stop_all`).
    consumers_stopped: AtomicBool,
    history: Mutex<HistoryCheck>,
}

impl Shared {
    fn count(&self, f: impl FnOnce(&mut Counters)) {
        f(&mut self.counters.lock());
    }

    /// Counts an error; keeps the first of each kind (the text after the first `: `, so
    /// the same refusal from many consumers is listed once).
    fn error(&self, e: String) {
        tracing::debug!(error = %e, "load error");
        let mut c = self.counters.lock();
        c.errors += 1;
        let kind = |s: &str| s.split_once(": ").map_or(s, |x| x.1).to_owned();
        let k = kind(&e);
        if c.first_errors.len() < 20 && !c.first_errors.iter().any(|x| kind(x) == k) {
            c.first_errors.push(e);
        }
    }
}

fn start_seed() -> u64 {
    nodekit::unix_ms()
}

/// Runs the load mode and returns its report.
pub async fn run(args: LoadArgs) -> anyhow::Result<LoadReport> {
    let edges = args
        .edges
        .iter()
        .map(|s| target_addr(s, "quic"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let edges_https: Vec<Option<SocketAddr>> = args
        .edges
        .iter()
        .map(|s| target_addr(s, "https").ok())
        .collect();
    anyhow::ensure!(
        args.https_share <= 0.0 || edges_https.iter().all(Option::is_some),
        "--https-share needs https=HOST:PORT in every --edge"
    );
    let hubs = args
        .hubs
        .iter()
        .map(|s| target_addr(s, "https"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let hubs_wt: Vec<Option<SocketAddr>> = args
        .hubs
        .iter()
        .map(|s| target_addr(s, "wt").ok())
        .collect();
    let roots = certs::load_certs_pem(&args.ca).context("reading the CA")?;
    let wt_client = if args.wt_share > 0.0 {
        anyhow::ensure!(
            hubs_wt.iter().all(Option::is_some),
            "--wt-share needs wt=HOST:PORT in every --hub"
        );
        let tls = certs::client_config_with_roots(roots.clone(), &[b"h3"], certs::TlsFor::Quic)?;
        let config = wtransport::ClientConfig::builder()
            .with_bind_default()
            .with_custom_tls(tls)
            .keep_alive_interval(Some(Duration::from_millis(500)))
            .max_idle_timeout(Some(Duration::from_secs(3)))
            .context("WebTransport idle timeout")?
            .build();
        Some(Arc::new(
            wtransport::Endpoint::client(config).context("WebTransport client endpoint")?,
        ))
    } else {
        None
    };
    let tcp_tls =
        certs::client_config_with_roots(roots.clone(), &[b"h2", b"http/1.1"], certs::TlsFor::Tcp)?;
    let ws_tls =
        certs::client_config_with_roots(roots.clone(), &[b"http/1.1"], certs::TlsFor::Tcp)?;
    let quic_tls =
        certs::client_config_with_roots(roots, &[protocol::ALPN_DRIVER], certs::TlsFor::Quic)?;
    let mut quic_cfg = certs::quinn_client_config(quic_tls)?;
    let mut transport = quinn::TransportConfig::default();
    // Notice a dead or partitioned edge within a few seconds, not quinn's 30 s default.
    transport.keep_alive_interval(Some(Duration::from_millis(500)));
    transport.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(3)).context("idle timeout")?,
    ));
    quic_cfg.transport_config(Arc::new(transport));
    let mut quic = quinn::Endpoint::client("0.0.0.0:0".parse().context("bind addr")?)
        .context("binding the drivers' UDP socket")?;
    quic.set_default_client_config(quic_cfg);
    let http = reqwest::Client::builder()
        .use_preconfigured_tls(tcp_tls)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .build()
        .context("building the HTTPS client")?;
    let der = std::fs::read(&args.token_key)
        .with_context(|| format!("reading {}", args.token_key.display()))?;
    let signer = TokenSigner::from_pkcs8(args.token_kid, &der).context("token key")?;
    let operator_token = signer.sign(Subject::Operator, nodekit::unix_s(), 24 * 3600);
    let shared = Arc::new(Shared {
        hubs,
        hubs_wt,
        edges,
        edges_https,
        https_share: args.https_share,
        wt_client,
        wt_share: args.wt_share,
        http,
        ws: WsConnector::new(Arc::new(ws_tls)),
        planner: TripPlanner::helsinki(start_seed(), 20.0)?,
        quic,
        signer,
        operator_token,
        counters: Mutex::default(),
        tracks: Mutex::default(),
        fix_interval: args.fix_interval,
        status_in_flight: AtomicUsize::new(0),
        consumers_stopped: AtomicBool::new(false),
        history: Mutex::default(),
    });

    let start_ms = nodekit::unix_ms();
    let started = tokio::time::Instant::now();
    let stop_new = CancellationToken::new();
    let stop_all = CancellationToken::new();
    let mut slots = Vec::new();
    for slot in 0..args.deliveries {
        let s = shared.clone();
        let (stop_new, stop_all) = (stop_new.clone(), stop_all.clone());
        let lifetime = args.delivery_lifetime;
        // Stagger the starts so the status changes spread over time.
        let delay = args
            .ramp
            .unwrap_or(lifetime)
            .mul_f64(slot as f64 / args.deliveries.max(1) as f64);
        slots.push(tokio::spawn(async move {
            tokio::select! {
                _ = stop_new.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
            run_slot(s, slot, lifetime, stop_new, stop_all).await;
        }));
    }
    tokio::select! {
        _ = tokio::time::sleep(args.duration) => {}
        _ = nodekit::shutdown_signal() => {}
    }
    stop_new.cancel();
    // Status changes in flight are answered first (each has its own retry budget), so an
    // event acknowledged now is still watched for; then consumers get up to `settle` to
    // catch up with everything acknowledged.
    let posts_until = tokio::time::Instant::now() + STATUS_BUDGET + Duration::from_secs(5);
    while tokio::time::Instant::now() < posts_until
        && shared.status_in_flight.load(Ordering::SeqCst) > 0
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let settle_until = tokio::time::Instant::now() + args.settle;
    while tokio::time::Instant::now() < settle_until && !all_seen(&shared) {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shared.consumers_stopped.store(true, Ordering::SeqCst);
    stop_all.cancel();
    for s in slots {
        let _ = tokio::time::timeout(Duration::from_secs(10), s).await;
    }
    shared.quic.close(quinn::VarInt::from_u32(0), b"done");
    let end_ms = nodekit::unix_ms();
    let faults = match &args.faults_file {
        Some(p) => read_faults(p)?,
        None => Vec::new(),
    };
    Ok(build_report(
        &shared,
        start_ms,
        end_ms,
        started.elapsed(),
        &faults,
    ))
}

fn all_seen(shared: &Shared) -> bool {
    shared.tracks.lock().values().all(|t| {
        let t = t.lock();
        t.acked.is_subset(&t.seen)
    })
}

/// One injected fault as the harness recorded it.
#[derive(Debug, serde::Deserialize)]
pub struct FaultMark {
    pub name: String,
    pub kind: String,
    pub unix_ms: u64,
}

fn read_faults(path: &std::path::Path) -> anyhow::Result<Vec<FaultMark>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("fault line `{l}`")))
        .collect()
}

fn build_report(
    shared: &Shared,
    start_ms: u64,
    end_ms: u64,
    elapsed: Duration,
    faults: &[FaultMark],
) -> LoadReport {
    let tracks: Vec<(u64, Arc<Mutex<Track>>)> = shared
        .tracks
        .lock()
        .iter()
        .map(|(id, t)| (*id, t.clone()))
        .collect();
    let mut events = EventCounts::default();
    let mut positions = 0u64;
    let mut max_gap_ms = 0u64;
    let mut gap_from_ms = start_ms;
    for (id, t) in &tracks {
        let t = t.lock();
        events.acknowledged += t.acked.len() as u64;
        events.acknowledged_after_consumers_stopped += t.acked_late.len() as u64;
        events.seen += t.acked.intersection(&t.seen).count() as u64;
        for seq in t.acked.difference(&t.seen) {
            events.lost += 1;
            if events.lost_events.len() < 20 {
                events.lost_events.push(format!("{id}/{seq}"));
            }
        }
        positions += t.positions.len() as u64;
        let to = t.active_to_ms.unwrap_or(end_ms);
        // From the first position (the consumer is connected and the driver sends) to the end.
        if let Some(&first) = t.positions.first() {
            let mut prev = first;
            for &p in t
                .positions
                .iter()
                .skip(1)
                .filter(|&&p| p <= to)
                .chain([&to])
            {
                if p.saturating_sub(prev) > max_gap_ms {
                    max_gap_ms = p - prev;
                    gap_from_ms = prev;
                }
                prev = p.max(prev);
            }
        }
    }
    let mut fault_reports = BTreeMap::new();
    for f in faults {
        let mut active = 0;
        let mut recovered = 0;
        let mut worst_ms = 0u64;
        let mut within = 0u64;
        let mut ended = 0;
        for (_, t) in &tracks {
            let t = t.lock();
            within += t
                .positions
                .iter()
                .filter(|&&p| p > f.unix_ms && p <= f.unix_ms + 30_000)
                .count() as u64;
            let to = t.active_to_ms.unwrap_or(end_ms);
            let had_position_before = t.positions.first().is_some_and(|&p| p <= f.unix_ms);
            if !(had_position_before && to > f.unix_ms) {
                continue;
            }
            match t.positions.iter().find(|&&p| p > f.unix_ms && p <= to) {
                Some(&p) => {
                    active += 1;
                    recovered += 1;
                    worst_ms = worst_ms.max(p - f.unix_ms);
                }
                // Delivered before a failover could have completed: not a missed recovery.
                None if to - f.unix_ms < RECOVERY_BUDGET_MS => ended += 1,
                None => {
                    active += 1;
                    worst_ms = worst_ms.max(to - f.unix_ms);
                }
            }
        }
        fault_reports.insert(
            f.name.clone(),
            FaultReport {
                at_s: f.unix_ms.saturating_sub(start_ms) as f64 / 1000.0,
                kind: f.kind.clone(),
                active_deliveries: active,
                recovered,
                ended_before_recovery: ended,
                max_time_to_next_position_s: worst_ms as f64 / 1000.0,
                positions_within_30s: within,
            },
        );
    }
    let c = shared.counters.lock();
    events.replayed = c.replayed;
    events.failed = c.failed;
    LoadReport {
        duration_s: elapsed.as_secs_f64(),
        edges: shared.edges.len(),
        hubs: shared.hubs.len(),
        deliveries_created: c.deliveries_created,
        deliveries_completed: c.deliveries_completed,
        fixes_sent: c.fixes_sent,
        positions_received: positions,
        status_events: events,
        history: std::mem::take(&mut *shared.history.lock()),
        max_position_gap_s: max_gap_ms as f64 / 1000.0,
        max_position_gap_from_s: gap_from_ms.saturating_sub(start_ms) as f64 / 1000.0,
        faults: fault_reports,
        driver_reconnects: c.driver_reconnects,
        driver_redirects: c.driver_redirects,
        consumer_reconnects: c.consumer_reconnects,
        consumer_redirects: c.consumer_redirects,
        consumer_redirects_wrong_transport: c.consumer_redirects_wrong_transport,
        consumers_websocket: c.consumers_ws,
        consumers_webtransport: c.consumers_wt,
        drivers_quic: c.drivers_quic,
        drivers_https: c.drivers_https,
        http_redirects_followed: c.http_redirects,
        http_retries: c.http_retries,
        errors: c.errors,
        first_errors: c.first_errors.clone(),
    }
}

/// One slot: a delivery after another until `stop_new`.
async fn run_slot(
    s: Arc<Shared>,
    slot: usize,
    lifetime: Duration,
    stop_new: CancellationToken,
    stop_all: CancellationToken,
) {
    let mut generation = 0u64;
    while !stop_new.is_cancelled() {
        generation += 1;
        let driver_id = 1_000_000 + (slot as u64) * 10_000 + generation;
        if let Err(e) = run_delivery(&s, slot, driver_id, lifetime, &stop_new, &stop_all).await {
            s.error(format!("slot {slot}: {e:#}"));
            tokio::select! {
                _ = stop_new.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// Start of the trip's first leg to its pickup, at least: at the default lifetime (20 s) a
/// driver covers ~150 m, so no geofence changes the status on its own.
const MIN_LEG_M: f64 = 400.0;

async fn run_delivery(
    s: &Arc<Shared>,
    slot: usize,
    driver_id: u64,
    lifetime: Duration,
    stop_new: &CancellationToken,
    stop_all: &CancellationToken,
) -> anyhow::Result<()> {
    let timeline = {
        let mut rng = rand::rngs::StdRng::seed_from_u64(driver_id);
        let from = s.planner.random_node(&mut rng);
        let (pickup, dropoff) = s.planner.pick_stops(&mut rng, from, MIN_LEG_M, f64::MAX);
        s.planner.plan(
            &mut rng,
            from,
            pickup,
            dropoff,
            nodekit::unix_s() as f64,
            false,
        )?
    };
    let (pickup, dropoff) = (
        LatLng::new(timeline.pickup.lat, timeline.pickup.lng),
        LatLng::new(timeline.dropoff.lat, timeline.dropoff.lng),
    );
    let body = CreateDelivery {
        delivery_id: None,
        pickup,
        dropoff,
        driver_id: Some(protocol::DriverId(driver_id)),
    };
    let created: DeliveryCreated = post_json(
        s,
        slot,
        "/api/v1/deliveries".into(),
        &body,
        Duration::from_secs(20),
    )
    .await?
    .context("creating a delivery: conflict")?;
    let id = created.delivery_id.0;
    s.count(|c| c.deliveries_created += 1);
    let track = Arc::new(Mutex::new(Track::default()));
    s.tracks.lock().insert(id, track.clone());

    let done = stop_all.child_token();
    let driving = done.child_token();
    let consumer = tokio::spawn(run_consumer(
        s.clone(),
        slot,
        id,
        created.tracking_token.clone(),
        track.clone(),
        done.clone(),
    ));
    let driver = tokio::spawn(run_driver(
        s.clone(),
        slot,
        driver_id,
        id,
        timeline,
        driving.clone(),
    ));

    let steps = [
        DeliveryStatus::PickedUp,
        DeliveryStatus::EnRoute,
        DeliveryStatus::Arriving,
        DeliveryStatus::Delivered,
    ];
    let step = lifetime / (steps.len() as u32 + 1);
    let mut finished = true;
    for status in steps {
        tokio::select! {
            _ = stop_new.cancelled() => { finished = false; break; }
            _ = tokio::time::sleep(step) => {}
        }
        let body = ChangeStatus {
            status,
            idempotency_key: Some(format!("load-{id}-{status}")),
            driver_id: None,
            metadata: serde_json::Value::Null,
        };
        let path = format!("/api/v1/deliveries/{id}/status");
        // Counted before the stop is checked again: the run either sees this change in
        // flight and waits for its answer, or the change is not sent.
        s.status_in_flight.fetch_add(1, Ordering::SeqCst);
        if stop_new.is_cancelled() {
            s.status_in_flight.fetch_sub(1, Ordering::SeqCst);
            finished = false;
            break;
        }
        let answer = post_json::<_, StatusChanged>(s, slot, path, &body, STATUS_BUDGET).await;
        if let Ok(Some(ack)) = &answer {
            tracing::debug!(delivery_id = id, seq = ack.event_seq, %status, replayed = ack.replayed, "status acknowledged");
            if ack.replayed {
                s.count(|c| c.replayed += 1);
            }
            let mut t = track.lock();
            t.acked.insert(ack.event_seq);
            if s.consumers_stopped.load(Ordering::SeqCst) {
                t.acked_late.insert(ack.event_seq);
            }
        }
        s.status_in_flight.fetch_sub(1, Ordering::SeqCst);
        match answer {
            Ok(Some(_)) => {}
            Ok(None) => s.error(format!("{status} for {id}: 409")),
            Err(e) => {
                s.count(|c| c.failed += 1);
                s.error(format!("{status} for {id}: {e:#}"));
            }
        }
    }
    track.lock().active_to_ms = Some(nodekit::unix_ms());
    if finished {
        s.count(|c| c.deliveries_completed += 1);
        // The driver is done; the consumer keeps reading (and reconnecting, if its hub just
        // failed) until it has seen every acknowledged event or `CATCH_UP` has passed, so a
        // delivery that ends during a failover is judged on what the consumer gets after it.
        driving.cancel();
        let until = tokio::time::Instant::now() + CATCH_UP;
        while tokio::time::Instant::now() < until && !stop_all.is_cancelled() && {
            let t = track.lock();
            !t.acked.is_subset(&t.seen)
        } {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        done.cancel();
        // The breadcrumb writer commits every 100 ms and copies after that: give it a moment,
        // then compare the stored history with what the consumer saw.
        tokio::time::sleep(Duration::from_secs(1)).await;
        check_history(s, slot, id, &created.tracking_token, &track).await;
    } else {
        // The run is ending: the driver stops; the consumer keeps reading until `stop_all`.
        driving.cancel();
    }
    let _ = driver.await;
    let _ = consumer.await;
    Ok(())
}

/// Reads the delivery's whole breadcrumb history (following `307` to the owner, paging) and
/// counts the positions its consumer saw that are not in it.
async fn check_history(s: &Shared, slot: usize, id: u64, token: &str, track: &Mutex<Track>) {
    let seen: BTreeSet<u64> = track.lock().position_ts.clone();
    let mut stored = BTreeSet::new();
    let mut after: Option<u64> = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut attempt = 0usize;
    let mut ok = false;
    'pages: while tokio::time::Instant::now() < deadline {
        let query = match after {
            Some(a) => format!("?limit=1000&after_ts={a}"),
            None => "?limit=1000".to_owned(),
        };
        let path = format!("/api/v1/tracking/{id}/history{query}");
        let mut url = format!("https://{}{path}", s.hubs[(slot + attempt) % s.hubs.len()]);
        for _ in 0..4 {
            match s.http.get(&url).bearer_auth(token).send().await {
                Ok(r) if r.status() == reqwest::StatusCode::TEMPORARY_REDIRECT => {
                    match r
                        .headers()
                        .get(reqwest::header::LOCATION)
                        .and_then(|v| v.to_str().ok())
                    {
                        Some(loc) => url = loc.to_owned(),
                        None => break,
                    }
                }
                Ok(r) if r.status().is_success() => {
                    match r.json::<region_hub::serve::api::HistoryPage>().await {
                        Ok(page) => {
                            stored.extend(page.breadcrumbs.iter().map(|c| c.ts_ms));
                            match page.next_after_ts {
                                Some(n) => {
                                    after = Some(n);
                                    continue 'pages;
                                }
                                None => {
                                    ok = true;
                                    break 'pages;
                                }
                            }
                        }
                        Err(_) => break,
                    }
                }
                _ => break,
            }
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut h = s.history.lock();
    if !ok {
        h.read_failures += 1;
        return;
    }
    let missing = seen.difference(&stored).count() as u64;
    h.deliveries_checked += 1;
    h.positions_seen += seen.len() as u64;
    h.missing_from_history += missing;
    h.deliveries_with_gaps += u64::from(missing > 0);
    if missing > 0 {
        tracing::debug!(
            delivery_id = id,
            missing,
            seen = seen.len(),
            "positions missing from the history"
        );
    }
}

/// POSTs JSON to any hub, following `307` to the owner (with the operator token) and retrying
/// other hubs on failures until `budget` runs out. `Ok(None)` on `409 Conflict`.
async fn post_json<B: Serialize, R: serde::de::DeserializeOwned>(
    s: &Shared,
    slot: usize,
    path: String,
    body: &B,
    budget: Duration,
) -> anyhow::Result<Option<R>> {
    let deadline = tokio::time::Instant::now() + budget;
    let mut attempt = 0usize;
    let mut url = format!("https://{}{path}", s.hubs[slot % s.hubs.len()]);
    let mut last_err = String::new();
    while tokio::time::Instant::now() < deadline {
        let resp = s
            .http
            .post(&url)
            .bearer_auth(&s.operator_token)
            .json(body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status() == reqwest::StatusCode::TEMPORARY_REDIRECT => {
                s.count(|c| c.http_redirects += 1);
                match r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    Some(loc) => {
                        url = loc.to_owned();
                        continue;
                    }
                    None => last_err = "307 without Location".into(),
                }
            }
            Ok(r) if r.status().is_success() => {
                return r.json().await.map(Some).context("reading the answer");
            }
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => return Ok(None),
            Ok(r) => {
                last_err = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
            }
            Err(e) => last_err = format!("{e}"),
        }
        // Next hub, after a short pause.
        attempt += 1;
        s.count(|c| c.http_retries += 1);
        url = format!("https://{}{path}", s.hubs[(slot + attempt) % s.hubs.len()]);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!("{path}: no hub accepted it within {budget:?}: {last_err}")
}

/// Counts a driver session's events into the run's counters.
struct LoadDriver<'a> {
    s: &'a Shared,
    driver_id: u64,
    timeline: &'a Timeline,
    start: Instant,
    next: Instant,
}

impl DriverApp for LoadDriver<'_> {
    fn next_wake(&self) -> Option<Instant> {
        Some(self.next)
    }

    fn wake(&mut self, now: Instant, session: &mut DriverSession) -> ControlFlow<()> {
        let rel_s = now.saturating_duration_since(self.start).as_secs_f64();
        session.send_fix(now, fix_at(self.timeline, rel_s, nodekit::unix_ms()));
        self.next = (self.next + self.s.fix_interval).max(now);
        ControlFlow::Continue(())
    }

    fn on_event(&mut self, _now: Instant, event: DriverEvent) {
        let s = self.s;
        match event {
            DriverEvent::FixesSent { count } => s.count(|c| c.fixes_sent += count as u64),
            DriverEvent::Redirected { .. } => s.count(|c| c.driver_redirects += 1),
            DriverEvent::Failed { failure, .. } => {
                // A drained edge's refusal (503, or the QUIC close code) is a redirect of
                // sorts; anything else a reconnect.
                if matches!(failure, Failure::RetryLater { .. }) {
                    s.count(|c| c.driver_redirects += 1);
                } else {
                    s.count(|c| c.driver_reconnects += 1);
                }
                s.error(format!("driver {}: {failure}", self.driver_id));
            }
            DriverEvent::Stopped { failure } => {
                s.error(format!("driver {} refused: {failure}", self.driver_id))
            }
            DriverEvent::Connected { .. } | DriverEvent::FixesDropped { .. } => {}
        }
    }
}

/// A driver for one delivery (the client library's session): QUIC to an edge (or the HTTPS
/// fallback), on duty for the delivery, a fix per interval along its road trip; it moves to
/// the next edge when its edge fails and to the named edge on `Redirect`.
async fn run_driver(
    s: Arc<Shared>,
    slot: usize,
    driver_id: u64,
    delivery_id: u64,
    timeline: Arc<Timeline>,
    done: CancellationToken,
) {
    let token = s.signer.sign(
        Subject::Driver(protocol::DriverId(driver_id)),
        nodekit::unix_s(),
        3600,
    );
    // Spread the HTTPS drivers evenly over the slots (independently of the consumers' split).
    let https = ((slot * 4793 + 211) % 1000) as f64 / 1000.0 < s.https_share;
    let (transport, edges, io) = if https {
        s.count(|c| c.drivers_https += 1);
        let edges = s
            .edges_https
            .iter()
            .flatten()
            .map(|a| a.to_string())
            .collect();
        (
            DriverTransport::Https,
            edges,
            DriverIo::Https {
                client: s.http.clone(),
            },
        )
    } else {
        s.count(|c| c.drivers_quic += 1);
        let edges = s.edges.iter().map(|a| a.to_string()).collect();
        let io = DriverIo::Quic {
            endpoint: s.quic.clone(),
            server_name: "localhost".into(),
        };
        (DriverTransport::Quic, edges, io)
    };
    let mut config = DriverConfig::new(token, edges, transport);
    config.seed = slot as u64;
    config.handshake_timeout = Duration::from_secs(3);
    config.backoff.initial = Duration::from_millis(200);
    config.backoff.max = Duration::from_secs(2);
    config.backoff.stable_after = Duration::from_secs(3);
    let now = Instant::now();
    let mut session = DriverSession::new(config, now);
    session.set_on_duty(vec![protocol::DeliveryId(delivery_id)]);
    let mut app = LoadDriver {
        s: &s,
        driver_id,
        timeline: &timeline,
        start: now,
        next: now,
    };
    run_driver_io(&mut session, &io, &mut app, &done).await;
}

/// Records what the consumer of one delivery sees; maps a redirect naming the other
/// transport to the same hub's address for ours (and counts it: a hub bug).
struct LoadConsumer<'a> {
    s: &'a Shared,
    delivery_id: u64,
    wt: bool,
    track: &'a Mutex<Track>,
}

impl ConsumerApp for LoadConsumer<'_> {
    fn on_event(
        &mut self,
        _now: Instant,
        event: ConsumerEvent,
        session: &mut ConsumerSession,
    ) -> ControlFlow<()> {
        let s = self.s;
        match event {
            ConsumerEvent::Position(p) => {
                let mut t = self.track.lock();
                t.positions.push(nodekit::unix_ms());
                t.position_ts.insert(p.ts_ms);
            }
            ConsumerEvent::Status { event, .. } => {
                tracing::debug!(delivery_id = event.delivery_id.0, seq = event.event_seq, status = %event.status, "status seen");
                self.track.lock().seen.insert(event.event_seq);
            }
            ConsumerEvent::Snapshot { snapshot, first } => {
                // The first snapshot is the state the consumer starts from: it covers the
                // events before it. Later snapshots (after a resume) must not hide a lost
                // status event, so after the first only `status` frames count as seen.
                if first {
                    self.track.lock().seen.extend(1..=snapshot.last_event_seq);
                }
            }
            ConsumerEvent::Redirected {
                url,
                wrong_transport,
            } => {
                s.count(|c| c.consumer_redirects += 1);
                if wrong_transport {
                    s.count(|c| c.consumer_redirects_wrong_transport += 1);
                    let addr = redirect_authority(&url).to_owned();
                    let ix = s
                        .hubs
                        .iter()
                        .position(|h| h.to_string() == addr)
                        .or_else(|| {
                            s.hubs_wt
                                .iter()
                                .position(|h| h.map(|a| a.to_string()) == Some(addr.clone()))
                        });
                    if let Some(ix) = ix {
                        session.set_next_authority(hub_authority(s, self.wt, ix));
                    }
                }
            }
            ConsumerEvent::Failed { failure, .. } => {
                s.count(|c| c.consumer_reconnects += 1);
                s.error(format!(
                    "consumer {} via {}: {failure}",
                    self.delivery_id,
                    session.authority()
                ));
            }
            ConsumerEvent::Stopped { failure } => {
                s.error(format!("consumer {} stopped: {failure}", self.delivery_id))
            }
            ConsumerEvent::Skipped { detail } => s.error(format!(
                "consumer {}: skipped frame: {detail}",
                self.delivery_id
            )),
            ConsumerEvent::Connected { .. }
            | ConsumerEvent::Eta(_)
            | ConsumerEvent::LocationUnavailable { .. } => {}
        }
        ControlFlow::Continue(())
    }
}

/// The address of hub `ix` for a consumer's transport.
fn hub_authority(s: &Shared, wt: bool, ix: usize) -> String {
    let n = s.hubs.len();
    match (wt, s.hubs_wt[ix % n]) {
        (true, Some(a)) => a.to_string(),
        _ => s.hubs[ix % n].to_string(),
    }
}

/// A WebSocket or WebTransport consumer of one delivery (the client library's session):
/// resumes with `last_event_seq`, follows `redirect` frames, tries the other hubs when its
/// hub fails, and leaves a hub that goes silent for 5 s (positions arrive every fix interval
/// while the delivery is active).
async fn run_consumer(
    s: Arc<Shared>,
    slot: usize,
    delivery_id: u64,
    token: String,
    track: Arc<Mutex<Track>>,
    done: CancellationToken,
) {
    let n = s.hubs.len();
    // Spread the WebTransport consumers evenly over the slots.
    let wt = s.wt_client.is_some() && ((slot * 7919) % 1000) as f64 / 1000.0 < s.wt_share;
    s.count(|c| {
        if wt {
            c.consumers_wt += 1
        } else {
            c.consumers_ws += 1
        }
    });
    let (transport, io) = match (&s.wt_client, wt) {
        (Some(endpoint), true) => (
            ConsumerTransport::WebTransport,
            ConsumerIo::WebTransport(endpoint.clone()),
        ),
        _ => (
            ConsumerTransport::WebSocket,
            ConsumerIo::WebSocket(s.ws.clone()),
        ),
    };
    // Start at the slot's hub, then the others in turn.
    let hubs = (0..n).map(|i| hub_authority(&s, wt, slot + i)).collect();
    let mut config = ConsumerConfig::new(protocol::DeliveryId(delivery_id), token, transport, hubs);
    config.seed = 0;
    config.handshake_timeout = Duration::from_secs(3);
    config.idle_timeout = Some(Duration::from_secs(5));
    config.backoff.initial = Duration::from_millis(200);
    config.backoff.max = Duration::from_secs(2);
    config.backoff.stable_after = Duration::from_secs(3);
    config.stop_on_refusal = false;
    let mut session = ConsumerSession::new(config, Instant::now());
    let mut app = LoadConsumer {
        s: &s,
        delivery_id,
        wt,
        track: &track,
    };
    run_consumer_io(&mut session, &io, &mut app, &done).await;
}

/// Summary line for humans.
pub fn summary(r: &LoadReport) -> String {
    format!(
        "load: {} deliveries, {} fixes sent, {} positions received, status events acked {} lost {}, max position gap {:.1} s, positions missing from the history {} of {}, {} errors",
        r.deliveries_created,
        r.fixes_sent,
        r.positions_received,
        r.status_events.acknowledged,
        r.status_events.lost,
        r.max_position_gap_s,
        r.history.missing_from_history,
        r.history.positions_seen,
        r.errors
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_specs_name_their_addresses() {
        let a = target_addr("quic=127.0.0.1:4433,https=127.0.0.1:8443", "https").expect("https");
        assert_eq!(a.port(), 8443);
        assert!(target_addr("https=127.0.0.1:1", "quic").is_err());
        assert_eq!(
            redirect_authority("wss://127.0.0.1:9443/api/v1/tracking/7/connect"),
            "127.0.0.1:9443"
        );
    }
}
