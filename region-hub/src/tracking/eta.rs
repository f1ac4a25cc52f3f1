//! Sans-IO ETA of the hub: one shared [`EtaModel`] (the road graph and the fleet-learnt speed
//! model) and one [`EtaTracker`] per delivery, which plans the route driver -> pickup ->
//! drop-off on the first fix after assignment, snaps every fix to it, re-routes when the driver
//! is more than 500 m off it, and produces the `Eta` frames consumers see.
//!
//! The model itself (snapping, expected speeds, smoothing) is `roadnet`'s; see `docs/eta.md`.
//! Without a road graph (unit tests of the core) the tracker falls back to a straight-line
//! estimate at a fixed speed. The core only calls [`EtaModel::observe_fix`],
//! [`EtaTracker::handle_fix`], [`EtaTracker::handle_silence`] and [`EtaTracker::current`].

use protocol::consumer::Eta;
use protocol::geo::{haversine_m, LatLng};
use protocol::status::DeliveryStatus;
use protocol::wire::Fix;
use protocol::DeliveryId;
use roadnet::{
    cell_of, hour_of_week, place_of, DwellModel, EtaEngine, RoadError, RoadGraph, Route,
    SpeedModel, SpeedSample,
};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Tuning of the ETA.
#[derive(Clone, Debug, PartialEq)]
pub struct EtaConfig {
    /// Assumed travel speed of the straight-line fallback (no road graph).
    pub speed_mps: f64,
    /// Weight of the newest estimate in the straight-line fallback's moving average.
    pub smoothing: f64,
    /// ETA frames are pushed at most this often per delivery (also the countdown's period);
    /// a frame carrying a new route is pushed at once.
    pub push_interval_ms: u64,
    /// A delivery's estimate is worked out from at most one fix in this long (fix time);
    /// fixes in between are relayed as positions only, unless the driver moved more than
    /// `engine.off_route_hold_m` since the last one worked out. Fixes come every ~4 s at the
    /// design rate (and every second in client-sim), so this changes nothing there, with room
    /// for jitter; a driver sending 4 fixes a second costs one estimate in three fixes, while
    /// pushes stay at `push_interval_ms`.
    pub min_fix_interval_ms: u64,
    /// The road-network ETA engine (dwell, smoothing alpha 0.3, 500 m deviation threshold).
    pub engine: roadnet::EtaConfig,
    /// The speed model (speed ratios per segment, cell, area and hour of week; live factor).
    pub speed_model: roadnet::SpeedModelConfig,
    /// The pickup dwell learnt from this hub's own pickups (prior: 120 s).
    pub dwell: roadnet::DwellConfig,
    /// Fixes slower than this do not teach the speed model (parked, waiting at the pickup).
    pub min_learn_speed_mps: f64,
    /// Fixes farther than this from the route do not teach the speed ratios of the segment
    /// they were snapped to (the driver is on another road), metres.
    pub max_learn_offset_m: f64,
    /// A fix this close (straight line) to the pickup means the driver has arrived there and
    /// the dwell starts counting down, metres.
    pub pickup_arrival_m: f64,
    /// After arriving, a fix this far from the pickup means the driver has left it, metres.
    pub pickup_leave_m: f64,
    /// A fix this close (straight line) to the drop-off, after the pickup, is the arrival:
    /// the estimates made on the way are scored against it to learn the band, metres.
    pub dropoff_arrival_m: f64,
}

impl Default for EtaConfig {
    fn default() -> Self {
        Self {
            speed_mps: 8.0,
            smoothing: 0.3,
            push_interval_ms: 2_000,
            min_fix_interval_ms: 750,
            engine: roadnet::EtaConfig {
                // Where a route doubles back at the pickup, a slow driver's noisy fix must not
                // be snapped onto the way back (fixes are at most ~4 s apart: 100 m covers it).
                snap: roadnet::SnapConfig {
                    max_forward_jump_m: 100.0,
                    ..roadnet::SnapConfig::default()
                },
                ..roadnet::EtaConfig::default()
            },
            speed_model: roadnet::SpeedModelConfig::default(),
            dwell: roadnet::DwellConfig::default(),
            min_learn_speed_mps: 1.0,
            max_learn_offset_m: 40.0,
            pickup_arrival_m: 40.0,
            pickup_leave_m: 80.0,
            dropoff_arrival_m: 40.0,
        }
    }
}

/// A delivery's planned route as stored in redb (table `plans`), so a restart keeps it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StoredPlan {
    pub route: Route,
    /// Index of the first segment after the pickup, while the pickup is ahead.
    pub pickup_segment: Option<usize>,
    /// 1 for the plan made at dispatch, +1 per re-route.
    pub version: u32,
}

/// What the model did since it was last asked (drained into the hub's metrics).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EtaStats {
    /// Routes planned at dispatch.
    pub plans: u64,
    /// Re-routes after a deviation.
    pub reroutes: u64,
    /// Time spent computing each plan or re-route (routing + engine set-up), seconds. Measured
    /// by the caller-supplied timer, so the core stays clock-free: see [`EtaModel::set_timer`].
    pub route_seconds: Vec<f64>,
    /// Routing failures (no route; the straight-line estimate was used instead).
    pub route_failures: u64,
}

