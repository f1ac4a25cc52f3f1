//! Simulated drivers: the client library's driver session (QUIC datagrams, or the HTTPS
//! fallback), each fix the trip's true position at the simulated time plus GPS noise.

use crate::quality::QualityBook;
use crate::stats::SimStats;
use crate::truth::Timeline;
use nodekit::Clock;
use protocol::wire::Fix;
use rand::Rng;
use std::net::SocketAddr;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use trackline_client::io::{run_driver as drive, DriverApp, DriverIo};
use trackline_client::{DriverConfig, DriverEvent, DriverSession};

pub use trackline_client::DriverTransport;

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
    /// `host:port` of the edge's HTTPS listener.
    pub https_authority: String,
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
fn next_fix(spec: &DriverSpec, now_s: f64, book: &QualityBook, stats: &SimStats) -> Tick {
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
        0, // the session numbers its fixes
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

/// The simulated phone: a fix per interval along the trip, until a little after arrival.
struct SimDriver<'a> {
    spec: &'a DriverSpec,
    stats: &'a SimStats,
    book: &'a QualityBook,
    next: Instant,
    interval: Duration,
}

impl DriverApp for SimDriver<'_> {
    fn next_wake(&self) -> Option<Instant> {
        Some(self.next)
    }

    fn wake(&mut self, now: Instant, session: &mut DriverSession) -> ControlFlow<()> {
        let Tick { fix, done } = next_fix(
            self.spec,
            self.spec.clock.now_s_f64(),
            self.book,
            self.stats,
        );
        if done {
            return ControlFlow::Break(());
        }
        session.send_fix(now, fix);
        self.next = (self.next + self.interval).max(now);
        ControlFlow::Continue(())
    }

    fn on_event(&mut self, _now: Instant, event: DriverEvent) {
        match event {
            DriverEvent::FixesSent { count } => {
                SimStats::add(&self.stats.fixes_sent, count as u64);
                if self.spec.transport == DriverTransport::Https {
                    SimStats::add(&self.stats.fixes_sent_https, count as u64);
                }
            }
            DriverEvent::Failed { failure, .. } => self.stats.error(format!("driver: {failure}")),
            DriverEvent::Stopped { failure } => {
                self.stats.error(format!("driver refused: {failure}"))
            }
            DriverEvent::FixesDropped { count } => {
                SimStats::add(&self.stats.datagram_send_errors, count as u64)
            }
            DriverEvent::Connected { .. } | DriverEvent::Redirected { .. } => {}
        }
    }
}

/// Runs a driver until `stop` fires or its trip is over: one fix per interval along its path.
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
    let (edges, io) = match spec.transport {
        DriverTransport::Quic => (
            vec![edge.quic_addr.to_string()],
            DriverIo::Quic {
                endpoint,
                server_name: edge.server_name.clone(),
            },
        ),
        DriverTransport::Https => (
            vec![edge.https_authority.clone()],
            DriverIo::Https {
                client: edge.http.clone(),
            },
        ),
    };
    let mut config = DriverConfig::new(spec.token.clone(), edges, spec.transport);
    config.seed = spec.driver_id;
    let now = Instant::now();
    let mut session = DriverSession::new(config, now);
    session.set_on_duty(vec![protocol::DeliveryId(spec.delivery_id)]);
    let mut app = SimDriver {
        spec: &spec,
        stats: &stats,
        book: &book,
        next: now,
        interval: spec
            .clock
            .to_real(spec.fix_interval)
            .max(Duration::from_millis(1)),
    };
    drive(&mut session, &io, &mut app, &stop).await;
}
