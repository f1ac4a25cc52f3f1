//! Simulated drivers: a QUIC session sending fixes as datagrams, or the HTTPS fallback.

use crate::stats::SimStats;
use crate::world::PathLine;
use anyhow::{bail, Context};
use protocol::api::JsonFix;
use protocol::framing::{frame_bytes, FrameDecoder, MAX_DRIVER_FRAME};
use protocol::wire::{encode_fix_datagram, CloseCode, DriverToEdge, EdgeToDriver, Fix};
use rand::Rng;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How a driver reaches the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DriverTransport {
    /// QUIC session, fixes as datagrams (the normal path).
    Quic,
    /// `POST /api/v1/tracking/locations` over HTTPS on TCP (UDP blocked).
    Https,
}

/// One simulated driver.
#[derive(Clone, Debug)]
pub struct DriverSpec {
    pub driver_id: u64,
    pub token: String,
    pub path: PathLine,
    pub speed_mps: f64,
    pub fix_interval: Duration,
    pub transport: DriverTransport,
    /// Probability that a fix is sent with an accuracy beyond the filter's limit.
    pub bad_fix_share: f64,
}

/// Where a driver is along its path, in decimetres, readable by the scenario.
#[derive(Debug, Default)]
pub struct Progress {
    pub travelled_dm: AtomicU64,
}

impl Progress {
    pub fn travelled_m(&self) -> f64 {
        self.travelled_dm.load(Ordering::Relaxed) as f64 / 10.0
    }
}

/// Where the edge is and how to trust it.
#[derive(Clone)]
pub struct EdgeTarget {
    pub quic_addr: SocketAddr,
    pub https_url: String,
    pub server_name: String,
    pub http: reqwest::Client,
}

fn now_ms() -> u64 {
    nodekit::unix_ms()
}

/// Makes the next fix of a driver; some are made bad on purpose.
fn next_fix(spec: &DriverSpec, seq: u32, travelled_m: f64, stats: &SimStats) -> Fix {
    let (pos, heading) = spec.path.at(travelled_m);
    let mut rng = rand::rng();
    let moving = travelled_m < spec.path.length_m();
    let speed = if moving { spec.speed_mps } else { 0.0 };
    let mut accuracy = rng.random_range(3.0..15.0);
    if spec.bad_fix_share > 0.0 && rng.random_bool(spec.bad_fix_share.min(1.0)) {
        accuracy = 150.0;
        SimStats::add(&stats.fixes_sent_bad, 1);
    }
    Fix::from_units(seq, now_ms(), pos.lat, pos.lng, heading, speed, accuracy)
}

/// Runs a driver until `stop` fires: sends one fix per interval, moving along its path.
pub async fn run_driver(
    spec: DriverSpec,
    edge: EdgeTarget,
    endpoint: quinn::Endpoint,
    stats: Arc<SimStats>,
    progress: Arc<Progress>,
    stop: CancellationToken,
) {
    let result = match spec.transport {
        DriverTransport::Quic => run_quic(&spec, &edge, &endpoint, &stats, &progress, &stop).await,
        DriverTransport::Https => run_https(&spec, &edge, &stats, &progress, &stop).await,
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
    progress: &Progress,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let conn = endpoint
        .connect(edge.quic_addr, &edge.server_name)
        .context("starting QUIC connection to the edge")?
        .await
        .context("QUIC handshake with the edge")?;
    hello(&conn, &spec.token).await?;
    let start = Instant::now();
    let mut tick = tokio::time::interval(spec.fix_interval);
    let mut seq = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
            reason = conn.closed() => bail!("edge closed the session: {reason}"),
        }
        let travelled = start.elapsed().as_secs_f64() * spec.speed_mps;
        progress.travelled_dm.store((travelled.min(spec.path.length_m()) * 10.0) as u64, Ordering::Relaxed);
        seq += 1;
        let fix = next_fix(spec, seq, travelled, stats);
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
    let hello = DriverToEdge::Hello { token: token.to_string(), app_version: env!("CARGO_PKG_VERSION").into() };
    send.write_all(&frame_bytes(&hello)).await.context("sending hello")?;
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
    progress: &Progress,
    stop: &CancellationToken,
) -> anyhow::Result<()> {
    let url = format!("{}/api/v1/tracking/locations", edge.https_url);
    let start = Instant::now();
    let mut tick = tokio::time::interval(spec.fix_interval);
    let mut seq = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let travelled = start.elapsed().as_secs_f64() * spec.speed_mps;
        progress.travelled_dm.store((travelled.min(spec.path.length_m()) * 10.0) as u64, Ordering::Relaxed);
        seq += 1;
        let fix = next_fix(spec, seq, travelled, stats);
        let body = vec![JsonFix::from_fix(&fix)];
        let resp = edge.http.post(&url).bearer_auth(&spec.token).json(&body).send().await;
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
