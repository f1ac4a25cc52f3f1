//! One `scale` worker process: its share of the drivers (one session each for the whole run,
//! delivery after delivery), a consumer per delivery, the order service's calls, and a
//! [`WorkerSnapshot`] line on stdout every second.

use super::snapshot::{new_histogram, pairs, Held, WorkerSnapshot};
use super::{target_addr, ScaleArgs};
use crate::trips::{fix_at, TripPlanner};
use crate::truth::Timeline;
use anyhow::Context;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::token::{Subject, TokenSigner};
use protocol::{DeliveryId, DriverId};
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use trackline_client::io::{
    run_consumer, run_driver, ConsumerApp, ConsumerIo, DriverApp, DriverIo, WsConnector,
};
use trackline_client::{
    ConsumerConfig, ConsumerEvent, ConsumerSession, ConsumerTransport, DriverConfig, DriverEvent,
    DriverSession, DriverTransport, Failure,
};

/// How long one status change (or a creation) is retried before it counts as failed.
const CHANGE_BUDGET: Duration = Duration::from_secs(30);
/// How long a consumer may take after its delivery ended to see every acknowledged event.
const CATCH_UP: Duration = Duration::from_secs(30);

/// Session kinds, as gauge indices and report keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    DriverQuic = 0,
    DriverHttps = 1,
    ConsumerWt = 2,
    ConsumerWs = 3,
}

const KINDS: [Kind; 4] = [
    Kind::DriverQuic,
    Kind::DriverHttps,
    Kind::ConsumerWt,
    Kind::ConsumerWs,
];

impl Kind {
    fn key(self) -> &'static str {
        match self {
            Kind::DriverQuic => "driver/quic",
            Kind::DriverHttps => "driver/https",
            Kind::ConsumerWt => "consumer/webtransport",
            Kind::ConsumerWs => "consumer/websocket",
        }
    }
}

#[derive(Default)]
struct Gauge {
    wanted: AtomicU64,
    connected: AtomicU64,
}

/// Counters and histograms of the worker (maps and histograms behind one lock).
#[derive(Default)]
struct Book {
    handshakes: BTreeMap<&'static str, Histogram<u64>>,
    failures: BTreeMap<String, u64>,
    drops: BTreeMap<&'static str, u64>,
    reconnects: BTreeMap<&'static str, u64>,
    lost_events: Vec<String>,
    first_errors: Vec<String>,
}

struct Shared {
    args: ScaleArgs,
    edge_quic: SocketAddr,
    edge_https: SocketAddr,
    hub_https: SocketAddr,
    hub_wt: SocketAddr,
    quic: Vec<quinn::Endpoint>,
    wt: Vec<Arc<wtransport::Endpoint<wtransport::endpoint::endpoint_side::Client>>>,
    ws: Vec<WsConnector>,
    sources: Vec<IpAddr>,
    tcp_tls: rustls::ClientConfig,
    orders: reqwest::Client,
    signer: TokenSigner,
    operator_token: String,
    planner: TripPlanner,
    run_id: u64,
    gauges: [Gauge; 4],
    latency: Mutex<Histogram<u64>>,
    book: Mutex<Book>,
    slots_started: AtomicU64,
    /// Deliveries started and not yet judged.
    in_flight: AtomicU64,
    new_consumers: AtomicU64,
    redirects: AtomicU64,
    fixes_sent: AtomicU64,
    positions_received: AtomicU64,
    created: AtomicU64,
    completed: AtomicU64,
    acknowledged: AtomicU64,
    seen: AtomicU64,
    lost: AtomicU64,
    conflicts: AtomicU64,
    replayed: AtomicU64,
    failed_changes: AtomicU64,
    event_gaps: AtomicU64,
    errors: AtomicU64,
}

fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

