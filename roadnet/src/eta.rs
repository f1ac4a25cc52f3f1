//! The per-delivery ETA state machine (sans-IO): fed GPS fixes and clock ticks, it returns the
//! remaining time, smoothed for display, and flags deviations that need a re-route.

use serde::{Deserialize, Serialize};

use crate::geo::{haversine_m, LatLng};
use crate::route::Route;
use crate::snap::{RouteSnapper, SnapConfig};
use crate::speed::{hour_of_week, SegmentKey, SpeedModel};

/// Speeds below this are treated as this when dividing (a cell learnt while stopped), in m/s.
const MIN_SPEED_MPS: f64 = 1.0;

/// How long the per-run driving times are reused before the speed model is read again, in
/// seconds of fix time.
const RUN_TIMES_REFRESH_S: f64 = 30.0;

/// Tuning of the [`EtaEngine`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EtaConfig {
    /// Time spent at the pickup, added until the pickup is passed, in seconds.
    pub pickup_dwell_s: f64,
    /// Within this distance along the route of the pickup the driver is at the pickup and the
    /// dwell counts down; beyond it the pickup is passed, in metres.
    pub pickup_arrival_radius_m: f64,
    /// Weight of the new raw ETA in the displayed (smoothed) ETA, 0..=1.
    pub smoothing_alpha: f64,
    /// A fix farther than this from the route means the driver left it, in metres.
    pub deviation_threshold_m: f64,
    /// A fix farther than this from the route (but not yet a deviation) does not move
    /// progress: the nearest point of the route may be far ahead of a driver who took a wrong
    /// turn. The time to get back to the route (the distance to it at the expected speed
    /// there) is added instead, in metres.
    pub off_route_hold_m: f64,
    /// Local offset from UTC used for the hour of week, in seconds.
    pub utc_offset_s: i32,
    /// Snapping tuning.
    pub snap: SnapConfig,
}

impl Default for EtaConfig {
    fn default() -> Self {
        Self {
            pickup_dwell_s: 120.0,
            pickup_arrival_radius_m: 30.0,
            smoothing_alpha: 0.3,
            deviation_threshold_m: 500.0,
            off_route_hold_m: 100.0,
            utc_offset_s: 0,
            snap: SnapConfig::default(),
        }
    }
}

/// What one fix (or tick) tells the consumer.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EtaUpdate {
    /// Remaining time from the model alone, in seconds.
    pub raw_eta_s: f64,
    /// Remaining time to display: EMA of raw ETAs with a running countdown, in seconds.
    pub smoothed_eta_s: f64,
    /// Distance left along the route, in metres.
    pub remaining_m: f64,
    /// Distance along the route to the driver's snapped position, in metres.
    pub progress_m: f64,
    /// Distance from the fix to the route, in metres.
    pub off_route_m: f64,
    /// The fix is farther than `deviation_threshold_m` from the route: re-route and call
    /// [`EtaEngine::reroute`]. Progress is not moved by such a fix.
    pub deviated: bool,
    /// The driver has passed the pickup (or the plan has none).
    pub pickup_passed: bool,
    /// Segment the driver is on, if the route has any.
    pub segment_index: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Smoothed {
    eta_s: f64,
    at_s: f64,
}

/// ETA for one delivery. Build it at dispatch from the planned route. It keeps what it needs
/// of the route compactly (the snapper's projected vertices, a free speed and a [`SegmentKey`]
/// per segment), not the [`Route`] itself: a hub holds one per active delivery.
#[derive(Debug, Clone)]
pub struct EtaEngine {
    config: EtaConfig,
    snapper: RouteSnapper,
    /// Free-flow speed of each segment, m/s.
    free_speed_mps: Vec<f32>,
    /// Where each segment's speed is learnt.
    keys: Vec<SegmentKey>,
    /// Expected speed of each segment (before the live factor) as of `times_at`, each read for
    /// the hour of week the driver is expected to reach it, m/s.
    expected_mps: Vec<f32>,
    /// Driving time from the start of each segment to the end of the route, as of `times_at`
    /// (fix time, s): a fix adds only its own segment's part. Refreshed every
    /// [`RUN_TIMES_REFRESH_S`] and when the hour changes, so speeds learnt in the meantime
    /// reach the ETA within that.
    suffix_s: Vec<f32>,
    times_at: Option<(f64, u8)>,
    length_m: f64,
    pickup_progress_m: Option<f64>,
    arrived_at_pickup_s: Option<f64>,
    /// Sticky: once the pickup is behind, snapping noise does not bring the dwell back.
    pickup_passed: bool,
    progress_m: f64,
    smoothed: Option<Smoothed>,
}