/// What the ETA of a group of deliveries shares: the road graph, and what it learnt about speeds
/// since the owner last collected it. The speed model itself is not here: it is shared by every
/// group (shard) of the hub, passed in read-only while fixes are handled, and the samples taken
/// here are applied to it afterwards ([`EtaModel::take_samples`], [`SpeedModel::apply`]).
#[derive(Debug, Default)]
pub struct EtaModel {
    graph: Option<Arc<RoadGraph>>,
    /// Speed observations not yet applied to the shared model.
    samples: Vec<SpeedSample>,
    /// The last position resolved to an H3 cell (a fix teaches both tables from one position).
    last_cell: Option<(LatLng, u64)>,
    /// Plans made or changed since the last [`EtaModel::take_dirty_plans`].
    dirty_plans: Vec<(DeliveryId, StoredPlan)>,
    stats: EtaStats,
    /// Measures elapsed seconds around routing (a monotonic timer from the IO layer).
    timer: Option<fn() -> f64>,
    /// How far off past estimates of this group's deliveries turned out (the band, with
    /// `roadnet::BandConfig`'s defaults: p10-p90).
    band: roadnet::EtaBand,
    /// How long drivers stayed at this group's pickups (memory only for now: a restarted hub
    /// starts again from the prior).
    dwell: Option<DwellModel>,
}

impl EtaModel {
    /// A model on `graph`.
    pub fn new(graph: Option<Arc<RoadGraph>>) -> Self {
        Self {
            graph,
            ..Self::default()
        }
    }

    /// The road graph, if any.
    pub fn graph(&self) -> Option<&Arc<RoadGraph>> {
        self.graph.as_ref()
    }

    /// Uses `graph` for routes planned from now on.
    pub fn set_graph(&mut self, graph: Arc<RoadGraph>) {
        self.graph = Some(graph);
    }

    /// Sets the timer used to measure routing time (seconds from any fixed origin).
    pub fn set_timer(&mut self, timer: fn() -> f64) {
        self.timer = Some(timer);
    }

    /// Samples for the historical table: the speed of an accepted fix (every driver's, matched
    /// to a delivery or not). Fixes slower than `min_learn_speed_mps` are skipped.
    pub fn observe_fix(&mut self, config: &EtaConfig, fix: &Fix) {
        let speed_mps = fix.speed_mps();
        if speed_mps < config.min_learn_speed_mps {
            return;
        }
        let now_s = fix.ts_ms as f64 / 1000.0;
        let hour_of_week = hour_of_week(now_s, config.speed_model.utc_offset_s);
        if let Some(cell) = self.cell(fix.position()) {
            self.samples.push(SpeedSample::Historical {
                cell,
                hour_of_week,
                speed_mps,
            });
        }
    }

    /// The learnt pickup dwells (made with `config` on first use).
    fn dwell(&mut self, config: &EtaConfig) -> &mut DwellModel {
        self.dwell
            .get_or_insert_with(|| DwellModel::new(config.dwell.clone()))
    }

    /// Speed samples taken since the last call, to apply to the shared [`SpeedModel`].
    pub fn take_samples(&mut self) -> Vec<SpeedSample> {
        std::mem::take(&mut self.samples)
    }

    /// The H3 cell of `pos` (cached for the last position asked).
    fn cell(&mut self, pos: LatLng) -> Option<u64> {
        match self.last_cell {
            Some((p, c)) if p == pos => Some(c),
            _ => {
                let c = cell_of(roadnet::LatLng::new(pos.lat, pos.lng))?;
                self.last_cell = Some((pos, c));
                Some(c)
            }
        }
    }

    /// Plans and re-routes since the last call, for redb.
    pub fn take_dirty_plans(&mut self) -> Vec<(DeliveryId, StoredPlan)> {
        std::mem::take(&mut self.dirty_plans)
    }

    /// Counters since the last call, for the metrics.
    pub fn take_stats(&mut self) -> EtaStats {
        std::mem::take(&mut self.stats)
    }

    fn elapsed(&self) -> Option<f64> {
        self.timer.map(|t| t())
    }

    /// Route from `from` via `pickup` (when ahead) to `dropoff`: (route, pickup segment).
    fn plan(
        &self,
        from: LatLng,
        pickup: Option<LatLng>,
        dropoff: LatLng,
    ) -> Option<Result<(Route, Option<usize>), RoadError>> {
        let g = self.graph.as_ref()?;
        let (from, dropoff) = (from, dropoff);
        Some(match pickup {
            Some(p) => (|| {
                let first = g.route(from, p)?;
                let second = g.route(p, dropoff)?;
                let k = first.segments.len();
                Ok((Route::concat(&[first, second]), Some(k)))
            })(),
            None => g.route(from, dropoff).map(|r| (r, None)),
        })
    }
}

/// What the ETA needs to know about the delivery at a fix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EtaInput {
    pub delivery_id: DeliveryId,
    pub status: DeliveryStatus,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    /// The driver's position and when it was measured.
    pub here: LatLng,
    pub fix_ts_ms: u64,
    /// The speed the fix reports, m/s (feeds the live speed factor).
    pub speed_mps: f64,
}

fn before_pickup(status: DeliveryStatus) -> bool {
    matches!(
        status,
        DeliveryStatus::Confirmed | DeliveryStatus::Preparing | DeliveryStatus::DriverAssigned
    )
}

/// The route-based engine of one delivery and its plan's version.
#[derive(Clone, Debug)]
struct Planned {
    /// Driving time along the route (its own pickup dwell is not used: see [`PickupWait`]).
    engine: EtaEngine,
    pickup_segment: Option<usize>,
    version: u32,
    polyline: String,
}