fn get(c: &AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

impl Shared {
    fn gauge(&self, k: Kind) -> &Gauge {
        &self.gauges[k as usize]
    }

    fn error(&self, e: String) {
        add(&self.errors, 1);
        tracing::debug!(error = %e, "scale error");
        let mut b = self.book.lock();
        let kind = |s: &str| s.split_once(": ").map_or(s, |x| x.1).to_owned();
        let k = kind(&e);
        if b.first_errors.len() < 10 && !b.first_errors.iter().any(|x| kind(x) == k) {
            b.first_errors.push(e);
        }
    }

    fn handshake(&self, k: Kind, d: Duration) {
        let mut b = self.book.lock();
        let h = b.handshakes.entry(k.key()).or_insert_with(new_histogram);
        let _ = h.record((d.as_millis() as u64).max(1));
    }

    fn failure(&self, k: Kind, f: &Failure, was_connected: bool) {
        let mut b = self.book.lock();
        *b.failures
            .entry(format!("{}/{}", k.key(), f.reason()))
            .or_insert(0) += 1;
        if was_connected {
            *b.drops.entry(k.key()).or_insert(0) += 1;
        }
    }

    fn reconnect(&self, k: Kind) {
        *self.book.lock().reconnects.entry(k.key()).or_insert(0) += 1;
    }

    /// The line for the coordinator; takes the histograms' samples since the last one.
    fn snapshot(&self, last: bool) -> WorkerSnapshot {
        let latency = {
            let mut h = self.latency.lock();
            let p = pairs(&h);
            h.reset();
            p
        };
        let mut b = self.book.lock();
        let handshakes_ms = b
            .handshakes
            .iter_mut()
            .map(|(k, h)| {
                let p = pairs(h);
                h.reset();
                (k.to_string(), p)
            })
            .collect();
        WorkerSnapshot {
            unix_ms: nodekit::unix_ms(),
            last,
            slots_started: get(&self.slots_started),
            held: KINDS
                .iter()
                .map(|&k| {
                    let g = self.gauge(k);
                    (
                        k.key().to_owned(),
                        Held {
                            wanted: get(&g.wanted),
                            connected: get(&g.connected),
                        },
                    )
                })
                .collect(),
            handshakes_ms,
            failures: b.failures.clone(),
            drops: b.drops.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            reconnects: b
                .reconnects
                .iter()
                .map(|(k, v)| (k.to_string(), *v))
                .collect(),
            new_consumers: get(&self.new_consumers),
            redirects: get(&self.redirects),
            latency_ms: latency,
            fixes_sent: get(&self.fixes_sent),
            positions_received: get(&self.positions_received),
            deliveries_created: get(&self.created),
            deliveries_completed: get(&self.completed),
            acknowledged: get(&self.acknowledged),
            seen: get(&self.seen),
            lost: get(&self.lost),
            lost_events: std::mem::take(&mut b.lost_events),
            conflicts: get(&self.conflicts),
            replayed: get(&self.replayed),
            failed_changes: get(&self.failed_changes),
            event_gaps: get(&self.event_gaps),
            errors: get(&self.errors),
            first_errors: b.first_errors.clone(),
        }
    }
}

/// Builds the worker's transports and clients.
fn setup(args: ScaleArgs, index: usize) -> anyhow::Result<Shared> {
    let edge_quic = target_addr(&args.edge, "quic")?;
    let edge_https = target_addr(&args.edge, "https")?;
    let hub_https = target_addr(&args.hub, "https")?;
    let hub_wt = target_addr(&args.hub, "wt")?;
    let roots = certs::load_certs_pem(&args.ca).context("reading the CA")?;
    // Loopback source addresses of this worker: 127.<net>.<worker+1>.<1..=4>.
    let sources: Vec<IpAddr> = (1..=4u8)
        .map(|n| IpAddr::V4(Ipv4Addr::new(127, args.source_net, index as u8 + 1, n)))
        .collect();
    let endpoints = args.endpoints.max(1);
    let driver_tls = certs::client_config_with_roots(
        roots.clone(),
        &[protocol::ALPN_DRIVER],
        certs::TlsFor::Quic,
    )?;
    let mut driver_cfg = certs::quinn_client_config(driver_tls)?;
    // Drivers send a datagram every few seconds and receive almost nothing: small windows
    // and buffers (quinn's defaults are sized for bulk transfers).
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(Duration::from_secs(30)).context("idle timeout")?,
    ));
    t.keep_alive_interval(Some(Duration::from_secs(10)));
    t.stream_receive_window(quinn::VarInt::from_u32(16 * 1024));
    t.receive_window(quinn::VarInt::from_u32(64 * 1024));
    t.send_window(64 * 1024);
    t.datagram_receive_buffer_size(Some(4 * 1024));
    t.datagram_send_buffer_size(16 * 1024);
    driver_cfg.transport_config(Arc::new(t));
    let mut quic = Vec::with_capacity(endpoints);
    for k in 0..endpoints {
        let bind = SocketAddr::new(sources[k % sources.len()], 0);
        let runtime = quinn::default_runtime().context("no async runtime for quinn")?;
        let mut ep = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            udp_socket(bind)?,
            runtime,
        )
        .with_context(|| format!("driver endpoint on {bind}"))?;
        ep.set_default_client_config(driver_cfg.clone());
        quic.push(ep);
    }
    let mut wt = Vec::with_capacity(endpoints);
    for k in 0..endpoints {
        let bind = SocketAddr::new(sources[(k + 2) % sources.len()], 0);
        let tls = certs::client_config_with_roots(roots.clone(), &[b"h3"], certs::TlsFor::Quic)?;
        let mut t = quinn::TransportConfig::default();
        t.max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(30)).context("idle timeout")?,
        ));
        // The hub pings its WebTransport consumers; the client needs no keep-alive of its own.
        t.keep_alive_interval(None);
        t.stream_receive_window(quinn::VarInt::from_u32(64 * 1024));
        t.receive_window(quinn::VarInt::from_u32(256 * 1024));
        t.send_window(64 * 1024);
        t.datagram_receive_buffer_size(Some(64 * 1024));
        t.datagram_send_buffer_size(16 * 1024);
        let config = wtransport::ClientConfig::builder()
            .with_bind_socket(udp_socket(bind)?)
            .with_custom_tls_and_transport(tls, t)
            .build();
        wt.push(Arc::new(
            wtransport::Endpoint::client(config).context("WebTransport client endpoint")?,
        ));
    }
    let ws_tls = Arc::new(certs::client_config_with_roots(
        roots.clone(),
        &[b"http/1.1"],
        certs::TlsFor::Tcp,
    )?);
    let ws = sources
        .iter()
        .map(|ip| {
            let mut c = WsConnector::new(ws_tls.clone());
            c.bind = Some(*ip);
            c
        })
        .collect();
    let tcp_tls =
        certs::client_config_with_roots(roots, &[b"h2", b"http/1.1"], certs::TlsFor::Tcp)?;
    let orders = reqwest::Client::builder()
        .use_preconfigured_tls(tcp_tls.clone())
        .local_address(sources[0])
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the order service's HTTPS client")?;
    let der = std::fs::read(&args.token_key)
        .with_context(|| format!("reading {}", args.token_key.display()))?;
    let signer = TokenSigner::from_pkcs8(args.token_kid, &der).context("token key")?;
    let operator_token = signer.sign(Subject::Operator, nodekit::unix_s(), 24 * 3600);
    let seed = args.seed.unwrap_or(0) ^ (index as u64).wrapping_mul(0x9E37_79B9);
    let planner = TripPlanner::helsinki(seed, args.pickup_wait_s)?;
    Ok(Shared {
        run_id: args.start_unix_ms.unwrap_or_else(nodekit::unix_ms) % 1000,
        args,
        edge_quic,
        edge_https,
        hub_https,
        hub_wt,
        quic,
        wt,
        ws,
        sources,
        tcp_tls,
        orders,
        signer,
        operator_token,
        planner,
        gauges: Default::default(),
        latency: Mutex::new(new_histogram()),
        book: Mutex::default(),
        slots_started: AtomicU64::new(0),
        in_flight: AtomicU64::new(0),
        new_consumers: AtomicU64::new(0),
        redirects: AtomicU64::new(0),
        fixes_sent: AtomicU64::new(0),
        positions_received: AtomicU64::new(0),
        created: AtomicU64::new(0),
        completed: AtomicU64::new(0),
        acknowledged: AtomicU64::new(0),
        seen: AtomicU64::new(0),
        lost: AtomicU64::new(0),
        conflicts: AtomicU64::new(0),
        replayed: AtomicU64::new(0),
        failed_changes: AtomicU64::new(0),
        event_gaps: AtomicU64::new(0),
        errors: AtomicU64::new(0),
    })
}