impl EtaEngine {
    /// An engine for `route`, whose pickup is at the start of segment `pickup_segment` (use the
    /// first leg's segment count after [`Route::concat`]); `None` when there is no pickup ahead.
    pub fn new(route: Route, pickup_segment: Option<usize>, config: EtaConfig) -> Self {
        let snapper = RouteSnapper::with_config(&route, config.snap.clone());
        let mut engine = Self {
            config,
            free_speed_mps: Vec::new(),
            keys: Vec::new(),
            expected_mps: Vec::new(),
            suffix_s: Vec::new(),
            times_at: None,
            length_m: 0.0,
            pickup_progress_m: None,
            arrived_at_pickup_s: None,
            pickup_passed: false,
            progress_m: 0.0,
            smoothed: None,
            snapper,
        };
        engine.set_route_state(&route, pickup_segment);
        engine
    }

    fn set_route_state(&mut self, route: &Route, pickup_segment: Option<usize>) {
        self.free_speed_mps = route
            .segments
            .iter()
            .map(|s| s.free_speed_mps as f32)
            .collect();
        self.keys = route
            .segments
            .iter()
            .map(|s| SegmentKey::of(s.start, s.end, s.class))
            .collect();
        self.expected_mps.clear();
        self.suffix_s.clear();
        self.times_at = None;
        self.length_m = route.length_m;
        self.pickup_progress_m = pickup_segment.map(|k| {
            route
                .segments
                .get(k)
                .map_or(route.length_m, |s| s.cum_start_m)
        });
        self.pickup_passed = self.pickup_progress_m.is_none();
        if self.pickup_passed {
            self.arrived_at_pickup_s = None;
        }
        self.progress_m = 0.0;
    }

    /// Replace the route after a deviation, keeping the smoothing state so the displayed ETA
    /// does not jump. `pickup_segment` is as in [`EtaEngine::new`] for the new route.
    pub fn reroute(&mut self, route: Route, pickup_segment: Option<usize>) {
        self.snapper = RouteSnapper::with_config(&route, self.config.snap.clone());
        self.set_route_state(&route, pickup_segment);
    }

    /// Length of the route being followed, in metres.
    pub fn length_m(&self) -> f64 {
        self.length_m
    }

    /// Number of segments of the route being followed.
    pub fn segments(&self) -> usize {
        self.free_speed_mps.len()
    }

    /// The H3 cell (resolution 9) segment `i` of the route is counted in.
    pub fn segment_cell(&self, i: usize) -> Option<u64> {
        self.keys.get(i).map(|k| k.cell).filter(|c| *c != 0)
    }

    /// Where segment `i`'s speed is learnt.
    pub fn segment_key(&self, i: usize) -> Option<&SegmentKey> {
        self.keys.get(i)
    }

    /// The speed the ETA expects on segment `i` before the live factor (as of the last refresh;
    /// the free speed before the first fix), m/s.
    pub fn expected_speed_mps(&self, i: usize) -> Option<f64> {
        self.expected_mps
            .get(i)
            .or(self.free_speed_mps.get(i))
            .map(|v| f64::from(*v))
    }

    /// Free-flow speed of segment `i` of the route being followed, m/s.
    pub fn free_speed_mps(&self, i: usize) -> Option<f64> {
        self.free_speed_mps.get(i).map(|v| f64::from(*v))
    }

    /// The configuration.
    pub fn config(&self) -> &EtaConfig {
        &self.config
    }

