//! A run against a hub and an edge: plan true trips on the road network, create their
//! deliveries, drive them on the simulated clock, watch, move statuses, measure (latency,
//! events, ETA quality against the ground truth, re-routes).

use crate::consumer::{run_consumer, ConsumerSpec, ConsumerTransport, HubTarget};
use crate::driver::{run_driver, DriverSpec, DriverTransport, EdgeTarget};
use crate::lifecycle::{check_log, fetch_events, upload_proof, LifecycleMode, LifecycleSummary};
use crate::quality::QualityBook;
use crate::report::{parse_edge_metrics, ConsumerCounts, FixCounts, Report, SimSummary};
use crate::stats::SimStats;
use crate::truth::{plan_trip, Timeline, TruthConfig, TruthModel};
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use nodekit::Clock;
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::status::DeliveryStatus;
use protocol::token::{Subject, TokenSigner};
use protocol::{DeliveryId, DriverId};
use rand::{Rng, SeedableRng};
use roadnet::{haversine_m, LatLng, RoadGraph};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Knobs of a run.
#[derive(Clone, Debug)]
pub struct ScenarioConfig {
    pub drivers: usize,
    pub consumers: usize,
    /// Share of consumers on WebSocket (the rest use WebTransport).
    pub websocket_share: f64,
    /// Share of drivers on the HTTPS fallback (the rest use QUIC datagrams).
    pub https_driver_share: f64,
    pub bad_fix_share: f64,
    /// Real (wall-clock) length of the run.
    pub duration: Duration,
    /// Time between two fixes of one driver, simulated.
    pub fix_interval: Duration,
    /// Whether to draw a progress bar (off when not on a terminal).
    pub progress: bool,
    /// Extra time at the end for consumers to receive the last events.
    pub drain: Duration,
    /// Simulated seconds per real second (1 = real time). The hub and the edge must run on
    /// the same clock (the demo does that).
    pub speedup: f64,
    /// Road network: the hub's `map` setting, or `map_pbf` (a user's OSM extract) when set.
    pub map: region_hub::MapConfig,
    pub map_pbf: Option<PathBuf>,
    /// Share of trips (among those with a consumer) whose driver takes a wrong turn that
    /// leads more than 500 m off the plan.
    pub wrong_turn_share: f64,
    /// Standard deviation of the GPS noise per axis, metres.
    pub gps_noise_m: f64,
    /// Seed of the trips and the truth model (random when absent).
    pub seed: Option<u64>,
    /// Extra trips dispatched before the measured ones, without consumers and not scored:
    /// their fixes teach the hub's speed model first.
    pub warmup_trips: usize,
    /// Write per-trip midpoint figures (JSON) here, for analysis.
    pub trips_out: Option<PathBuf>,
    /// Who moves the status after the driver is assigned: the order service's API calls, or
    /// the hub's geofences and the driver's photo proof alone.
    pub lifecycle: LifecycleMode,
}

impl Default for ScenarioConfig {
    fn default() -> Self {
        Self {
            drivers: 50,
            consumers: 50,
            websocket_share: 0.5,
            https_driver_share: 0.1,
            bad_fix_share: 0.01,
            duration: Duration::from_secs(30),
            fix_interval: Duration::from_secs(1),
            progress: false,
            drain: Duration::from_secs(5),
            speedup: 1.0,
            map: region_hub::MapConfig::Helsinki,
            map_pbf: None,
            wrong_turn_share: 0.05,
            gps_noise_m: 5.0,
            seed: None,
            warmup_trips: 0,
            trips_out: None,
            lifecycle: LifecycleMode::Api,
        }
    }
}