/// Socket buffers of the generator's UDP sockets: thousands of sessions share one socket, and
/// the kernel's default (208 KiB) overflows during a ramp (counted in /proc/net/snmp
/// `RcvbufErrors`), which turns into handshake retransmissions of a second or more.
const UDP_BUFFER: usize = 4 << 20;

fn udp_socket(bind: SocketAddr) -> anyhow::Result<std::net::UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(bind),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )
    .context("UDP socket")?;
    // Best effort: the kernel caps them at net.core.{r,w}mem_max.
    let _ = s.set_recv_buffer_size(UDP_BUFFER);
    let _ = s.set_send_buffer_size(UDP_BUFFER);
    s.bind(&bind.into())
        .with_context(|| format!("binding a UDP socket on {bind}"))?;
    s.set_nonblocking(true).context("non-blocking UDP socket")?;
    Ok(s.into())
}

fn emit(line: &WorkerSnapshot) {
    if let Ok(json) = serde_json::to_string(line) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{json}");
        let _ = out.flush();
    }
}

/// Runs worker `index`: its slots ramp up, run for the steady time, and are judged.
pub async fn run(args: ScaleArgs, index: usize) -> anyhow::Result<()> {
    let workers = args.worker_count();
    let start_ms = args.start_unix_ms.unwrap_or_else(nodekit::unix_ms);
    let s = Arc::new(setup(args, index)?);
    let start = Instant::now()
        .checked_sub(Duration::from_millis(
            nodekit::unix_ms().saturating_sub(start_ms),
        ))
        .unwrap_or_else(Instant::now);
    let end = start + s.args.ramp() + s.args.steady;
    let stop_new = CancellationToken::new();
    let stop_all = CancellationToken::new();

    let reporter = {
        let s = s.clone();
        let stop = stop_all.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    _ = tick.tick() => emit(&s.snapshot(false)),
                    _ = stop.cancelled() => return,
                }
            }
        })
    };

    let mut slots = tokio::task::JoinSet::new();
    let total = s.args.deliveries;
    let rate = s.args.ramp_rate;
    for slot in (index..total).step_by(workers) {
        let at = start + Duration::from_secs_f64(slot as f64 / rate);
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            _ = stop_new.cancelled() => break,
            _ = nodekit::shutdown_signal() => { stop_new.cancel(); break; }
        }
        add(&s.slots_started, 1);
        slots.spawn(run_slot(
            s.clone(),
            slot,
            stop_new.clone(),
            stop_all.clone(),
        ));
    }
    tokio::select! {
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(end)) => {}
        _ = nodekit::shutdown_signal() => {}
    }
    stop_new.cancel();
    // Every slot judges its delivery in flight (answers of status changes, consumers
    // catching up), then the drivers and consumers stop.
    let judged_by = Instant::now() + CHANGE_BUDGET + CATCH_UP + Duration::from_secs(10);
    while Instant::now() < judged_by && get(&s.in_flight) > 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_all.cancel();
    while tokio::time::timeout(Duration::from_secs(10), slots.join_next())
        .await
        .ok()
        .flatten()
        .is_some()
    {}
    let _ = reporter.await;
    for ep in &s.quic {
        ep.close(quinn::VarInt::from_u32(0), b"done");
    }
    emit(&s.snapshot(true));
    Ok(())
}