    /// Progress along the route after the last fix, in metres.
    pub fn progress_m(&self) -> f64 {
        self.progress_m
    }

    /// True once the pickup is behind the driver (or when the plan has none).
    pub fn pickup_passed(&self) -> bool {
        self.pickup_passed
    }

    /// The displayed ETA as of the last fix or tick, if any fix arrived yet.
    pub fn smoothed_eta_s(&self) -> Option<f64> {
        self.smoothed.map(|s| s.eta_s)
    }

    /// Handle a GPS fix taken at `now_s` (Unix seconds).
    pub fn handle_fix(&mut self, now_s: f64, pos: LatLng, model: &SpeedModel) -> EtaUpdate {
        self.refresh_run_times(now_s, model);
        let snap = self.snapper.snap(pos, self.progress_m);
        let off_route_m = match (&snap, self.snapper.start()) {
            (Some(s), _) => s.offset_m,
            (None, Some(only)) => haversine_m(pos, only),
            (None, None) => 0.0,
        };
        let deviated = off_route_m > self.config.deviation_threshold_m;
        let off_route = off_route_m > self.config.off_route_hold_m;
        if let (Some(s), false) = (&snap, off_route) {
            self.progress_m = s.progress_m;
        }
        let segment_index = match (&snap, off_route) {
            (Some(s), false) => Some(s.segment_index),
            _ => self.snapper.segment_at(self.progress_m),
        };
        let pickup_passed = self.update_pickup(now_s);
        let dwell_s = if pickup_passed {
            0.0
        } else {
            let waited_s = self
                .arrived_at_pickup_s
                .map_or(0.0, |t| (now_s - t).max(0.0));
            (self.config.pickup_dwell_s - waited_s).max(0.0)
        };
        let back_s = if off_route && !deviated {
            let v = segment_index
                .and_then(|i| self.expected_mps.get(i).copied())
                .map_or(MIN_SPEED_MPS, f64::from);
            off_route_m / v.max(MIN_SPEED_MPS)
        } else {
            0.0
        };
        let raw_eta_s = self.driving_time_s(segment_index) + back_s + dwell_s;
        let smoothed_eta_s = self.smooth(now_s, raw_eta_s);
        EtaUpdate {
            raw_eta_s,
            smoothed_eta_s,
            remaining_m: (self.length_m - self.progress_m).max(0.0),
            progress_m: self.progress_m,
            off_route_m,
            deviated,
            pickup_passed,
            segment_index,
        }
    }

    /// Advance the displayed ETA to `now_s` when no fix arrived: a pure countdown. Returns the
    /// displayed ETA, or `None` before the first fix.
    pub fn tick(&mut self, now_s: f64) -> Option<f64> {
        let prev = self.smoothed.as_mut()?;
        let dt = (now_s - prev.at_s).max(0.0);
        prev.eta_s = (prev.eta_s - dt).max(0.0);
        prev.at_s = prev.at_s.max(now_s);
        Some(prev.eta_s)
    }

    fn update_pickup(&mut self, now_s: f64) -> bool {
        let Some(pickup_m) = self.pickup_progress_m else {
            return true;
        };
        if self.pickup_passed {
            return true;
        }
        let r = self.config.pickup_arrival_radius_m;
        if self.progress_m > pickup_m + r {
            self.pickup_passed = true;
            return true;
        }
        if self.progress_m >= pickup_m - r && self.arrived_at_pickup_s.is_none() {
            self.arrived_at_pickup_s = Some(now_s);
        }
        false
    }

    /// s = alpha * raw + (1 - alpha) * max(s_prev - dt, 0).
    fn smooth(&mut self, now_s: f64, raw_eta_s: f64) -> f64 {
        let alpha = self.config.smoothing_alpha.clamp(0.0, 1.0);
        let next = match self.smoothed {
            None => Smoothed {
                eta_s: raw_eta_s,
                at_s: now_s,
            },
            Some(prev) => {
                let countdown = (prev.eta_s - (now_s - prev.at_s).max(0.0)).max(0.0);
                Smoothed {
                    eta_s: (alpha * raw_eta_s + (1.0 - alpha) * countdown).max(0.0),
                    at_s: prev.at_s.max(now_s),
                }
            }
        };
        self.smoothed = Some(next);
        next.eta_s
    }

