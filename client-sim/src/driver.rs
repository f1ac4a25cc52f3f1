//! Simulated drivers: a QUIC session sending fixes as datagrams, or the HTTPS fallback, each
//! fix the trip's true position at the simulated time plus GPS noise.

use crate::quality::QualityBook;
use crate::stats::SimStats;
use crate::truth::Timeline;
use anyhow::{bail, Context};
use nodekit::Clock;
use protocol::api::JsonFix;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME};
use protocol::wire::{encode_fix_datagram, CloseCode, DriverToEdge, EdgeToDriver, Fix};
use rand::Rng;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How a driver reaches the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverTransport {
    /// QUIC session, fixes as datagrams (the normal path).
    Quic,
    /// `POST /api/v1/tracking/locations` over HTTPS on TCP (UDP blocked).
    Https,
}

/// One simulated driver, following its trip's true timed path.
#[derive(Clone, Debug)]
pub struct DriverSpec {
    pub driver_id: u64,
    pub delivery_id: u64,
    pub token: String,
    /// The trip's ground truth (positions and speeds over time).
    pub timeline: Arc<Timeline>,
    /// Simulated Unix seconds at which the driver sets off (no fixes before).
    pub start_s: f64,
    /// Time between two fixes, simulated.
    pub fix_interval: Duration,
    pub transport: DriverTransport,
    /// Probability that a fix is sent with an accuracy beyond the filter's limit (150 m).
    pub bad_fix_share: f64,
    /// Standard deviation of the GPS noise per axis, metres.
    pub gps_noise_m: f64,
    /// The run's simulated clock.
    pub clock: Clock,
}

/// Where the edge is and how to trust it.
#[derive(Clone)]
pub struct EdgeTarget {
    pub quic_addr: SocketAddr,
    pub https_url: String,
    pub server_name: String,
    pub http: reqwest::Client,
}

/// A 2-D Gaussian offset with `sd_m` per axis, in metres (Box-Muller).
fn gaussian_offset(rng: &mut impl Rng, sd_m: f64) -> (f64, f64) {
    let u1: f64 = rng.random_range(f64::EPSILON..1.0);
    let u2: f64 = rng.random_range(0.0..1.0);
    let r = sd_m * (-2.0 * u1.ln()).sqrt();
    let th = std::f64::consts::TAU * u2;
    (r * th.cos(), r * th.sin())
}

fn offset(p: roadnet::LatLng, east_m: f64, north_m: f64) -> (f64, f64) {
    const M_PER_DEG: f64 = 111_195.0;
    (
        p.lat + north_m / M_PER_DEG,
        p.lng + east_m / (M_PER_DEG * p.lat.to_radians().cos()),
    )
}

/// What a driver sends next, or `None` once it has been at the drop-off for a few fixes.
struct Tick {
    fix: Fix,
    done: bool,
}

/// Makes the fix for simulated time `now_s`: the true position plus GPS noise; a few are
/// made bad on purpose (accuracy 150 m, position 100 m off).
fn next_fix(spec: &DriverSpec, seq: u32, now_s: f64, book: &QualityBook, stats: &SimStats) -> Tick {
    let rel = now_s - spec.start_s;
    let truth = spec.timeline.at(rel);
    let mut rng = rand::rng();
    let (mut dx, mut dy) = gaussian_offset(&mut rng, spec.gps_noise_m);
    let mut accuracy = rng.random_range(3.0..10.0);
    let bad = spec.bad_fix_share > 0.0 && rng.random_bool(spec.bad_fix_share.min(1.0));
    if bad {
        accuracy = 150.0;
        let th = rng.random_range(0.0..std::f64::consts::TAU);
        dx += 100.0 * th.cos();
        dy += 100.0 * th.sin();
        SimStats::add(&stats.fixes_sent_bad, 1);
    }
    let (lat, lng) = offset(truth.pos, dx, dy);
    if !bad {
        book.driver_at(spec.delivery_id, now_s, roadnet::LatLng::new(lat, lng));
    }
    let speed = if truth.speed_mps > 0.0 {
        (truth.speed_mps * rng.random_range(0.97..1.03)).max(0.0)
    } else {
        0.0
    };
    let fix = Fix::from_units(
        seq,
        (now_s * 1000.0) as u64,
        lat,
        lng,
        truth.heading_deg,
        speed,
        accuracy,
    );
    let lingered = rel - spec.timeline.duration_s;
    Tick {
        fix,
        done: truth.arrived && lingered > 3.0 * spec.fix_interval.as_secs_f64(),
    }
}

/// Waits (in real time) until the simulated clock reaches the driver's start; false if stopped.
async fn wait_for_start(spec: &DriverSpec, stop: &CancellationToken) -> bool {
    let wait_sim_s = spec.start_s - spec.clock.now_s_f64();
    if wait_sim_s > 0.0 {
        let real = spec.clock.to_real(Duration::from_secs_f64(wait_sim_s));
        tokio::select! {
            _ = stop.cancelled() => return false,
            _ = tokio::time::sleep(real) => {}
        }
    }
    !stop.is_cancelled()
}