/// Where a driver is and what it drives: shared by its session (fixes) and the order
/// service's side of the slot (deliveries).
struct DrivePlan {
    /// The current trip and when it started.
    trip: Option<(Arc<Timeline>, Instant)>,
    /// Where the driver waits without a trip.
    at: LatLng,
    on_duty: Vec<DeliveryId>,
}

/// One driver: its session lives for the whole run; deliveries follow one another.
async fn run_slot(
    s: Arc<Shared>,
    slot: usize,
    stop_new: CancellationToken,
    stop_all: CancellationToken,
) {
    let driver_id = s.run_id * 1_000_000 + slot as u64 + 1;
    let mut rng = rand::rngs::SmallRng::seed_from_u64(
        s.args.seed.unwrap_or(s.run_id) ^ (slot as u64).wrapping_mul(0x2545_F491_4F6C_DD1D),
    );
    let at = s.planner.random_node(&mut rng);
    let plan = Arc::new(Mutex::new(DrivePlan {
        trip: None,
        at: roadnet_to_geo(at),
        on_duty: Vec::new(),
    }));
    let https = spread(slot, 4793, s.args.https_share);
    let driver = tokio::spawn(run_slot_driver(
        s.clone(),
        slot,
        driver_id,
        https,
        plan.clone(),
        stop_all.clone(),
    ));
    let mut first = true;
    while !stop_new.is_cancelled() {
        if !first {
            let pause = s.args.between.mul_f64(rng.random_range(0.5..1.5));
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = stop_new.cancelled() => break,
            }
        }
        first = false;
        if let Err(e) =
            run_delivery(&s, slot, driver_id, &plan, &mut rng, &stop_new, &stop_all).await
        {
            s.error(format!("slot {slot}: {e:#}"));
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                _ = stop_new.cancelled() => break,
            }
        }
    }
    // The driver keeps its session until the whole run stops.
    stop_all.cancelled().await;
    let _ = driver.await;
}

