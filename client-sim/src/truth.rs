//! The simulator's ground truth: how fast each road really is (free speed x time of day x a
//! smooth random traffic field x per-segment noise), each trip's timed path on the road graph
//! (driver -> pickup, a dwell, pickup -> drop-off, sometimes with a wrong turn), and so the
//! exact moment each driver reaches the drop-off.
//!
//! Everything is a pure function of the run's seed, the graph and the trip's start time, so a
//! trip's true arrival is known when it starts.

use rand::Rng;
use roadnet::{LatLng, LocalProjection, RoadGraph, Route, RoutePiece, RouteSegment, RouteSnapper};

/// Knobs of the truth model.
#[derive(Clone, Debug)]
pub struct TruthConfig {
    /// Fixes the random traffic field and the per-segment noise.
    pub seed: u64,
    /// Mean time spent at the pickup, seconds (the hub's model assumes 120 s).
    pub dwell_mean_s: f64,
    /// The dwell is uniform in `mean +- jitter`, seconds.
    pub dwell_jitter_s: f64,
    /// Range of the smooth traffic factor (1.0 = free flow).
    pub traffic_min: f64,
    pub traffic_max: f64,
    /// Spacing of the traffic field's random lattice, metres (it is interpolated between).
    pub traffic_lattice_m: f64,
    /// Standard deviation of the per-segment speed noise (fraction of the speed).
    pub segment_noise: f64,
    /// Local offset from UTC for the time-of-day factor, seconds.
    pub utc_offset_s: i32,
}

impl Default for TruthConfig {
    fn default() -> Self {
        Self {
            seed: 1,
            dwell_mean_s: 120.0,
            dwell_jitter_s: 30.0,
            traffic_min: 0.55,
            traffic_max: 1.05,
            traffic_lattice_m: 400.0,
            segment_noise: 0.08,
            utc_offset_s: 7200,
        }
    }
}

/// splitmix64: a tiny deterministic hash for the random fields.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The true speeds of the run.
#[derive(Clone, Debug)]
pub struct TruthModel {
    cfg: TruthConfig,
    projection: LocalProjection,
}

impl TruthModel {
    pub fn new(cfg: TruthConfig, graph: &RoadGraph) -> Self {
        Self {
            projection: *graph.projection(),
            cfg,
        }
    }

    pub fn config(&self) -> &TruthConfig {
        &self.cfg
    }

    fn lattice(&self, i: i64, j: i64) -> f64 {
        let h = mix(self.cfg.seed
            ^ mix((i as u64).wrapping_mul(0x1_0000_0001) ^ (j as u64).rotate_left(32)));
        unit(h)
    }

    /// Smooth random traffic factor at `p`: value noise on a lattice, bilinearly interpolated.
    pub fn traffic_factor(&self, p: LatLng) -> f64 {
        let [x, y] = self.projection.project(p);
        let s = self.cfg.traffic_lattice_m.max(1.0);
        let (gx, gy) = (x / s, y / s);
        let (i, j) = (gx.floor() as i64, gy.floor() as i64);
        let (fx, fy) = (gx - gx.floor(), gy - gy.floor());
        // Smoothstep so the field has no kinks at lattice lines.
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let a = self.lattice(i, j) * (1.0 - sx) + self.lattice(i + 1, j) * sx;
        let b = self.lattice(i, j + 1) * (1.0 - sx) + self.lattice(i + 1, j + 1) * sx;
        let v = a * (1.0 - sy) + b * sy;
        self.cfg.traffic_min + (self.cfg.traffic_max - self.cfg.traffic_min) * v
    }

    /// Time-of-day factor: rush hours (07-09, 16-18 local) 0.75, daytime 0.88, night 1.0.
    pub fn time_of_day_factor(&self, unix_s: f64) -> f64 {
        let h = ((unix_s + f64::from(self.cfg.utc_offset_s)) / 3600.0).rem_euclid(24.0);
        match h as u32 {
            7..=8 | 16..=17 => 0.75,
            6 | 9..=15 | 18..=20 => 0.88,
            _ => 1.0,
        }
    }