/// Everything a run talks to.
#[derive(Clone)]
pub struct Targets {
    pub edge: EdgeTarget,
    /// `http://host:port` of the edge's admin server (for its counters).
    pub edge_admin_url: String,
    pub hub: HubTarget,
    /// `https://host:port` of the hub's API.
    pub hub_url: String,
    /// Base URL of the hub's pages (`http://127.0.0.1:port` on its plain-HTTP dev listener).
    pub hub_page_url: Option<String>,
    pub hub_http: reqwest::Client,
    /// QUIC client config trusting the edge (ALPN trackline-driver/1).
    pub edge_quic_config: quinn::ClientConfig,
    /// Operator token for the order API (create deliveries, change status).
    pub operator_token: String,
    /// Signs the simulated drivers' tokens.
    pub driver_signer: Arc<TokenSigner>,
    /// The run's clock (simulated time), shared with the hub and the edge.
    pub clock: Clock,
}

/// Trips are dispatched over this share of the run, so later trips meet a speed model that
/// has learnt from the earlier ones and every trip can finish before the end.
const DISPATCH_WINDOW: f64 = 0.5;
/// A wrong turn heads for a road node at least this far from the plan, metres.
const MIN_DETOUR_M: f64 = 650.0;
/// Trip endpoints are at least this far apart (straight line), metres.
const MIN_LEG_M: f64 = 300.0;

struct Trip {
    delivery_id: DeliveryId,
    tracking_token: String,
    driver: DriverSpec,
    /// Status changes and when (simulated Unix seconds) to make them.
    schedule: Vec<(f64, DeliveryStatus)>,
    /// Status when created.
    status: DeliveryStatus,
    /// False for warm-up trips (they teach the hub's speed model but are not measured).
    scored: bool,
}

/// Three road nodes at least `MIN_LEG_M` apart: driver start, pickup, drop-off.
fn pick_endpoints(graph: &RoadGraph, rng: &mut impl Rng) -> (LatLng, LatLng, LatLng) {
    let nodes = graph.nodes();
    let mut pick = || nodes[rng.random_range(0..nodes.len())];
    let mut best = (pick(), pick(), pick());
    for _ in 0..100 {
        let (a, b, c) = (pick(), pick(), pick());
        best = (a, b, c);
        if haversine_m(a, b) >= MIN_LEG_M && haversine_m(b, c) >= MIN_LEG_M {
            break;
        }
    }
    best
}