fn roadnet_to_geo(p: roadnet::LatLng) -> LatLng {
    LatLng::new(p.lat, p.lng)
}

/// Picks a deterministic, evenly spread `share` of slots.
fn spread(slot: usize, prime: usize, share: f64) -> bool {
    ((slot * prime + 211) % 1000) as f64 / 1000.0 < share
}

/// The delivery's side of the books: acknowledged status events and those its consumer saw.
#[derive(Default)]
struct Track {
    acked: BTreeSet<u64>,
    seen: BTreeSet<u64>,
}

async fn run_delivery(
    s: &Arc<Shared>,
    slot: usize,
    driver_id: u64,
    plan: &Arc<Mutex<DrivePlan>>,
    rng: &mut rand::rngs::SmallRng,
    stop_new: &CancellationToken,
    stop_all: &CancellationToken,
) -> anyhow::Result<()> {
    add(&s.in_flight, 1);
    let r = delivery(s, slot, driver_id, plan, rng, stop_new, stop_all).await;
    s.in_flight.fetch_sub(1, Ordering::Relaxed);
    r
}

async fn delivery(
    s: &Arc<Shared>,
    slot: usize,
    driver_id: u64,
    plan: &Arc<Mutex<DrivePlan>>,
    rng: &mut rand::rngs::SmallRng,
    stop_new: &CancellationToken,
    stop_all: &CancellationToken,
) -> anyhow::Result<()> {
    let from = plan.lock().at;
    let from = roadnet::LatLng::new(from.lat, from.lng);
    // Routing takes milliseconds of CPU (more with a wrong turn): off the runtime's threads,
    // so that the QUIC endpoints' I/O tasks are never held up behind it.
    let timeline = {
        let s2 = s.clone();
        let mut r = rand::rngs::SmallRng::from_rng(rng);
        tokio::task::spawn_blocking(move || {
            let (pickup, dropoff) =
                s2.planner
                    .pick_stops(&mut r, from, s2.args.min_leg_m, s2.args.max_leg_m);
            let share = s2.args.wrong_turn_share.clamp(0.0, 1.0);
            let wrong = share > 0.0 && r.random_bool(share);
            s2.planner.plan(
                &mut r,
                from,
                pickup,
                dropoff,
                nodekit::unix_s() as f64,
                wrong,
            )
        })
        .await
        .context("routing task")??
    };
    let body = CreateDelivery {
        delivery_id: None,
        pickup: roadnet_to_geo(timeline.pickup),
        dropoff: roadnet_to_geo(timeline.dropoff),
        driver_id: Some(DriverId(driver_id)),
    };
    let created: DeliveryCreated = match post(s, "/api/v1/deliveries".into(), &body).await {
        Ok(Some(c)) => c,
        Ok(None) => anyhow::bail!("creating a delivery: 409"),
        Err(e) => return Err(e.context("creating a delivery")),
    };
    add(&s.created, 1);
    let id = created.delivery_id;
    let track = Arc::new(Mutex::new(Track::default()));
    // The creation's events (confirmed, driver_assigned) are acknowledged by its answer.
    track.lock().acked.extend(1..=created.last_event_seq);
    let started = Instant::now();
    {
        let mut p = plan.lock();
        p.trip = Some((timeline.clone(), started));
        p.on_duty = vec![id];
    }
    let consumer_stop = stop_all.child_token();
    add(&s.new_consumers, 1);
    let consumer = tokio::spawn(run_delivery_consumer(
        s.clone(),
        slot,
        id,
        created.tracking_token.clone(),
        track.clone(),
        consumer_stop.clone(),
    ));
    let arrival = timeline.duration_s;
    let left = timeline.pickup_departure_s;
    let steps = [
        (left, DeliveryStatus::PickedUp),
        (left + 1.0, DeliveryStatus::EnRoute),
        ((arrival - 60.0).max(left + 2.0), DeliveryStatus::Arriving),
        (arrival + 0.5, DeliveryStatus::Delivered),
    ];
    let mut finished = true;
    for (at_s, status) in steps {
        let at = started + Duration::from_secs_f64(at_s.max(0.0));
        tokio::select! {
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(at)) => {}
            _ = stop_new.cancelled() => { finished = false; break; }
        }
        let body = ChangeStatus {
            status,
            idempotency_key: Some(format!("scale-{id}-{status}")),
            driver_id: None,
            metadata: serde_json::Value::Null,
        };
        match post::<_, StatusChanged>(s, format!("/api/v1/deliveries/{id}/status"), &body).await {
            Ok(Some(ack)) => {
                if ack.replayed {
                    add(&s.replayed, 1);
                }
                track.lock().acked.insert(ack.event_seq);
            }
            // The hub's geofence made this step (or a later one) first.
            Ok(None) => add(&s.conflicts, 1),
            Err(e) => {
                add(&s.failed_changes, 1);
                s.error(format!("{status} for {id}: {e:#}"));
            }
        }
    }
    if finished {
        let mut p = plan.lock();
        p.at = roadnet_to_geo(timeline.dropoff);
        p.trip = None;
        p.on_duty.clear();
    }
    // The consumer has until CATCH_UP to see every acknowledged event.
    let until = Instant::now() + CATCH_UP;
    while Instant::now() < until && !stop_all.is_cancelled() && {
        let t = track.lock();
        !t.acked.is_subset(&t.seen)
    } {
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    consumer_stop.cancel();
    let _ = consumer.await;
    let t = track.lock();
    add(&s.acknowledged, t.acked.len() as u64);
    add(&s.seen, t.acked.intersection(&t.seen).count() as u64);
    let lost: Vec<u64> = t.acked.difference(&t.seen).copied().collect();
    if !lost.is_empty() {
        add(&s.lost, lost.len() as u64);
        let mut b = s.book.lock();
        for seq in lost.iter().take(5) {
            if b.lost_events.len() < 50 {
                b.lost_events.push(format!("{id}/{seq}"));
            }
        }
    }
    if finished {
        add(&s.completed, 1);
    }
    Ok(())
}