    /// Fixed per-segment noise factor, about N(1, segment_noise), clamped to [0.7, 1.3].
    fn segment_noise(&self, seg: &RouteSegment) -> f64 {
        let q = |v: f64| (v * 1e6).round() as i64 as u64;
        let h = mix(self.cfg.seed
            ^ mix(q(seg.start.lat) ^ mix(q(seg.start.lng) ^ mix(q(seg.end.lat) ^ q(seg.end.lng)))));
        // Sum of 4 uniforms: roughly normal with sd sqrt(4/12).
        let sum: f64 = (0..4).map(|k| unit(mix(h.wrapping_add(k)))).sum();
        let z = (sum - 2.0) / (4.0f64 / 12.0).sqrt();
        (1.0 + self.cfg.segment_noise * z).clamp(0.7, 1.3)
    }

    /// The true speed on `seg` for a trip at `unix_s`, m/s.
    pub fn segment_speed_mps(&self, seg: &RouteSegment, unix_s: f64) -> f64 {
        let mid = LatLng::new(
            (seg.start.lat + seg.end.lat) / 2.0,
            (seg.start.lng + seg.end.lng) / 2.0,
        );
        (seg.free_speed_mps
            * self.time_of_day_factor(unix_s)
            * self.traffic_factor(mid)
            * self.segment_noise(seg))
        .max(1.5)
    }
}

/// One timed piece of a trip: driving a straight segment, or waiting (`from == to`, speed 0).
#[derive(Clone, Copy, Debug)]
struct TimedPiece {
    t0: f64,
    t1: f64,
    from: LatLng,
    to: LatLng,
    speed_mps: f64,
    heading_deg: f64,
}

/// Where the driver truly is at a moment of its trip.
#[derive(Clone, Copy, Debug)]
pub struct TruePoint {
    pub pos: LatLng,
    pub heading_deg: f64,
    pub speed_mps: f64,
    /// True once the driver has left the pickup.
    pub picked_up: bool,
    /// True once the driver is at the drop-off.
    pub arrived: bool,
}

/// A trip's true timed path, relative to its start (seconds).
#[derive(Clone, Debug)]
pub struct Timeline {
    pieces: Vec<TimedPiece>,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    /// When the driver reaches and leaves the pickup (seconds after the start).
    pub pickup_arrival_s: f64,
    pub pickup_departure_s: f64,
    /// When the driver reaches the drop-off (seconds after the start).
    pub duration_s: f64,
    /// Length of the driven path, metres.
    pub length_m: f64,
}

impl Timeline {
    /// The driver at `rel_s` seconds after the start (clamped to the trip).
    pub fn at(&self, rel_s: f64) -> TruePoint {
        let arrived = rel_s >= self.duration_s;
        let picked_up = rel_s >= self.pickup_departure_s;
        let i = self
            .pieces
            .partition_point(|p| p.t1 < rel_s)
            .min(self.pieces.len().saturating_sub(1));
        let Some(p) = self.pieces.get(i) else {
            return TruePoint {
                pos: self.dropoff,
                heading_deg: 0.0,
                speed_mps: 0.0,
                picked_up,
                arrived: true,
            };
        };
        if arrived {
            return TruePoint {
                pos: self.dropoff,
                heading_deg: p.heading_deg,
                speed_mps: 0.0,
                picked_up,
                arrived,
            };
        }
        let span = p.t1 - p.t0;
        let t = if span > 0.0 {
            ((rel_s - p.t0) / span).clamp(0.0, 1.0)
        } else {
            1.0
        };
        let pos = LatLng::new(
            p.from.lat + (p.to.lat - p.from.lat) * t,
            p.from.lng + (p.to.lng - p.from.lng) * t,
        );
        TruePoint {
            pos,
            heading_deg: p.heading_deg,
            speed_mps: p.speed_mps,
            picked_up,
            arrived,
        }
    }
}

/// A detour off the plan that takes the driver far enough away to be re-routed.
#[derive(Clone, Copy, Debug)]
pub struct WrongTurn {
    /// Where the driver left the plan and the farthest point of the detour.
    pub from: LatLng,
    pub to: LatLng,
    /// Distance of `to` from the planned route, metres.
    pub off_route_m: f64,
}