/// The pickup ahead and the dwell there, judged by distance to the pickup rather than by
/// progress along the route: snapping noise at a pickup where the route doubles back must not
/// drop the dwell early. The dwell still ahead comes from the learnt [`DwellModel`], and each
/// finished wait (first to last fix within `pickup_arrival_m`) teaches it.
#[derive(Clone, Debug, PartialEq)]
struct PickupWait {
    at: LatLng,
    /// The pickup place the dwell is learnt for.
    place: Option<u64>,
    /// Distance along the route to the pickup, metres.
    progress_m: f64,
    arrived_s: Option<f64>,
    /// The last fix within `pickup_arrival_m` of the pickup.
    last_near_s: Option<f64>,
    /// The status said "picked up" before the driver was seen at the pickup (a geofence
    /// crossed on the way there): from then on only the driver's position ends the wait.
    status_early: bool,
    passed: bool,
}

impl PickupWait {
    fn new(route: &Route, pickup_segment: usize, at: LatLng) -> Self {
        let progress_m = route
            .segments
            .get(pickup_segment)
            .map_or(route.length_m, |s| s.cum_start_m);
        Self {
            at,
            place: place_of(roadnet::LatLng::new(at.lat, at.lng)),
            progress_m,
            arrived_s: None,
            last_near_s: None,
            status_early: false,
            passed: false,
        }
    }

    /// Updates the state with a fix; returns the dwell still ahead, seconds, and records the
    /// dwell in `dwells` when this fix ends it.
    fn handle_fix(
        &mut self,
        config: &EtaConfig,
        dwells: &mut DwellModel,
        now_s: f64,
        here: LatLng,
        progress_m: f64,
        status: DeliveryStatus,
    ) -> f64 {
        if !self.passed {
            let d = haversine_m(here, self.at);
            // Near the pickup in a straight line and along the route: a route that loops past
            // the pickup on the way there (a one-way block) brings the driver within 40 m
            // before they are there.
            let along_m = (progress_m - self.progress_m).abs();
            if d <= config.pickup_arrival_m && along_m <= PICKUP_ALONG_ROUTE_M {
                self.arrived_s.get_or_insert(now_s);
                self.last_near_s = Some(now_s);
            }
            // Progress alone does not end the wait of a driver who has not been at the pickup
            // unless they are far from it: where the route comes back the same way after the
            // pickup, a driver on the way there can be snapped onto the way back (client-sim:
            // ~12 % of Helsinki trips lost their dwell so).
            let beyond = progress_m > self.progress_m + 2.0 * config.pickup_leave_m
                && d > config.pickup_leave_m
                && (self.arrived_s.is_some() || d > PICKUP_BYPASS_M);
            let status_past = !before_pickup(status);
            if status_past && self.arrived_s.is_none() {
                self.status_early = true;
            }
            if (status_past && !self.status_early)
                || beyond
                || (self.arrived_s.is_some() && d > config.pickup_leave_m)
            {
                // Picked up (status, once there), clearly beyond it on the route, or left it.
                self.passed = true;
                if let (Some(a), Some(b)) = (self.arrived_s, self.last_near_s) {
                    dwells.record(self.place, b - a);
                }
            }
        }
        match (self.passed, self.arrived_s) {
            (true, _) => 0.0,
            (false, Some(t)) => dwells.remaining_s(self.place, now_s - t),
            (false, None) => dwells.remaining_s(self.place, 0.0),
        }
    }
}

/// A fix near the pickup counts as being there only this close to it along the route, metres
/// (generous: where the route doubles back at the pickup, snapping may put the driver on
/// either pass).
const PICKUP_ALONG_ROUTE_M: f64 = 200.0;

/// A driver who never came within `pickup_arrival_m` of the pickup has passed it (by
/// progress along the route) only this far from it, metres.
const PICKUP_BYPASS_M: f64 = 400.0;

/// The displayed ETA: `s = alpha * raw + (1 - alpha) * max(s_prev - dt, 0)` (docs/eta.md 5).
fn smooth(prev: Option<(f64, f64)>, alpha: f64, now_s: f64, raw_s: f64) -> (f64, f64) {
    let alpha = alpha.clamp(0.0, 1.0);
    match prev {
        None => (raw_s.max(0.0), now_s),
        Some((s, at)) => {
            let countdown = (s - (now_s - at).max(0.0)).max(0.0);
            (
                (alpha * raw_s + (1.0 - alpha) * countdown).max(0.0),
                at.max(now_s),
            )
        }
    }
}

/// Estimates kept per delivery until its arrival, to score them then (bounded: past this many
/// every other one is dropped and the spacing doubles).
const BAND_SAMPLES_MAX: usize = 32;
/// Fix-time spacing of the kept estimates at first, seconds.
const BAND_SAMPLE_EVERY_S: u32 = 30;

/// The estimates a delivery showed on its way, scored against its arrival (see
/// [`roadnet::EtaBand`]).
#[derive(Clone, Debug, Default)]
struct BandSamples {
    /// (fix time in Unix s, estimated seconds left).
    kept: Vec<(u32, f32)>,
    every_s: u32,
    arrived: bool,
}

impl BandSamples {
    fn keep(&mut self, now_s: f64, eta_s: f64) {
        if self.arrived {
            return;
        }
        let now = now_s as u32;
        let every = self.every_s.max(BAND_SAMPLE_EVERY_S);
        if self
            .kept
            .last()
            .is_some_and(|&(t, _)| now < t.saturating_add(every))
        {
            return;
        }
        if self.kept.len() == BAND_SAMPLES_MAX {
            let mut i = 0;
            self.kept.retain(|_| {
                i += 1;
                i % 2 == 0
            });
            self.every_s = every * 2;
        }
        self.kept.push((now, eta_s as f32));
    }

