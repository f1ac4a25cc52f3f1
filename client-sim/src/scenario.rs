//! A run against a hub and an edge: create deliveries, drive, watch, move statuses, measure.

use crate::consumer::{run_consumer, ConsumerSpec, ConsumerTransport, HubTarget};
use crate::driver::{run_driver, DriverSpec, DriverTransport, EdgeTarget, Progress};
use crate::report::{parse_edge_metrics, ConsumerCounts, FixCounts, Report};
use crate::stats::SimStats;
use crate::world::PathLine;
use anyhow::{bail, Context};
use indicatif::{ProgressBar, ProgressStyle};
use protocol::api::{ChangeStatus, CreateDelivery, DeliveryCreated, StatusChanged};
use protocol::geo::LatLng;
use protocol::status::DeliveryStatus;
use protocol::token::{Subject, TokenSigner};
use protocol::{DeliveryId, DriverId};
use rand::Rng;
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
    pub duration: Duration,
    pub fix_interval: Duration,
    /// Whether to draw a progress bar (off when not on a terminal).
    pub progress: bool,
    /// Extra time at the end for consumers to receive the last events.
    pub drain: Duration,
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
}

/// The central-Helsinki box the demo city covers.
pub const CITY_BOX: (LatLng, LatLng) = (LatLng::new(60.164, 24.935), LatLng::new(60.179, 24.953));

fn random_point(rng: &mut impl Rng) -> LatLng {
    let (lo, hi) = CITY_BOX;
    LatLng::new(rng.random_range(lo.lat..hi.lat), rng.random_range(lo.lng..hi.lng))
}

struct Trip {
    delivery_id: DeliveryId,
    tracking_token: String,
    driver: DriverSpec,
    /// Status changes and when (fraction of the run) to make them.
    schedule: Vec<(f64, DeliveryStatus)>,
}

/// Runs the scenario and returns its report.
pub async fn run(cfg: &ScenarioConfig, targets: &Targets, mode: &str) -> anyhow::Result<Report> {
    let stats = Arc::new(SimStats::new());
    let stop_drivers = CancellationToken::new();
    let stop_consumers = CancellationToken::new();
    let mut rng = rand::rng();
    let run_id = nodekit::unix_ms() % 1_000_000_000;

    // 1. Deliveries and trips.
    let mut trips = Vec::with_capacity(cfg.drivers);
    for i in 0..cfg.drivers {
        let driver_id = DriverId(run_id * 10_000 + i as u64 + 1);
        let (start, pickup, dropoff) = (random_point(&mut rng), random_point(&mut rng), random_point(&mut rng));
        let created = create_delivery(targets, pickup, dropoff, driver_id).await?;
        for seq in 1..=created.last_event_seq {
            stats.event_acked(created.delivery_id.0, seq);
        }
        let path = PathLine::new(vec![start, pickup, dropoff]).context("trip path")?;
        let transport = if every_nth(i, cfg.https_driver_share) { DriverTransport::Https } else { DriverTransport::Quic };
        let token = targets.driver_signer.sign(Subject::Driver(driver_id), nodekit::unix_s(), 24 * 3600);
        trips.push(Trip {
            delivery_id: created.delivery_id,
            tracking_token: created.tracking_token,
            driver: DriverSpec {
                driver_id: driver_id.0,
                token,
                path,
                speed_mps: rng.random_range(6.0..14.0),
                fix_interval: cfg.fix_interval,
                transport,
                bad_fix_share: cfg.bad_fix_share,
            },
            schedule: status_schedule(created.status, &mut rng),
        });
    }

    if let (Some(base), Some(first)) = (&targets.hub_page_url, trips.first()) {
        // Lines for people (and the browser tests) to open.
        println!("TRACKING_URL {base}/track/{}?token={}", first.delivery_id, first.tracking_token);
        println!("OPERATOR_URL {base}/ops?token={}", targets.operator_token);
    }

    // 2. Consumers: round-robin over deliveries, transports split by share.
    let mut consumers = JoinSet::new();
    let mut counts = ConsumerCounts::default();
    for i in 0..cfg.consumers {
        let Some(trip) = trips.get(i % trips.len().max(1)) else { break };
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
        consumers.spawn(run_consumer(spec, targets.hub.clone(), stats.clone(), stop_consumers.clone()));
    }

    // 3. Drivers.
    let endpoints = client_endpoints(cfg.drivers, targets)?;
    let mut drivers = JoinSet::new();
    let mut progress = Vec::new();
    for (i, trip) in trips.iter().enumerate() {
        let p = Arc::new(Progress::default());
        progress.push(p.clone());
        drivers.spawn(run_driver(
            trip.driver.clone(),
            targets.edge.clone(),
            endpoints[i % endpoints.len()].clone(),
            stats.clone(),
            p,
            stop_drivers.clone(),
        ));
    }

    // 4. Status changes over the run, with a progress bar.
    let bar = progress_bar(cfg);
    let started = Instant::now();
    let mut next_status: Vec<usize> = vec![0; trips.len()];
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let ctrl_c = nodekit::shutdown_signal();
    tokio::pin!(ctrl_c);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = &mut ctrl_c => break,
        }
        let elapsed = started.elapsed();
        if elapsed >= cfg.duration {
            break;
        }
        let frac = elapsed.as_secs_f64() / cfg.duration.as_secs_f64();
        for (t, trip) in trips.iter().enumerate() {
            while let Some(&(at, status)) = trip.schedule.get(next_status[t]) {
                if at > frac {
                    break;
                }
                next_status[t] += 1;
                match change_status(targets, trip.delivery_id, status).await {
                    Ok(ch) => stats.event_acked(trip.delivery_id.0, ch.event_seq),
                    Err(e) => stats.error(format!("status change: {e:#}")),
                }
            }
        }
        update_bar(&bar, &stats, elapsed);
    }
    let duration_s = started.elapsed().as_secs_f64();
    stop_drivers.cancel();
    while drivers.join_next().await.is_some() {}

    // 5. Let consumers receive the last events, then stop them.
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
    Ok(Report {
        mode: mode.into(),
        duration_s,
        drivers: cfg.drivers as u64,
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
        errors: stats.errors(),
    })
}