/// Runs the scenario and returns its report.
pub async fn run(cfg: &ScenarioConfig, targets: &Targets, mode: &str) -> anyhow::Result<Report> {
    let stats = Arc::new(SimStats::new());
    let book = Arc::new(QualityBook::new());
    let stop_drivers = CancellationToken::new();
    let stop_consumers = CancellationToken::new();
    let seed = cfg.seed.unwrap_or_else(|| rand::rng().random());
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let run_id = nodekit::unix_ms() % 1_000_000_000;
    let clock = targets.clock;
    let graph = cfg
        .map
        .load(cfg.map_pbf.as_deref())
        .context("loading the road network for the simulated drivers")?;
    let truth = TruthModel::new(
        TruthConfig {
            seed,
            ..TruthConfig::default()
        },
        &graph,
    );
    let run_sim_s = cfg.duration.as_secs_f64() * clock.speedup();
    let nominal_start_s = clock.now_s_f64();

    // 1. Trips (ground truth) and their deliveries: warm-up trips first, then the scored ones.
    let total = cfg.warmup_trips + cfg.drivers;
    let mut trips = Vec::with_capacity(total);
    let mut wrong_turns = 0u64;
    for j in 0..total {
        let driver_id = DriverId(run_id * 10_000 + j as u64 + 1);
        let (start, pickup, dropoff) = pick_endpoints(&graph, &mut rng);
        // Index among the scored trips (consumers and wrong turns are theirs).
        let scored = j.checked_sub(cfg.warmup_trips);
        // Wrong turns only where a consumer watches (it is how the simulator sees the new route).
        let wrong = scored.is_some_and(|i| i < cfg.consumers && every_nth(i, cfg.wrong_turn_share));
        let plan = plan_trip(
            &graph,
            &truth,
            &mut rng,
            start,
            pickup,
            dropoff,
            nominal_start_s,
            wrong,
            MIN_DETOUR_M,
        )
        .context("planning a simulated trip")?;
        if plan.wrong_turn.is_some() {
            wrong_turns += 1;
        }
        let timeline = Arc::new(plan.timeline);
        let created =
            create_delivery(targets, timeline.pickup, timeline.dropoff, driver_id).await?;
        for seq in 1..=created.last_event_seq {
            stats.event_acked(created.delivery_id.0, seq);
        }
        if scored.is_some() {
            book.add_trip(created.delivery_id.0, timeline.clone());
        }
        let transport = if every_nth(j, cfg.https_driver_share) {
            DriverTransport::Https
        } else {
            DriverTransport::Quic
        };
        let token =
            targets
                .driver_signer
                .sign(Subject::Driver(driver_id), nodekit::unix_s(), 24 * 3600);
        trips.push(Trip {
            delivery_id: created.delivery_id,
            tracking_token: created.tracking_token,
            schedule: Vec::new(),
            status: created.status,
            scored: scored.is_some(),
            driver: DriverSpec {
                driver_id: driver_id.0,
                delivery_id: created.delivery_id.0,
                token,
                timeline,
                start_s: 0.0,
                fix_interval: cfg.fix_interval,
                transport,
                bad_fix_share: cfg.bad_fix_share,
                gps_noise_m: cfg.gps_noise_m,
                clock,
            },
        });
    }

    // Dispatch times, from now on (creating the deliveries took a while): trip j sets off at
    // j / total of the dispatch window.
    let started = Instant::now();
    let run_start_s = clock.now_s_f64();
    let run_end_s = run_start_s + run_sim_s;
    for (j, trip) in trips.iter_mut().enumerate() {
        trip.driver.start_s =
            run_start_s + run_sim_s * DISPATCH_WINDOW * j as f64 / total.max(1) as f64;
        trip.schedule = status_schedule(
            cfg.lifecycle,
            trip.status,
            &trip.driver.timeline,
            trip.driver.start_s,
            run_end_s,
        );
    }
    let scored_trips: Vec<&Trip> = trips.iter().filter(|t| t.scored).collect();

    if let (Some(base), Some(first)) = (&targets.hub_page_url, trips.first()) {
        // Lines for people (and the browser tests) to open.
        println!(
            "TRACKING_URL {base}/track/{}?token={}",
            first.delivery_id, first.tracking_token
        );
        println!("OPERATOR_URL {base}/ops?token={}", targets.operator_token);
    }

    // 2. Consumers: round-robin over deliveries, transports split by share.
    let ios = targets.hub.consumer_ios()?;
    let mut consumers = JoinSet::new();
    let mut counts = ConsumerCounts::default();
    for i in 0..cfg.consumers {
        let Some(trip) = scored_trips.get(i % scored_trips.len().max(1)) else {
            break;
        };
        let transport = if every_nth(i, cfg.websocket_share) {
            counts.websocket += 1;
            ConsumerTransport::WebSocket
        } else {
            counts.webtransport += 1;
            ConsumerTransport::WebTransport
        };
        let spec = ConsumerSpec {
            index: i,
            delivery_id: trip.delivery_id.0,
            token: trip.tracking_token.clone(),
            transport,
        };
        consumers.spawn(run_consumer(
            spec,
            targets.hub.clone(),
            ios.clone(),
            stats.clone(),
            book.clone(),
            clock,
            stop_consumers.clone(),
        ));
    }

    // 3. Drivers (each waits for its dispatch time).
    let endpoints = client_endpoints(cfg.drivers, targets)?;
    let mut drivers = JoinSet::new();
    for (i, trip) in trips.iter().enumerate() {
        drivers.spawn(run_driver(
            trip.driver.clone(),
            targets.edge.clone(),
            endpoints[i % endpoints.len()].clone(),
            stats.clone(),
            book.clone(),
            stop_drivers.clone(),
        ));
    }

    // 4. Status changes as the drivers reach each stage, with a progress bar.
    let bar = progress_bar(cfg);
    let mut next_status: Vec<usize> = vec![0; trips.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let ctrl_c = nodekit::shutdown_signal();
    tokio::pin!(ctrl_c);
    let mut conflicts = 0u64;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
        }
        let elapsed = started.elapsed();
        if elapsed >= cfg.duration {
            break;
        }
        let now_s = clock.now_s_f64();
        for (t, trip) in trips.iter().enumerate() {
            while let Some(&(at, status)) = trip.schedule.get(next_status[t]) {
                if at > now_s {
                    break;
                }
                next_status[t] += 1;
                if cfg.lifecycle == LifecycleMode::Geofence && status == DeliveryStatus::Delivered {
                    // The driver photographs the order at the door; the hub marks it delivered.
                    let door = trip.driver.timeline.dropoff;
                    match upload_proof(
                        &targets.hub_http,
                        &targets.hub_url,
                        trip.delivery_id,
                        &trip.driver.token,
                        door.lat,
                        door.lng,
                    )
                    .await
                    {
                        Ok(p) => stats.event_acked(trip.delivery_id.0, p.event_seq),
                        Err(e) => stats.error(format!("proof upload: {e:#}")),
                    }
                    continue;
                }
                match change_status(targets, trip.delivery_id, status).await {
                    Ok(Some(ch)) => stats.event_acked(trip.delivery_id.0, ch.event_seq),
                    // The hub's geofence made this step (or a later one) already.
                    Ok(None) => conflicts += 1,
                    Err(e) => stats.error(format!("status change: {e:#}")),
                }
            }
        }
        update_bar(&bar, &stats, elapsed);
    }
    let duration_s = started.elapsed().as_secs_f64();
    let ended_s = clock.now_s_f64();
    stop_drivers.cancel();
    while drivers.join_next().await.is_some() {}

    // 5. Read every watched delivery's log back: each event in it (including the hub's own
    // geofence steps) must reach the delivery's consumers. Then let consumers catch up.
    let lifecycle = check_logs(cfg, targets, &scored_trips, ended_s, &stats).await;
    // 6. Let consumers receive the last events, then stop them.
    let deadline = Instant::now() + cfg.drain;
    while Instant::now() < deadline && stats.events().lost > 0 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_consumers.cancel();
    while consumers.join_next().await.is_some() {}
    bar.finish_and_clear();

    let edge = scrape_edge(targets).await.unwrap_or_else(|e| {
        stats.error(format!("reading edge metrics: {e:#}"));
        Default::default()
    });
    if let Some(path) = &cfg.trips_out {
        let json = serde_json::to_string_pretty(&book.trip_details())?;
        std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))?;
    }
    let completed = scored_trips
        .iter()
        .filter(|t| t.driver.start_s + t.driver.timeline.duration_s <= ended_s)
        .count() as u64;

    Ok(Report {
        mode: mode.into(),
        duration_s,
        drivers: total as u64,
        consumers: counts,
        fixes: FixCounts {
            sent: SimStats::get(&stats.fixes_sent),
            sent_https: SimStats::get(&stats.fixes_sent_https),
            sent_bad: SimStats::get(&stats.fixes_sent_bad),
            accepted: edge.accepted,
            rejected: edge.rejected,
            delivered_to_consumers: SimStats::get(&stats.positions_received),
            out_of_order_at_consumers: SimStats::get(&stats.positions_out_of_order),
        },
        latency_ms: stats.latency(),
        status_events: stats.events(),
        consumer_reconnects: SimStats::get(&stats.consumer_reconnects),
        sim: SimSummary {
            speedup: clock.speedup(),
            simulated_s: ended_s - run_start_s,
            city: city_name(cfg),
            road_nodes: graph.node_count() as u64,
            seed,
            trips: scored_trips.len() as u64,
            warmup_trips: cfg.warmup_trips as u64,
            trips_completed: completed,
            wrong_turns,
            status_changes_made_by_hub_first: conflicts,
            eta_frames_received: SimStats::get(&stats.etas_received),
        },
        eta: book.eta_summary(),
        reroute: book.reroute_summary(),
        lifecycle,
        errors: stats.errors(),
    })
}