    /// The driver arrived at `now_s`: every kept estimate is scored, once.
    fn arrive(&mut self, now_s: f64, band: &mut roadnet::EtaBand) {
        if std::mem::replace(&mut self.arrived, true) {
            return;
        }
        for (t, predicted) in std::mem::take(&mut self.kept) {
            band.record(f64::from(predicted), now_s - f64::from(t));
        }
    }
}

/// Per-delivery ETA state.
#[derive(Clone, Debug, Default)]
pub struct EtaTracker {
    band_samples: BandSamples,
    planned: Option<Planned>,
    pickup: Option<PickupWait>,
    /// Displayed ETA and when (fix time, s); kept across re-routes.
    smoothed: Option<(f64, f64)>,
    /// Version of the plan whose polyline consumers were last sent.
    sent_version: u32,
    current: Option<Eta>,
    /// Where the driver was at the last fix worked out.
    worked_at: Option<LatLng>,
    seq: u64,
    last_push_ms: Option<u64>,
}

impl EtaTracker {
    /// The latest estimate (in snapshots), with the current route's polyline.
    pub fn current(&self) -> Option<Eta> {
        let mut eta = self.current.clone()?;
        eta.route_polyline = self.planned.as_ref().map(|p| p.polyline.clone());
        Some(eta)
    }

    /// Version of the plan being followed, if any (1 at dispatch, +1 per re-route). The route
    /// itself is not kept here once the engine is built: it is saved when made (`plans`).
    pub fn plan_version(&self) -> Option<u32> {
        self.planned.as_ref().map(|p| p.version)
    }

    /// Restores a plan read from redb after a restart (the smoothing starts afresh).
    pub fn restore_plan(&mut self, config: &EtaConfig, plan: StoredPlan) {
        let polyline = roadnet::polyline::encode(&plan.route.points);
        self.pickup = plan.pickup_segment.and_then(|k| {
            let at = plan.route.segments.get(k).map(|s| s.start)?;
            Some(PickupWait::new(&plan.route, k, LatLng::new(at.lat, at.lng)))
        });
        self.planned = Some(Planned {
            engine: EtaEngine::new(plan.route, None, config.engine.clone()),
            pickup_segment: plan.pickup_segment,
            version: plan.version,
            polyline,
        });
        self.sent_version = 0;
    }

    /// Updates the estimate from a fix; returns it when a push is due (at most every
    /// `push_interval_ms`, or at once when the route is new or changed).
    pub fn handle_fix(
        &mut self,
        config: &EtaConfig,
        model: &mut EtaModel,
        speeds: &SpeedModel,
        now_ms: u64,
        input: &EtaInput,
    ) -> Option<Eta> {
        // Too soon after the last fix worked out, unless the driver jumped (off the route,
        // maybe: that re-routes at once).
        let soon = self
            .current
            .as_ref()
            .is_some_and(|c| input.fix_ts_ms < c.ts_ms.saturating_add(config.min_fix_interval_ms));
        let near = self
            .worked_at
            .is_some_and(|p| haversine_m(p, input.here) <= config.engine.off_route_hold_m);
        if self.planned.is_some() && soon && near {
            return None;
        }
        self.worked_at = Some(input.here);
        let now_s = input.fix_ts_ms as f64 / 1000.0;
        let here = input.here;
        if self.planned.is_none() {
            let pickup = before_pickup(input.status).then_some(input.pickup);
            self.replan(config, model, input, pickup, false);
        }
        let (eta_s, remaining_m) = match self.planned.as_mut() {
            Some(p) => {
                let mut u = p.engine.handle_fix(now_s, here, speeds);
                if u.deviated {
                    let pickup_ahead = self.pickup.as_ref().is_some_and(|w| !w.passed);
                    let pickup =
                        (before_pickup(input.status) && pickup_ahead).then_some(input.pickup);
                    if self.replan(config, model, input, pickup, true) {
                        if let Some(p) = self.planned.as_mut() {
                            u = p.engine.handle_fix(now_s, here, speeds);
                        }
                    }
                }
                if let (Some(i), Some(p)) = (u.segment_index, self.planned.as_ref()) {
                    if u.off_route_m <= config.max_learn_offset_m
                        && input.speed_mps >= config.min_learn_speed_mps
                    {
                        // The segment the ETA reads this speed for: its speed ratio, and the
                        // live factor of its cell against what the ETA expected there.
                        if let (Some(free_mps), Some(key)) =
                            (p.engine.free_speed_mps(i), p.engine.segment_key(i))
                        {
                            if free_mps > 0.0 {
                                model.samples.push(SpeedSample::Ratio {
                                    key: *key,
                                    hour_of_week: hour_of_week(
                                        now_s,
                                        config.speed_model.utc_offset_s,
                                    ),
                                    ratio: input.speed_mps / free_mps,
                                });
                            }
                        }
                        if let (Some(expected_mps), Some(cell)) =
                            (p.engine.expected_speed_mps(i), p.engine.segment_cell(i))
                        {
                            model.samples.push(SpeedSample::Live {
                                cell,
                                now_s,
                                speed_mps: input.speed_mps,
                                expected_mps,
                            });
                        }
                    }
                }
                let dwell_s = match self.pickup.as_mut() {
                    Some(w) => w.handle_fix(
                        config,
                        model.dwell(config),
                        now_s,
                        input.here,
                        u.progress_m,
                        input.status,
                    ),
                    None => 0.0,
                };
                let raw_s = u.raw_eta_s + dwell_s;
                let next = smooth(self.smoothed, config.engine.smoothing_alpha, now_s, raw_s);
                self.smoothed = Some(next);
                (next.0, u.remaining_m)
            }
            None => self.straight_line(config, input),
        };
        let picked_up =
            !before_pickup(input.status) || self.pickup.as_ref().is_some_and(|w| w.passed);
        if picked_up && haversine_m(here, input.dropoff) <= config.dropoff_arrival_m {
            self.band_samples.arrive(now_s, &mut model.band);
        } else {
            self.band_samples.keep(now_s, eta_s);
        }
        let (eta_low_s, eta_high_s) = model.band.band(eta_s);
        self.seq += 1;
        let route_changed = self
            .planned
            .as_ref()
            .is_some_and(|p| p.version != self.sent_version);
        // Kept without the polyline (`current` adds it): copying it at every fix is waste.
        let eta = Eta {
            delivery_id: input.delivery_id,
            seq: self.seq,
            eta_s,
            eta_low_s,
            eta_high_s,
            remaining_m,
            ts_ms: input.fix_ts_ms,
            route_polyline: None,
        };
        self.current = Some(eta.clone());
        if !(self.due(config, now_ms) || route_changed) {
            return None;
        }
        self.last_push_ms = Some(now_ms);
        let mut pushed = eta;
        if route_changed {
            self.sent_version = self.planned.as_ref().map_or(0, |p| p.version);
            pushed.route_polyline = self.planned.as_ref().map(|p| p.polyline.clone());
        }
        Some(pushed)
    }