/// POSTs JSON to the hub with the operator token, retrying failures (same body, so the
/// idempotency key makes a retry safe) with backoff until [`CHANGE_BUDGET`]; follows `307`.
/// `Ok(None)` on `409 Conflict`.
async fn post<B: serde::Serialize, R: serde::de::DeserializeOwned>(
    s: &Shared,
    path: String,
    body: &B,
) -> anyhow::Result<Option<R>> {
    let deadline = Instant::now() + CHANGE_BUDGET;
    let mut url = format!("https://{}{path}", s.hub_https);
    let mut backoff = trackline_client::Backoff::new(trackline_client::BackoffConfig {
        initial: Duration::from_millis(250),
        max: Duration::from_secs(4),
        ..Default::default()
    });
    let mut rng = rand::rngs::SmallRng::from_rng(&mut rand::rng());
    let mut last_err;
    loop {
        let resp = s
            .orders
            .post(&url)
            .bearer_auth(&s.operator_token)
            .json(body)
            .send()
            .await;
        let mut retry_after = None;
        match resp {
            Ok(r) if r.status() == reqwest::StatusCode::TEMPORARY_REDIRECT => {
                match r
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                {
                    Some(loc) => {
                        url = loc.to_owned();
                        continue;
                    }
                    None => last_err = "307 without Location".to_owned(),
                }
            }
            Ok(r) if r.status().is_success() => {
                return r.json().await.map(Some).context("reading the answer")
            }
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => return Ok(None),
            Ok(r) => {
                retry_after = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs);
                last_err = format!("{} {}", r.status(), r.text().await.unwrap_or_default());
            }
            Err(e) => last_err = format!("{e}"),
        }
        let wait = backoff.on_failure(Instant::now(), retry_after, &mut rng);
        if Instant::now() + wait > deadline {
            anyhow::bail!("{path}: not accepted within {CHANGE_BUDGET:?}: {last_err}");
        }
        tokio::time::sleep(wait).await;
    }
}