/// One simulated trip: endpoints, the plan the hub will make, and the true timed path.
#[derive(Clone, Debug)]
pub struct TripPlan {
    pub start: LatLng,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    /// The fastest route driver -> pickup -> drop-off (what the hub plans).
    pub planned: Route,
    pub timeline: Timeline,
    pub wrong_turn: Option<WrongTurn>,
}

/// The first `k` segments of `route` as a route.
fn prefix(route: &Route, k: usize) -> Route {
    let start = route.start().unwrap_or(LatLng::new(0.0, 0.0));
    Route::from_pieces(
        start,
        route.segments.iter().take(k).map(|s| RoutePiece {
            to: s.end,
            class: s.class,
            free_speed_mps: s.free_speed_mps,
        }),
    )
}

/// Pieces of a trip: a route to drive, or a wait.
enum Part {
    Drive(Route),
    Dwell(f64),
}

/// Builds a trip. With `wrong_turn`, the driver leaves the plan part-way through one leg for a
/// road node at least `min_detour_m` from the planned route (none when the city has none).
#[allow(clippy::too_many_arguments)]
pub fn plan_trip(
    graph: &RoadGraph,
    truth: &TruthModel,
    rng: &mut impl Rng,
    start: LatLng,
    pickup: LatLng,
    dropoff: LatLng,
    start_unix_s: f64,
    wrong_turn: bool,
    min_detour_m: f64,
) -> anyhow::Result<TripPlan> {
    let leg1 = graph.route(start, pickup)?;
    let leg2 = graph.route(pickup, dropoff)?;
    let planned = Route::concat(&[leg1.clone(), leg2.clone()]);
    let dwell = truth.cfg.dwell_mean_s + rng.random_range(-1.0..=1.0) * truth.cfg.dwell_jitter_s;
    let mut turn = None;
    let mut parts = vec![
        Part::Drive(leg1.clone()),
        Part::Dwell(dwell),
        Part::Drive(leg2.clone()),
    ];
    if wrong_turn {
        // Leave on the longer leg, 30-60% of the way along it.
        let on_first = leg1.segments.len() >= leg2.segments.len();
        let leg = if on_first { &leg1 } else { &leg2 };
        if leg.segments.len() >= 2 {
            let k = ((leg.segments.len() as f64 * rng.random_range(0.3..0.6)) as usize)
                .clamp(1, leg.segments.len() - 1);
            let from = leg.segments[k - 1].end;
            let snapper = RouteSnapper::new(&planned);
            let off = |p: LatLng| snapper.snap(p, 0.0).map_or(0.0, |s| s.offset_m);
            // The closest node (to where the driver leaves) that is far enough from the plan.
            let target = graph
                .nodes()
                .iter()
                .copied()
                .filter(|&p| off(p) >= min_detour_m)
                .min_by(|a, b| {
                    roadnet::haversine_m(from, *a).total_cmp(&roadnet::haversine_m(from, *b))
                });
            if let Some(to) = target {
                let detour = graph.route(from, to)?;
                let back_to = if on_first { pickup } else { dropoff };
                let back = graph.route(to, back_to)?;
                let turned = Route::concat(&[prefix(leg, k), detour, back]);
                turn = Some(WrongTurn {
                    from,
                    to,
                    off_route_m: off(to),
                });
                parts = if on_first {
                    vec![
                        Part::Drive(turned),
                        Part::Dwell(dwell),
                        Part::Drive(leg2.clone()),
                    ]
                } else {
                    vec![
                        Part::Drive(leg1.clone()),
                        Part::Dwell(dwell),
                        Part::Drive(turned),
                    ]
                };
            }
        }
    }
    let mut pieces = Vec::new();
    let mut t = 0.0;
    let mut length_m = 0.0;
    let (mut pickup_arrival_s, mut pickup_departure_s) = (0.0, 0.0);
    let mut at = start;
    for part in &parts {
        match part {
            Part::Drive(route) => {
                for seg in &route.segments {
                    let v = truth.segment_speed_mps(seg, start_unix_s);
                    let dt = seg.length_m / v;
                    pieces.push(TimedPiece {
                        t0: t,
                        t1: t + dt,
                        from: seg.start,
                        to: seg.end,
                        speed_mps: v,
                        heading_deg: roadnet::bearing_deg(seg.start, seg.end),
                    });
                    t += dt;
                    length_m += seg.length_m;
                    at = seg.end;
                }
            }
            Part::Dwell(d) => {
                pickup_arrival_s = t;
                pieces.push(TimedPiece {
                    t0: t,
                    t1: t + d,
                    from: at,
                    to: at,
                    speed_mps: 0.0,
                    heading_deg: 0.0,
                });
                t += d;
                pickup_departure_s = t;
            }
        }
    }
    let timeline = Timeline {
        pieces,
        pickup: leg1.end().unwrap_or(pickup),
        dropoff: leg2.end().unwrap_or(dropoff),
        pickup_arrival_s,
        pickup_departure_s,
        duration_s: t,
        length_m,
    };
    Ok(TripPlan {
        start,
        pickup,
        dropoff,
        planned,
        timeline,
        wrong_turn: turn,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid() -> RoadGraph {
        RoadGraph::grid_city(20, 20, 100.0, LatLng::new(60.164, 24.935)).expect("grid")
    }

    #[test]
    fn a_trip_drives_to_the_pickup_waits_then_reaches_the_dropoff_at_its_duration() {
        let g = grid();
        let truth = TruthModel::new(TruthConfig::default(), &g);
        let mut rng = rand::rng();
        let n = g.nodes();
        let trip = plan_trip(
            &g, &truth, &mut rng, n[0], n[15], n[399], 1.7e9, false, 650.0,
        )
        .expect("trip");
        let tl = &trip.timeline;
        assert!(tl.pickup_arrival_s > 0.0);
        let dwell = tl.pickup_departure_s - tl.pickup_arrival_s;
        assert!((90.0..=150.0).contains(&dwell), "{dwell}");
        let waiting = tl.at(tl.pickup_arrival_s + 1.0);
        assert_eq!(waiting.speed_mps, 0.0);
        assert!(roadnet::haversine_m(waiting.pos, n[15]) < 1.0);
        assert!(!waiting.picked_up);
        let end = tl.at(tl.duration_s + 5.0);
        assert!(end.arrived && end.picked_up);
        assert!(roadnet::haversine_m(end.pos, n[399]) < 1.0);
        // Truth speeds lie between the slowest and fastest factors of the free speed.
        let moving = tl.at(1.0);
        assert!(
            moving.speed_mps > 1.5 && moving.speed_mps < 14.0,
            "{moving:?}"
        );
    }

    #[test]
    fn a_wrong_turn_takes_the_driver_farther_than_the_deviation_threshold_off_the_plan() {
        let g = grid();
        let truth = TruthModel::new(TruthConfig::default(), &g);
        let mut rng = rand::rng();
        let n = g.nodes();
        let trip =
            plan_trip(&g, &truth, &mut rng, n[0], n[19], n[39], 1.7e9, true, 650.0).expect("trip");
        let turn = trip
            .wrong_turn
            .expect("a grid this size has room for a detour");
        assert!(turn.off_route_m >= 650.0);
        let snapper = RouteSnapper::new(&trip.planned);
        let farthest = (0..(trip.timeline.duration_s as usize))
            .map(|t| {
                snapper
                    .snap(trip.timeline.at(t as f64).pos, 0.0)
                    .map_or(0.0, |s| s.offset_m)
            })
            .fold(0.0, f64::max);
        assert!(farthest > 500.0, "{farthest}");
    }

    #[test]
    fn the_traffic_field_is_smooth_and_within_its_range() {
        let g = grid();
        let truth = TruthModel::new(TruthConfig::default(), &g);
        let p = LatLng::new(60.17, 24.95);
        let q = LatLng::new(60.17001, 24.95);
        let (a, b) = (truth.traffic_factor(p), truth.traffic_factor(q));
        assert!((0.55..=1.05).contains(&a));
        assert!((a - b).abs() < 0.01, "{a} {b}");
    }
}