/// Picks a deterministic `share` of indices: every n-th with n = 1/share (none for share 0).
fn every_nth(i: usize, share: f64) -> bool {
    if share <= 0.0 {
        return false;
    }
    let n = (1.0 / share.min(1.0)).round().max(1.0) as usize;
    i % n == n - 1
}

/// The order service's status changes for one delivery, at fractions of the run.
fn status_schedule(current: DeliveryStatus, rng: &mut impl Rng) -> Vec<(f64, DeliveryStatus)> {
    use DeliveryStatus::*;
    let plan = [
        (0.05, Preparing),
        (0.15, DriverAssigned),
        (0.35, PickedUp),
        (0.45, EnRoute),
        (0.70, Arriving),
        (0.85, Delivered),
    ];
    let jitter = rng.random_range(0.0..0.04);
    let mut out = Vec::new();
    let mut at = current;
    for (frac, status) in plan {
        if at.check_transition(status).is_ok() {
            out.push((frac + jitter, status));
            at = status;
        }
    }
    out
}

async fn create_delivery(
    t: &Targets,
    pickup: LatLng,
    dropoff: LatLng,
    driver: DriverId,
) -> anyhow::Result<DeliveryCreated> {
    let body = CreateDelivery { delivery_id: None, pickup, dropoff, driver_id: Some(driver) };
    let resp = t
        .hub_http
        .post(format!("{}/api/v1/deliveries", t.hub_url))
        .bearer_auth(&t.operator_token)
        .json(&body)
        .send()
        .await
        .context("creating a delivery")?;
    if !resp.status().is_success() {
        bail!("creating a delivery: {} {}", resp.status(), resp.text().await.unwrap_or_default());
    }
    resp.json().await.context("reading DeliveryCreated")
}

async fn change_status(t: &Targets, id: DeliveryId, status: DeliveryStatus) -> anyhow::Result<StatusChanged> {
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
        match t.hub_http.post(&url).bearer_auth(&t.operator_token).json(&body).send().await {
            Ok(r) if r.status().is_success() => return r.json().await.context("reading StatusChanged"),
            Ok(r) => bail!("{status} for delivery {id}: {} {}", r.status(), r.text().await.unwrap_or_default()),
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