fn city_name(cfg: &ScenarioConfig) -> String {
    match (&cfg.map_pbf, &cfg.map) {
        (Some(p), _) => p.display().to_string(),
        (None, region_hub::MapConfig::Helsinki) => "helsinki".into(),
        (
            None,
            region_hub::MapConfig::Grid {
                rows,
                cols,
                spacing_m,
            },
        ) => format!("grid {rows}x{cols} @ {spacing_m} m"),
    }
}

/// Picks a deterministic `share` of indices: every n-th with n = 1/share (none for share 0).
fn every_nth(i: usize, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let n = (1.0 / share.min(1.0)).round().max(1.0) as usize;
    i % n == n - 1
}

/// The order service's status changes for one delivery, in simulated Unix seconds: picked up
/// when the driver leaves the pickup, arriving a minute before and delivered at the true
/// arrival. A trip that cannot finish within the run gets them spread over what is left of it
/// (35%, 45%, 70%, 85%), so short demos still show the whole lifecycle.
fn status_schedule(
    mode: LifecycleMode,
    current: DeliveryStatus,
    tl: &Timeline,
    start_s: f64,
    run_end_s: f64,
) -> Vec<(f64, DeliveryStatus)> {
    use DeliveryStatus::*;
    let arrival = start_s + tl.duration_s;
    let plan = if arrival + 1.0 < run_end_s {
        let left = start_s + tl.pickup_departure_s;
        [
            (left, PickedUp),
            (left + 1.0, EnRoute),
            ((arrival - 60.0).max(left + 2.0), Arriving),
            (arrival + 0.5, Delivered),
        ]
    } else {
        let w = (run_end_s - start_s).max(0.0);
        [
            (start_s + 0.35 * w, PickedUp),
            (start_s + 0.45 * w, EnRoute),
            (start_s + 0.70 * w, Arriving),
            (start_s + 0.85 * w, Delivered),
        ]
    };
    let mut out = Vec::new();
    if mode == LifecycleMode::Geofence {
        // Geofences make the intermediate steps; the proof at the door makes `delivered`,
        // for the trips that get there within the run.
        if arrival + 1.0 < run_end_s {
            out.push((arrival + 0.5, Delivered));
        }
        return out;
    }
    let mut at = current;
    for (t, status) in plan {
        if at.check_transition(status).is_ok() {
            out.push((t, status));
            at = status;
        }
    }
    out
}