fn fix_tick(spec: &DriverSpec) -> tokio::time::Interval {
    let real = spec
        .clock
        .to_real(spec.fix_interval)
        .max(Duration::from_millis(1));
    let mut tick = tokio::time::interval(real);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}

/// Runs a driver until `stop` fires: sends one fix per interval, moving along its path.
pub async fn run_driver(
    spec: DriverSpec,
    edge: EdgeTarget,
    endpoint: quinn::Endpoint,
    stats: Arc<SimStats>,
    book: Arc<QualityBook>,
    stop: CancellationToken,
) {
    if !wait_for_start(&spec, &stop).await {
        return;
    }
    // The timeline runs from the planned start (a late task catches up along it).
    book.driver_started(spec.delivery_id, spec.start_s);
    let result = match spec.transport {
        DriverTransport::Quic => run_quic(&spec, &edge, &endpoint, &stats, &book, &stop).await,
        DriverTransport::Https => run_https(&spec, &edge, &stats, &book, &stop).await,
    };
    if let Err(e) = result {
        stats.error(format!("driver: {e:#}"));
    }
}

async fn run_quic(
    spec: &DriverSpec,
    edge: &EdgeTarget,
    endpoint: &quinn::Endpoint,
    stats: &SimStats,
    book: &QualityBook,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = endpoint
        .connect(edge.quic_addr, &edge.server_name)
        .context("starting QUIC connection to the edge")?
        .await
        .context("QUIC handshake with the edge")?;
    hello(&conn, &spec.token).await?;
    let mut tick = fix_tick(spec);
    let mut seq = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            reason = conn.closed() => bail!("edge closed the session: {reason}"),
        }
        seq += 1;
        let Tick { fix, done } = next_fix(spec, seq, spec.clock.now_s_f64(), book, stats);
        if done {
            break;
        }
        match conn.send_datagram(encode_fix_datagram(&fix).into()) {
            Ok(()) => SimStats::add(&stats.fixes_sent, 1),
            Err(e) => {
                SimStats::add(&stats.datagram_send_errors, 1);
                stats.error(format!("send_datagram: {e}"));
            }
        }
    }
    conn.close(quinn::VarInt::from_u32(CloseCode::Normal as u32), b"done");
    Ok(())
}

/// Sends the hello and waits for the welcome; turns a refusal into a readable error.
pub async fn hello(conn: &quinn::Connection, token: &str) -> anyhow::Result<EdgeToDriver> {
    let (mut send, mut recv) = conn.open_bi().await.context("opening the control stream")?;
    let hello = DriverToEdge::Hello {
        token: token.to_string(),
        app_version: env!("CARGO_PKG_VERSION").into(),
    };
    send.write_all(&frame_bytes(&hello))
        .await
        .context("sending hello")?;
    let mut dec = FrameDecoder::new(MAX_DRIVER_FRAME);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(msg) = dec.next_frame::<EdgeToDriver>()? {
            // Keep the stream open for redirects: hand its halves to a task that drains it.
            tokio::spawn(async move {
                let _keep = send;
                while let Ok(Some(_)) = recv.read(&mut buf).await {}
            });
            return Ok(msg);
        }
        match recv.read(&mut buf).await {
            Ok(Some(n)) => dec.push(&buf[..n]),
            Ok(None) => bail!("edge closed the control stream before welcoming"),
            Err(quinn::ReadError::ConnectionLost(quinn::ConnectionError::ApplicationClosed(c))) => {
                bail!(
                    "edge refused the session (code 0x{:x}): {}",
                    c.error_code.into_inner(),
                    String::from_utf8_lossy(&c.reason)
                )
            }
            Err(e) => bail!("reading welcome: {e}"),
        }
    }
}

async fn run_https(
    spec: &DriverSpec,
    edge: &EdgeTarget,
    stats: &SimStats,
    book: &QualityBook,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/tracking/locations", edge.https_url);
    let mut tick = fix_tick(spec);
    let mut seq = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        seq += 1;
        let Tick { fix, done } = next_fix(spec, seq, spec.clock.now_s_f64(), book, stats);
        if done {
            break;
        }
        let body = vec![JsonFix::from_fix(&fix)];
        let resp = edge
            .http
            .post(&url)
            .bearer_auth(&spec.token)
            .json(&body)
            .send()
            .await;
        match resp {
            Ok(r) if r.status().is_success() => {
                SimStats::add(&stats.fixes_sent, 1);
                SimStats::add(&stats.fixes_sent_https, 1);
            }
            Ok(r) => stats.error(format!("https fallback answered {}", r.status())),
            Err(e) => stats.error(format!("https fallback: {e}")),
        }
    }
    Ok(())
}