/// A driver's app: fixes along the current trip (or where it waits), duty as the order
/// service assigns it.
struct ScaleDriver {
    s: Arc<Shared>,
    kind: Kind,
    plan: Arc<Mutex<DrivePlan>>,
    next: Instant,
    up: bool,
}

impl DriverApp for ScaleDriver {
    fn next_wake(&self) -> Option<Instant> {
        Some(self.next)
    }

    fn wake(&mut self, now: Instant, session: &mut DriverSession) -> ControlFlow<()> {
        let fix = {
            let p = self.plan.lock();
            if p.on_duty.as_slice() != session.on_duty() {
                session.set_on_duty(p.on_duty.clone());
            }
            match &p.trip {
                Some((tl, started)) => {
                    let rel = now.saturating_duration_since(*started).as_secs_f64();
                    fix_at(tl, rel, nodekit::unix_ms())
                }
                None => protocol::wire::Fix::from_units(
                    0,
                    nodekit::unix_ms(),
                    p.at.lat,
                    p.at.lng,
                    0.0,
                    0.0,
                    5.0,
                ),
            }
        };
        session.send_fix(now, fix);
        self.next = (self.next + self.s.args.fix_interval).max(now);
        ControlFlow::Continue(())
    }

    fn on_event(&mut self, _now: Instant, event: DriverEvent) {
        let s = &self.s;
        let g = s.gauge(self.kind);
        match event {
            DriverEvent::Connected {
                handshake,
                reconnect,
                ..
            } => {
                if !self.up {
                    self.up = true;
                    add(&g.connected, 1);
                }
                s.handshake(self.kind, handshake);
                if reconnect {
                    s.reconnect(self.kind);
                }
            }
            DriverEvent::Failed {
                failure,
                was_connected,
                ..
            } => {
                if self.up {
                    self.up = false;
                    g.connected.fetch_sub(1, Ordering::Relaxed);
                }
                s.failure(self.kind, &failure, was_connected);
                s.error(format!("{}: {failure}", self.kind.key()));
            }
            DriverEvent::Stopped { failure } => {
                s.failure(self.kind, &failure, self.up);
                s.error(format!("{} refused: {failure}", self.kind.key()));
            }
            DriverEvent::Redirected { .. } => add(&s.redirects, 1),
            DriverEvent::FixesSent { count } => add(&s.fixes_sent, count as u64),
            DriverEvent::FixesDropped { .. } => {}
        }
    }
}

async fn run_slot_driver(
    s: Arc<Shared>,
    slot: usize,
    driver_id: u64,
    https: bool,
    plan: Arc<Mutex<DrivePlan>>,
    stop: CancellationToken,
) {
    let token = s.signer.sign(
        Subject::Driver(DriverId(driver_id)),
        nodekit::unix_s(),
        24 * 3600,
    );
    let (kind, transport, edge, io) = if https {
        // One HTTPS client per phone: its own connection, from one of our source addresses.
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(s.tcp_tls.clone())
            .local_address(s.sources[slot % s.sources.len()])
            .pool_max_idle_per_host(1)
            .connect_timeout(Duration::from_secs(5))
            .build();
        let client = match client {
            Ok(c) => c,
            Err(e) => {
                s.error(format!("https driver client: {e}"));
                return;
            }
        };
        (
            Kind::DriverHttps,
            DriverTransport::Https,
            s.edge_https.to_string(),
            DriverIo::Https { client },
        )
    } else {
        (
            Kind::DriverQuic,
            DriverTransport::Quic,
            s.edge_quic.to_string(),
            DriverIo::Quic {
                endpoint: s.quic[slot % s.quic.len()].clone(),
                server_name: "localhost".into(),
            },
        )
    };
    let mut config = DriverConfig::new(token, vec![edge], transport);
    config.seed = driver_id;
    config.handshake_timeout = Duration::from_secs(10);
    let now = Instant::now();
    let mut session = DriverSession::new(config, now);
    // Fixes of different drivers spread over the interval.
    let phase = s
        .args
        .fix_interval
        .mul_f64(rand::rngs::SmallRng::seed_from_u64(driver_id).random_range(0.0..1.0));
    add(&s.gauge(kind).wanted, 1);
    let mut app = ScaleDriver {
        s: s.clone(),
        kind,
        plan,
        next: now + phase,
        up: false,
    };
    run_driver(&mut session, &io, &mut app, &stop).await;
    if app.up {
        s.gauge(kind).connected.fetch_sub(1, Ordering::Relaxed);
    }
    s.gauge(kind).wanted.fetch_sub(1, Ordering::Relaxed);
}