async fn create_delivery(
    t: &Targets,
    pickup: protocol::geo::LatLng,
    dropoff: protocol::geo::LatLng,
    driver: DriverId,
) -> anyhow::Result<DeliveryCreated> {
    let body = CreateDelivery {
        delivery_id: None,
        pickup,
        dropoff,
        driver_id: Some(driver),
    };
    let resp = t
        .hub_http
        .post(format!("{}/api/v1/deliveries", t.hub_url))
        .bearer_auth(&t.operator_token)
        .json(&body)
        .send()
        .await
        .context("creating a delivery")?;
    if !resp.status().is_success() {
        bail!(
            "creating a delivery: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    resp.json().await.context("reading DeliveryCreated")
}

/// Reads the event log of every watched delivery back from the hub: every event in it is one
/// its consumers must receive, and the logs of completed trips are checked.
async fn check_logs(
    cfg: &ScenarioConfig,
    targets: &Targets,
    trips: &[&Trip],
    ended_s: f64,
    stats: &SimStats,
) -> LifecycleSummary {
    let mut summary = LifecycleSummary {
        mode: Some(cfg.lifecycle),
        ..Default::default()
    };
    for trip in trips {
        let events = match fetch_events(
            &targets.hub_http,
            &targets.hub_url,
            trip.delivery_id,
            &trip.tracking_token,
        )
        .await
        {
            Ok(e) => e,
            Err(e) => {
                stats.error(format!(
                    "reading the history of delivery {}: {e:#}",
                    trip.delivery_id
                ));
                continue;
            }
        };
        for e in &events {
            stats.event_acked(trip.delivery_id.0, e.event_seq);
        }
        if trip.driver.start_s + trip.driver.timeline.duration_s > ended_s {
            continue; // still on the road when the run ended
        }
        summary.trips_completed += 1;
        let (in_order, delivered, api_after) = check_log(&events);
        summary.delivered += u64::from(delivered);
        summary.logs_out_of_order += u64::from(!in_order);
        summary.api_changes_after_assignment += api_after;
        for e in &events {
            *summary
                .events_by_source
                .entry(e.source.clone())
                .or_insert(0) += 1;
        }
    }
    summary
}

/// Moves a delivery's status; `None` when the hub answers 409 (its geofence already moved it).
async fn change_status(
    t: &Targets,
    id: DeliveryId,
    status: DeliveryStatus,
) -> anyhow::Result<Option<StatusChanged>> {
    let body = ChangeStatus {
        status,
        idempotency_key: Some(format!("sim-{id}-{status}")),
        driver_id: None,
        metadata: serde_json::Value::Null,
    };
    let url = format!("{}/api/v1/deliveries/{id}/status", t.hub_url);
    // Retried with the same idempotency key: a retry after a lost answer makes no second event.
    let mut last_err = None;
    for attempt in 0..3u32 {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
        }
        match t
            .hub_http
            .post(&url)
            .bearer_auth(&t.operator_token)
            .json(&body)
            .send()
            .await
        {
            Ok(r) if r.status().is_success() => {
                return r.json().await.map(Some).context("reading StatusChanged")
            }
            Ok(r) if r.status() == reqwest::StatusCode::CONFLICT => return Ok(None),
            Ok(r) => bail!(
                "{status} for delivery {id}: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            ),
            Err(e) => last_err = Some(e),
        }
    }
    Err(anyhow::anyhow!("{status} for delivery {id}: {last_err:?}"))
}

/// A few client endpoints (UDP sockets) shared by the drivers.
fn client_endpoints(drivers: usize, t: &Targets) -> anyhow::Result<Vec<quinn::Endpoint>> {
    let n = drivers.div_ceil(250).max(1);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse().context("bind addr")?)
            .context("binding a driver UDP socket")?;
        ep.set_default_client_config(t.edge_quic_config.clone());
        out.push(ep);
    }
    Ok(out)
}

async fn scrape_edge(t: &Targets) -> anyhow::Result<crate::report::EdgeCounters> {
    let text = reqwest::Client::new()
        .get(format!("{}/metrics", t.edge_admin_url))
        .send()
        .await?
        .error_for_status()?
        .text()
        .await?;
    Ok(parse_edge_metrics(&text))
}

fn progress_bar(cfg: &ScenarioConfig) -> ProgressBar {
    if !cfg.progress {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(cfg.duration.as_secs().max(1));
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len}s {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

fn update_bar(bar: &ProgressBar, stats: &SimStats, elapsed: Duration) {
    bar.set_position(elapsed.as_secs());
    let l = stats.latency();
    let e = stats.events();
    bar.set_message(format!(
        "fixes sent {} · delivered {} · p99 {:.1} ms · events {}/{}",
        SimStats::get(&stats.fixes_sent),
        SimStats::get(&stats.positions_received),
        l.p99,
        e.sent,
        e.received
    ));
}