    /// Recomputes the expected speed of every segment from the driver's on and the driving
    /// time from each to the end when due. Each segment ahead is read for the hour of week the driver is expected to
    /// reach it (the time so far along the remaining route, plus the pickup dwell once past
    /// the pickup).
    fn refresh_run_times(&mut self, now_s: f64, model: &SpeedModel) {
        let hour = hour_of_week(now_s, self.config.utc_offset_s);
        let due = match self.times_at {
            None => true,
            Some((at, h)) => h != hour || !(0.0..RUN_TIMES_REFRESH_S).contains(&(now_s - at)),
        };
        if !due {
            return;
        }
        let n = self.free_speed_mps.len();
        let here = self.snapper.segment_at(self.progress_m).unwrap_or(0).min(n);
        let pickup_segment = self
            .pickup_progress_m
            .filter(|_| !self.pickup_passed)
            .and_then(|m| self.snapper.segment_at(m));
        // Only the segments from the driver's on are read again (the speed model lookups are
        // the cost); those behind keep their times, in case snapping noise puts the driver
        // back on one. The first refresh of a route reads them all.
        let first = if self.suffix_s.len() == n + 1 && self.expected_mps.len() == n {
            here
        } else {
            self.expected_mps.clear();
            self.expected_mps.resize(n, 0.0);
            self.suffix_s.clear();
            self.suffix_s.resize(n + 1, 0.0);
            0
        };
        let old_first = self.suffix_s[first];
        let mut ahead_s = 0.0;
        let mut cell_live: Option<(u64, f64)> = None;
        for i in first..n {
            if i >= here && Some(i) == pickup_segment {
                ahead_s += self.config.pickup_dwell_s;
            }
            let at_hour = if i > here {
                hour_of_week(now_s + ahead_s, self.config.utc_offset_s)
            } else {
                hour
            };
            let key = &self.keys[i];
            let free = f64::from(self.free_speed_mps[i]);
            let expected = model.segment_speed_mps(key, at_hour, free);
            let live = match cell_live {
                Some((c, f)) if c == key.cell => f,
                _ => {
                    let f = if key.cell == 0 {
                        1.0
                    } else {
                        model.live_factor(key.cell, now_s)
                    };
                    cell_live = Some((key.cell, f));
                    f
                }
            };
            self.expected_mps[i] = expected as f32;
            let len = self.snapper.span(i).map_or(0.0, |(_, l)| l);
            let t = len / (expected * live).max(MIN_SPEED_MPS);
            // The segment's own time for now; summed from the end below.
            self.suffix_s[i] = t as f32;
            if i >= here {
                ahead_s += t;
            }
        }
        self.suffix_s[n] = 0.0;
        for i in (first..n).rev() {
            self.suffix_s[i] += self.suffix_s[i + 1];
        }
        // The segments behind keep their own times: their suffix moves by what changed ahead.
        let delta = self.suffix_s[first] - old_first;
        for t in &mut self.suffix_s[..first] {
            *t += delta;
        }
        self.times_at = Some((now_s, hour));
    }

    /// Driving time from the current progress to the end of the route, in seconds: the rest
    /// of the current segment, then the refreshed times of the segments after it.
    fn driving_time_s(&self, segment_index: Option<usize>) -> f64 {
        let Some(i) = segment_index else {
            return 0.0;
        };
        let Some((cum, len)) = self.snapper.span(i) else {
            return 0.0;
        };
        let whole = |k: usize| {
            f64::from(self.suffix_s.get(k).copied().unwrap_or(0.0))
                - f64::from(self.suffix_s.get(k + 1).copied().unwrap_or(0.0))
        };
        let left = if len > 0.0 {
            ((cum + len - self.progress_m) / len).clamp(0.0, 1.0)
        } else {
            0.0
        };
        left * whole(i) + f64::from(self.suffix_s.get(i + 1).copied().unwrap_or(0.0))
    }
}