/// A delivery's consumer app: latency of positions, status events seen.
struct ScaleConsumer {
    s: Arc<Shared>,
    kind: Kind,
    track: Arc<Mutex<Track>>,
    up: bool,
}

impl ConsumerApp for ScaleConsumer {
    fn on_event(
        &mut self,
        _now: Instant,
        event: ConsumerEvent,
        _session: &mut ConsumerSession,
    ) -> ControlFlow<()> {
        let s = &self.s;
        let g = s.gauge(self.kind);
        match event {
            ConsumerEvent::Position(p) => {
                add(&s.positions_received, 1);
                let age_ms = nodekit::unix_ms().saturating_sub(p.ts_ms);
                let _ = s.latency.lock().record(age_ms.max(1));
            }
            ConsumerEvent::Status { event, gap, .. } => {
                if gap > 0 {
                    add(&s.event_gaps, gap);
                }
                self.track.lock().seen.insert(event.event_seq);
            }
            ConsumerEvent::Connected {
                handshake,
                reconnect,
                ..
            } => {
                if !self.up {
                    self.up = true;
                    add(&g.connected, 1);
                }
                s.handshake(self.kind, handshake);
                if reconnect {
                    s.reconnect(self.kind);
                }
            }
            ConsumerEvent::Failed {
                failure,
                was_connected,
                ..
            } => {
                if self.up {
                    self.up = false;
                    g.connected.fetch_sub(1, Ordering::Relaxed);
                }
                s.failure(self.kind, &failure, was_connected);
                s.error(format!("{}: {failure}", self.kind.key()));
            }
            ConsumerEvent::Stopped { failure } => {
                s.failure(self.kind, &failure, self.up);
                s.error(format!("{} refused: {failure}", self.kind.key()));
            }
            ConsumerEvent::Redirected { .. } => add(&s.redirects, 1),
            ConsumerEvent::Skipped { detail } => s.error(format!("skipped frame: {detail}")),
            ConsumerEvent::Snapshot { .. }
            | ConsumerEvent::Eta(_)
            | ConsumerEvent::LocationUnavailable { .. } => {}
        }
        ControlFlow::Continue(())
    }
}

async fn run_delivery_consumer(
    s: Arc<Shared>,
    slot: usize,
    id: DeliveryId,
    token: String,
    track: Arc<Mutex<Track>>,
    stop: CancellationToken,
) {
    let ws = spread(slot, 7919, s.args.ws_share);
    let (kind, transport, hub, io) = if ws {
        (
            Kind::ConsumerWs,
            ConsumerTransport::WebSocket,
            s.hub_https.to_string(),
            ConsumerIo::WebSocket(s.ws[slot % s.ws.len()].clone()),
        )
    } else {
        (
            Kind::ConsumerWt,
            ConsumerTransport::WebTransport,
            s.hub_wt.to_string(),
            ConsumerIo::WebTransport(s.wt[slot % s.wt.len()].clone()),
        )
    };
    let mut config = ConsumerConfig::new(id, token, transport, vec![hub]);
    config.seed = id.0;
    config.handshake_timeout = Duration::from_secs(10);
    // A dead hub is noticed by the transports (QUIC idle timeout with the hub's pings, TCP
    // resets); no silence timeout of our own, so a stationary driver costs no reconnects.
    config.idle_timeout = None;
    let mut session = ConsumerSession::new(config, Instant::now());
    add(&s.gauge(kind).wanted, 1);
    let mut app = ScaleConsumer {
        s: s.clone(),
        kind,
        track,
        up: false,
    };
    run_consumer(&mut session, &io, &mut app, &stop).await;
    if app.up {
        s.gauge(kind).connected.fetch_sub(1, Ordering::Relaxed);
    }
    s.gauge(kind).wanted.fetch_sub(1, Ordering::Relaxed);
}