    /// Plans (or re-plans) from the fix's position; true when a route was made.
    fn replan(
        &mut self,
        config: &EtaConfig,
        model: &mut EtaModel,
        input: &EtaInput,
        pickup: Option<LatLng>,
        reroute: bool,
    ) -> bool {
        let t0 = model.elapsed();
        let Some(result) = model.plan(input.here, pickup, input.dropoff) else {
            return false;
        };
        let (route, pickup_segment) = match result {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(delivery_id = %input.delivery_id, error = %e, "no route; straight-line ETA");
                model.stats.route_failures += 1;
                return false;
            }
        };
        let polyline = roadnet::polyline::encode(&route.points);
        self.pickup = match (pickup, pickup_segment, self.pickup.take()) {
            (Some(at), Some(k), prev) => {
                let mut w = PickupWait::new(&route, k, at);
                // A re-route does not undo an arrival.
                if let Some(p) = prev {
                    w.arrived_s = p.arrived_s;
                    w.last_near_s = p.last_near_s;
                }
                Some(w)
            }
            _ => None,
        };
        let version = match self.planned.as_mut() {
            Some(p) => {
                p.engine.reroute(route.clone(), None);
                p.pickup_segment = pickup_segment;
                p.polyline = polyline;
                p.version += 1;
                p.version
            }
            None => {
                self.planned = Some(Planned {
                    engine: EtaEngine::new(route.clone(), None, config.engine.clone()),
                    pickup_segment,
                    version: 1,
                    polyline,
                });
                1
            }
        };
        if let (Some(a), Some(b)) = (t0, model.elapsed()) {
            model.stats.route_seconds.push((b - a).max(0.0));
        }
        if reroute {
            model.stats.reroutes += 1;
            tracing::debug!(delivery_id = %input.delivery_id, version, "driver left the route; re-routed");
        } else {
            model.stats.plans += 1;
        }
        model.dirty_plans.push((
            input.delivery_id,
            StoredPlan {
                route,
                pickup_segment,
                version,
            },
        ));
        true
    }

    /// Straight-line estimate at a fixed speed, smoothed in "arrival time" terms.
    fn straight_line(&self, config: &EtaConfig, input: &EtaInput) -> (f64, f64) {
        let remaining_m = if before_pickup(input.status) {
            haversine_m(input.here, input.pickup) + haversine_m(input.pickup, input.dropoff)
        } else {
            haversine_m(input.here, input.dropoff)
        };
        let raw_s = remaining_m / config.speed_mps;
        let eta_s = match &self.current {
            Some(prev) => {
                let elapsed_s = input.fix_ts_ms.saturating_sub(prev.ts_ms) as f64 / 1000.0;
                let carried = (prev.eta_s - elapsed_s).max(0.0);
                carried + config.smoothing * (raw_s - carried)
            }
            None => raw_s,
        };
        (eta_s, remaining_m)
    }

    /// While no fix arrives, keeps counting down from the last estimate: returns an ETA frame
    /// stamped `now_ms` with the elapsed time taken off, when a push is due. The stored
    /// estimate is not changed, so the next fix smooths against what was really measured.
    pub fn handle_silence(&mut self, config: &EtaConfig, now_ms: u64) -> Option<Eta> {
        let base = self.current.as_ref()?;
        if now_ms <= base.ts_ms {
            return None;
        }
        if !self.due(config, now_ms) {
            return None;
        }
        self.last_push_ms = Some(now_ms);
        self.seq += 1;
        let elapsed_s = (now_ms - base.ts_ms) as f64 / 1000.0;
        Some(Eta {
            delivery_id: base.delivery_id,
            seq: self.seq,
            eta_s: (base.eta_s - elapsed_s).max(0.0),
            eta_low_s: (base.eta_low_s - elapsed_s).max(0.0),
            eta_high_s: (base.eta_high_s - elapsed_s).max(0.0),
            remaining_m: base.remaining_m,
            ts_ms: now_ms,
            route_polyline: None,
        })
    }

    fn due(&self, config: &EtaConfig, now_ms: u64) -> bool {
        self.last_push_ms
            .is_none_or(|t| now_ms.saturating_sub(t) >= config.push_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PICKUP: LatLng = LatLng::new(60.170, 24.940);
    const DROPOFF: LatLng = LatLng::new(60.175, 24.950);
    const START: LatLng = LatLng::new(60.1665, 24.9445);
    const T0: u64 = 1_764_000_000_000;

    fn input(here: LatLng, ts_ms: u64) -> EtaInput {
        EtaInput {
            delivery_id: DeliveryId(1),
            status: DeliveryStatus::DriverAssigned,
            pickup: PICKUP,
            dropoff: DROPOFF,
            here,
            fix_ts_ms: ts_ms,
            speed_mps: 8.0,
        }
    }

    /// The Helsinki route START -> PICKUP -> DROPOFF, the pickup's segment and where the
    /// pickup is on it.
    fn route_via_pickup() -> (Route, usize, LatLng) {
        let g = RoadGraph::default_city().expect("city");
        let first = g.route(START, PICKUP).expect("leg");
        let k = first.segments.len();
        let route = Route::concat(&[first, g.route(PICKUP, DROPOFF).expect("leg")]);
        let at = route.segments[k].start;
        (route, k, LatLng::new(at.lat, at.lng))
    }

    fn helsinki() -> EtaModel {
        let g = RoadGraph::default_city().expect("embedded city loads");
        EtaModel::new(Some(Arc::new(g)))
    }

    #[test]
    fn counts_down_while_the_driver_is_silent_without_touching_the_estimate() {
        let c = EtaConfig::default();
        let mut m = EtaModel::default();
        let mut t = EtaTracker::default();
        let mut i = input(PICKUP, T0);
        i.status = DeliveryStatus::EnRoute;
        let first = t
            .handle_fix(&c, &mut m, &SpeedModel::default(), T0, &i)
            .expect("first is pushed");
        assert!(t.handle_silence(&c, T0 + 1_000).is_none(), "throttled");
        let a = t.handle_silence(&c, T0 + 40_000).expect("due");
        let b = t.handle_silence(&c, T0 + 42_000).expect("due");
        assert!((first.eta_s - a.eta_s - 40.0).abs() < 1e-6, "{a:?}");
        assert!((a.eta_s - b.eta_s - 2.0).abs() < 1e-6, "{b:?}");
        assert!(b.seq > a.seq && a.seq > first.seq);
        assert_eq!(b.ts_ms, T0 + 42_000);
        assert_eq!(t.current(), Some(first.clone()));
    }

    #[test]
    fn fixes_closer_than_the_minimum_interval_are_positions_only() {
        let c = EtaConfig::default();
        let mut m = helsinki();
        let speeds = SpeedModel::default();
        let mut t = EtaTracker::default();
        t.handle_fix(&c, &mut m, &speeds, T0, &input(START, T0))
            .expect("first is pushed");
        let route = m.take_dirty_plans().remove(0).1.route;
        let first = t.current().expect("an estimate");
        // Four fixes a second along the route: one in three is worked out.
        assert_eq!(c.min_fix_interval_ms, 750);
        let mut worked = 0;
        for k in 1..=12u64 {
            let ts = T0 + k * 250;
            let here = route.point_at(k as f64 * 2.0).expect("on the route");
            let before = t.current().map(|e| e.seq);
            t.handle_fix(&c, &mut m, &speeds, ts, &input(here, ts));
            if t.current().map(|e| e.seq) != before {
                worked += 1;
                assert_eq!((ts - T0) % 750, 0, "worked out at {ts}");
            }
        }
        assert_eq!(worked, 4);
        let last = t.current().expect("an estimate");
        assert_eq!(last.ts_ms, T0 + 3_000);
        assert!(
            last.seq == first.seq + 4 && last.eta_s < first.eta_s,
            "{last:?}"
        );
        // A fix a second apart is always worked out.
        let here = route.point_at(30.0).expect("on the route");
        t.handle_fix(&c, &mut m, &speeds, T0 + 4_000, &input(here, T0 + 4_000));
        assert_eq!(t.current().map(|e| e.ts_ms), Some(T0 + 4_000));
    }

    #[test]
    fn the_band_holds_the_estimate_and_is_learnt_from_arrivals() {
        let c = EtaConfig::default();
        let mut m = EtaModel::default();
        let speeds = SpeedModel::default();
        let trip = |m: &mut EtaModel, id: u64, t0: u64| {
            // Straight-line fallback at 8 m/s from 1 km out; the driver does 4 m/s (twice as
            // long as predicted), a fix every 10 s, arriving at the drop-off.
            let mut t = EtaTracker::default();
            let start = LatLng::new(DROPOFF.lat - 1_000.0 / 111_195.0, DROPOFF.lng);
            let mut last = None;
            for k in 0..=26u64 {
                let f = (k as f64 * 40.0 / 1_000.0).min(1.0);
                let here = LatLng::new(start.lat + f * (DROPOFF.lat - start.lat), DROPOFF.lng);
                let now = t0 + k * 10_000;
                let mut i = input(here, now);
                i.delivery_id = DeliveryId(id);
                i.status = DeliveryStatus::EnRoute;
                if let Some(e) = t.handle_fix(&c, m, &speeds, now, &i) {
                    assert!(e.eta_low_s < e.eta_high_s && e.eta_high_s >= 15.0, "{e:?}");
                    last = Some(e);
                }
            }
            (t, last.expect("frames"))
        };
        // Before any arrival: the prior (0.85x-1.3x, at least 15 s either side).
        assert_eq!(m.band.band(120.0), (102.0, 156.0));
        assert_eq!(m.band.band(40.0), (28.0, 58.0));
        let (t, _) = trip(&mut m, 1, T0);
        // The arrival scored the kept estimates, once.
        assert!(t.band_samples.arrived && t.band_samples.kept.is_empty());
        assert!(m.band.samples(120.0) + m.band.samples(60.0) > 0);
        // Many trips later the band has learnt that drivers take about twice the estimate.
        for id in 2..400 {
            trip(&mut m, id, T0 + id * 1_000_000);
        }
        let (lo, hi) = m.band.band(120.0);
        assert!(lo > 180.0 && hi > 240.0, "{lo} {hi}");
    }

    #[test]
    fn plans_on_the_road_graph_at_the_first_fix_and_sends_the_route_once() {
        let c = EtaConfig::default();
        let mut m = helsinki();
        let mut t = EtaTracker::default();
        let first = t
            .handle_fix(&c, &mut m, &SpeedModel::default(), T0, &input(START, T0))
            .expect("first is pushed");
        let poly = first
            .route_polyline
            .clone()
            .expect("the new route goes out");
        let pts = roadnet::polyline::decode(&poly).expect("valid polyline");
        assert!(pts.len() > 2, "a road route, not a straight line");
        // The route is longer than the straight line via the pickup, and the ETA holds the
        // pickup dwell.
        let straight = haversine_m(START, PICKUP) + haversine_m(PICKUP, DROPOFF);
        assert!(
            first.remaining_m > straight,
            "{} vs {straight}",
            first.remaining_m
        );
        assert!(first.eta_s > c.engine.pickup_dwell_s, "{first:?}");
        let plans = m.take_dirty_plans();
        assert_eq!(plans.len(), 1);
        assert_eq!(plans[0].1.version, 1);
        assert!(plans[0].1.pickup_segment.is_some());
        // Three seconds later, on the route: pushed (throttle passed) without the polyline.
        let p2 = plans[0].1.route.point_at(20.0).expect("point");
        let next = t
            .handle_fix(
                &c,
                &mut m,
                &SpeedModel::default(),
                T0 + 3_000,
                &input(LatLng::new(p2.lat, p2.lng), T0 + 3_000),
            )
            .expect("due");
        assert!(next.route_polyline.is_none());
        assert!(next.remaining_m < first.remaining_m);
        assert_eq!(m.take_stats().plans, 1);
    }

    #[test]
    fn a_fix_far_off_the_route_reroutes_at_once_and_pushes_the_new_route() {
        let c = EtaConfig::default();
        let mut m = helsinki();
        let mut t = EtaTracker::default();
        t.handle_fix(&c, &mut m, &SpeedModel::default(), T0, &input(START, T0))
            .expect("first");
        let before = m.take_dirty_plans().remove(0).1.route;
        // 300 ms later (throttled for a normal fix), the driver is at the road node farthest
        // from the planned route.
        let snapper = roadnet::RouteSnapper::new(&before);
        let offset = |p: roadnet::LatLng| snapper.snap(p, 0.0).map_or(0.0, |s| s.offset_m);
        let graph = m.graph().expect("graph").clone();
        let far = graph
            .nodes()
            .iter()
            .copied()
            .max_by(|a, b| offset(*a).total_cmp(&offset(*b)))
            .expect("nodes");
        assert!(
            offset(far) > 500.0,
            "test point must be off route: {}",
            offset(far)
        );
        let off = LatLng::new(far.lat, far.lng);
        let eta = t
            .handle_fix(
                &c,
                &mut m,
                &SpeedModel::default(),
                T0 + 300,
                &input(off, T0 + 300),
            )
            .expect("a re-route is pushed even when throttled");
        let poly = eta.route_polyline.expect("with the new route");
        let pts = roadnet::polyline::decode(&poly).expect("polyline");
        let start = pts[0];
        assert!(
            roadnet::haversine_m(start, far) < 1.0,
            "new route starts where the driver is: {start:?} vs {far:?}"
        );
        let stats = m.take_stats();
        assert_eq!(stats.reroutes, 1);
        let plans = m.take_dirty_plans();
        assert_eq!(plans.last().map(|p| p.1.version), Some(2));
        assert_eq!(t.plan_version(), Some(2));
    }

    #[test]
    fn the_dwell_counts_down_from_arrival_and_ends_when_the_driver_leaves_the_pickup() {
        let c = EtaConfig::default();
        let (route, k, at) = route_via_pickup();
        let mut w = PickupWait::new(&route, k, at);
        let mut d = DwellModel::new(c.dwell.clone());
        let assigned = DeliveryStatus::DriverAssigned;
        let far = LatLng::new(at.lat + 0.002, at.lng); // ~220 m north
        assert_eq!(w.handle_fix(&c, &mut d, 0.0, far, 0.0, assigned), 120.0);
        // 10 m away: arrived; 30 s later 90 s are left, whatever progress snapping reports.
        let near = LatLng::new(at.lat + 0.00009, at.lng);
        let p = w.progress_m + 60.0;
        assert_eq!(w.handle_fix(&c, &mut d, 100.0, near, p, assigned), 120.0);
        assert_eq!(w.handle_fix(&c, &mut d, 130.0, at, p, assigned), 90.0);
        // Leaving: more than 80 m away, no dwell any more; the wait (100 to 130 s) is learnt.
        assert_eq!(w.handle_fix(&c, &mut d, 140.0, far, p, assigned), 0.0);
        assert_eq!(d.samples(), 1.0);
        let p = w.progress_m;
        assert_eq!(
            w.handle_fix(&c, &mut d, 141.0, at, p, assigned),
            0.0,
            "sticky"
        );
        assert_eq!(d.samples(), 1.0, "learnt once");
        // A status past the pickup ends the dwell too, once the driver has been there.
        let mut w2 = PickupWait::new(&route, k, at);
        let picked = DeliveryStatus::PickedUp;
        let pk = w2.progress_m;
        assert_eq!(w2.handle_fix(&c, &mut d, 0.0, at, pk, assigned), 120.0);
        assert_eq!(w2.handle_fix(&c, &mut d, 30.0, at, pk, picked), 0.0);
        // Before that (a geofence crossed on the way there) it does not: the driver still has
        // the wait ahead, which ends when they leave the pickup.
        let mut w3 = PickupWait::new(&route, k, at);
        assert_eq!(w3.handle_fix(&c, &mut d, 0.0, far, 0.0, picked), 120.0);
        w3.handle_fix(&c, &mut d, 10.0, at, pk, picked);
        assert_eq!(w3.handle_fix(&c, &mut d, 40.0, at, pk, picked), 90.0);
        assert_eq!(w3.handle_fix(&c, &mut d, 50.0, far, pk, picked), 0.0);
    }

    #[test]
    fn driving_past_the_pickup_on_the_way_there_neither_starts_nor_ends_the_wait() {
        let c = EtaConfig::default();
        let (route, k, at) = route_via_pickup();
        let mut w = PickupWait::new(&route, k, at);
        let mut d = DwellModel::new(c.dwell.clone());
        let assigned = DeliveryStatus::DriverAssigned;
        let near = LatLng::new(at.lat + 0.0003, at.lng); // ~33 m away
        let far = LatLng::new(at.lat + 0.002, at.lng); // ~220 m away

        // A loop of the route passes 33 m from the pickup 600 m before reaching it, then
        // leads away (the snapped progress says where the driver is on the route).
        let before = (w.progress_m - 600.0).max(0.0);
        assert_eq!(w.handle_fix(&c, &mut d, 0.0, near, before, assigned), 120.0);
        assert_eq!(
            w.handle_fix(&c, &mut d, 20.0, far, before + 150.0, assigned),
            120.0
        );
        assert!(w.arrived_s.is_none() && !w.passed);
        // Snapped onto a pass of the route beyond the pickup while still 220 m from it and
        // never there: not passed.
        let beyond = w.progress_m + 300.0;
        assert_eq!(w.handle_fix(&c, &mut d, 30.0, far, beyond, assigned), 120.0);
        // Really there: the countdown starts.
        let pk = w.progress_m;
        w.handle_fix(&c, &mut d, 40.0, at, pk, assigned);
        assert_eq!(w.handle_fix(&c, &mut d, 70.0, at, pk, assigned), 90.0);
    }

    #[test]
    fn the_dwell_ahead_is_learnt_from_the_hubs_own_pickups() {
        let c = EtaConfig::default();
        let (route, k, at) = route_via_pickup();
        let far = LatLng::new(at.lat + 0.002, at.lng);
        let assigned = DeliveryStatus::DriverAssigned;
        let mut d = DwellModel::new(c.dwell.clone());
        // Forty pickups here where drivers waited 200 s each (first to last fix nearby).
        let pk = PickupWait::new(&route, k, at).progress_m;
        for _ in 0..40 {
            let mut w = PickupWait::new(&route, k, at);
            w.handle_fix(&c, &mut d, 0.0, at, pk, assigned);
            w.handle_fix(&c, &mut d, 200.0, at, pk, assigned);
            w.handle_fix(&c, &mut d, 210.0, far, pk, assigned);
        }
        let mut w = PickupWait::new(&route, k, at);
        let ahead = w.handle_fix(&c, &mut d, 0.0, far, 0.0, assigned);
        assert!((195.0..=205.0).contains(&ahead), "{ahead}");
        w.handle_fix(&c, &mut d, 10.0, at, pk, assigned);
        // 150 s into the wait: ~50 s left, where the 120 s prior would say none.
        let left = w.handle_fix(&c, &mut d, 160.0, at, pk, assigned);
        assert!((45.0..=55.0).contains(&left), "{left}");
    }

    #[test]
    fn displayed_eta_is_an_ema_of_raw_and_the_counted_down_previous_value() {
        let first = smooth(None, 0.3, 100.0, 178.23);
        assert_eq!(first, (178.23, 100.0));
        // docs/eta.md worked example: 4 s later raw 171.56 -> 0.3 x 171.56 + 0.7 x 174.23.
        let (s, at) = smooth(Some(first), 0.3, 104.0, 171.56);
        assert!((s - 173.43).abs() < 0.01, "{s}");
        assert_eq!(at, 104.0);
    }

    #[test]
    fn learns_moving_fixes_only() {
        let c = EtaConfig::default();
        let mut m = EtaModel::default();
        let moving = Fix::from_units(1, T0, PICKUP.lat, PICKUP.lng, 0.0, 7.0, 5.0);
        let parked = Fix::from_units(2, T0, PICKUP.lat, PICKUP.lng, 0.0, 0.2, 5.0);
        m.observe_fix(&c, &moving);
        m.observe_fix(&c, &parked);
        let mut speeds = SpeedModel::default();
        speeds.apply(&m.take_samples());
        let rows = speeds.export_historical();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].3, 1);
        assert!((rows[0].2 - 7.0).abs() < 0.01);
    }
}
