//! Sans-IO plausibility filter for driver fixes: ranges, accuracy, speed, clocks, ordering, rate.
//!
//! [`FixFilter`] keeps a little state per driver (last sequence number and timestamp, last
//! accepted position, a token bucket) and answers `check(driver, fix, now_ms)` with the reason
//! a fix is turned away. It never reads a clock: `now_ms` is the edge's receive time.

use protocol::geo::{haversine_m, LatLng};
use protocol::reject::RejectReason;
use protocol::wire::Fix;
use protocol::DriverId;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Drivers not heard from for this long are forgotten by [`FixFilter::evict_idle`].
pub const IDLE_EVICT_MS: u64 = 2 * 3600 * 1000;

/// Limits of the fix filter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilterConfig {
    /// Fixes with a worse (larger) horizontal accuracy are rejected, metres; 0 (unknown) passes.
    pub max_accuracy_m: f64,
    /// Fixes reporting, or implying from the previous accepted fix, a faster speed are rejected, km/h.
    pub max_speed_kmh: f64,
    /// How far a fix's timestamp may be ahead of the edge clock, seconds.
    pub max_future_skew_s: u64,
    /// How far a fix's timestamp may be behind the edge clock, seconds.
    pub max_age_s: u64,
    /// Sustained fixes per second per driver (token bucket refilled in driver time, see `check`).
    pub rate_limit_per_s: f64,
    /// Fixes a driver may send at once beyond the sustained rate (bucket size).
    pub rate_limit_burst: f64,
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            max_accuracy_m: 100.0,
            max_speed_kmh: 200.0,
            max_future_skew_s: 10,
            max_age_s: 120,
            rate_limit_per_s: 4.0,
            rate_limit_burst: 20.0,
        }
    }
}

/// The last accepted fix of a driver, for the implied-speed check.
#[derive(Clone, Copy, Debug)]
struct LastFix {
    pos: LatLng,
    accuracy_m: f64,
    ts_ms: u64,
}

#[derive(Clone, Debug)]
struct DriverState {
    /// Highest sequence number accepted in the current session (0 = none yet).
    last_seq: u32,
    /// Timestamp of the newest accepted fix (any session).
    last_ts_ms: u64,
    last_fix: Option<LastFix>,
    tokens: f64,
    /// Driver time (fix timestamp) the bucket was last refilled at.
    bucket_ts_ms: u64,
    /// Edge time this driver was last seen.
    last_seen_ms: u64,
}

/// Per-driver plausibility filter (sans-IO).
#[derive(Debug)]
pub struct FixFilter {
    cfg: FilterConfig,
    max_speed_mps: f64,
    drivers: HashMap<DriverId, DriverState>,
}

impl FixFilter {
    pub fn new(cfg: FilterConfig) -> Self {
        let max_speed_mps = cfg.max_speed_kmh / 3.6;
        Self {
            cfg,
            max_speed_mps,
            drivers: HashMap::new(),
        }
    }

    /// Drivers with state.
    pub fn tracked_drivers(&self) -> usize {
        self.drivers.len()
    }

    /// A new session of `driver` began: its sequence numbers start again at 1. The timestamp
    /// order and the last accepted position are kept.
    pub fn handle_session_start(&mut self, driver: DriverId) {
        if let Some(s) = self.drivers.get_mut(&driver) {
            s.last_seq = 0;
        }
    }

    /// Decides on one fix; on `Ok` the fix is accepted and the driver's state advanced.
    ///
    /// Order of checks: coordinates, accuracy, reported speed, future / stale timestamp,
    /// duplicate / out-of-order, implied speed, rate limit. The rate limit comes last so that
    /// fixes rejected for another reason do not use up the driver's budget.
    ///
    /// The token bucket refills in *driver time* (the fixes' timestamps), not edge time: a
    /// phone that sends a backlog after a tunnel (up to 48 fixes in one datagram) is not
    /// punished, while a flood is still bounded because timestamps must increase and stay
    /// within `[now - max_age, now + skew]`.
    pub fn check(&mut self, driver: DriverId, fix: &Fix, now_ms: u64) -> Result<(), RejectReason> {
        let pos = fix.position();
        if !pos.is_valid() {
            return Err(RejectReason::Coordinates);
        }
        let accuracy_m = fix.accuracy_m();
        if accuracy_m > self.cfg.max_accuracy_m {
            return Err(RejectReason::Accuracy);
        }
        if fix.speed_mps() > self.max_speed_mps {
            return Err(RejectReason::Speed);
        }
        if fix.ts_ms > now_ms.saturating_add(self.cfg.max_future_skew_s * 1000) {
            return Err(RejectReason::FutureTimestamp);
        }
        if fix.ts_ms < now_ms.saturating_sub(self.cfg.max_age_s * 1000) {
            return Err(RejectReason::StaleTimestamp);
        }
        let burst = self.cfg.rate_limit_burst;
        let state = self.drivers.entry(driver).or_insert_with(|| DriverState {
            last_seq: 0,
            last_ts_ms: 0,
            last_fix: None,
            tokens: burst,
            bucket_ts_ms: fix.ts_ms,
            last_seen_ms: now_ms,
        });
        state.last_seen_ms = now_ms;
        if fix.seq == 0 {
            if fix.ts_ms <= state.last_ts_ms {
                return Err(RejectReason::OutOfOrder);
            }
        } else if fix.seq == state.last_seq {
            return Err(RejectReason::Duplicate);
        } else if fix.seq < state.last_seq {
            return Err(RejectReason::OutOfOrder);
        }
        if let Some(last) = state.last_fix {
            if fix.ts_ms >= last.ts_ms + 1000 {
                let dt_s = (fix.ts_ms - last.ts_ms) as f64 / 1000.0;
                let jump_m = haversine_m(last.pos, pos) - last.accuracy_m - accuracy_m;
                if jump_m > 0.0 && jump_m / dt_s > self.max_speed_mps {
                    return Err(RejectReason::Speed);
                }
            }
        }
        if fix.ts_ms > state.bucket_ts_ms {
            let refill =
                (fix.ts_ms - state.bucket_ts_ms) as f64 / 1000.0 * self.cfg.rate_limit_per_s;
            state.tokens = (state.tokens + refill).min(burst);
            state.bucket_ts_ms = fix.ts_ms;
        }
        if state.tokens < 1.0 {
            return Err(RejectReason::RateLimited);
        }
        state.tokens -= 1.0;
        if fix.seq != 0 {
            state.last_seq = fix.seq;
        }
        state.last_ts_ms = state.last_ts_ms.max(fix.ts_ms);
        let newer = state.last_fix.is_none_or(|l| fix.ts_ms >= l.ts_ms);
        if newer {
            state.last_fix = Some(LastFix {
                pos,
                accuracy_m,
                ts_ms: fix.ts_ms,
            });
        }
        Ok(())
    }

    /// Forgets drivers not seen for [`IDLE_EVICT_MS`]; returns how many were dropped.
    pub fn evict_idle(&mut self, now_ms: u64) -> usize {
        let before = self.drivers.len();
        self.drivers
            .retain(|_, s| now_ms.saturating_sub(s.last_seen_ms) < IDLE_EVICT_MS);
        before - self.drivers.len()
    }
}

/// Why a fix reported as JSON (the HTTP fallback) is impossible before it is converted to a
/// [`Fix`]: the wire format cannot even carry these values (a negative accuracy would become
/// 0, "unknown", and pass), the JSON can.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JsonReject {
    /// A negative horizontal accuracy.
    NegativeAccuracy,
}

impl JsonReject {
    pub const ALL: [JsonReject; 1] = [JsonReject::NegativeAccuracy];

    /// The `reason` label (in `edge_fixes_rejected_total` and the HTTP answer).
    pub fn as_str(self) -> &'static str {
        match self {
            JsonReject::NegativeAccuracy => "negative_accuracy",
        }
    }
}

/// Checks the values of a JSON fix that its conversion to a [`Fix`] would hide; the rest is
/// [`FixFilter::check`]'s job, after conversion.
pub fn check_json_fix(fix: &protocol::api::JsonFix) -> Result<(), JsonReject> {
    if fix.accuracy < 0.0 {
        return Err(JsonReject::NegativeAccuracy);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::geo::destination;

    const NOW: u64 = 1_764_000_000_000;
    const D: DriverId = DriverId(42);

    fn filter() -> FixFilter {
        FixFilter::new(FilterConfig::default())
    }

    fn fix(seq: u32, ts_ms: u64, pos: LatLng) -> Fix {
        Fix::from_units(seq, ts_ms, pos.lat, pos.lng, 90.0, 10.0, 5.0)
    }

    fn start() -> LatLng {
        LatLng::new(60.1699, 24.9384)
    }

    #[test]
    fn accepts_a_normal_one_hertz_track() {
        let mut f = filter();
        let mut pos = start();
        for i in 1..=300u32 {
            let ts = NOW + u64::from(i) * 1000;
            pos = destination(pos, 90.0, 12.0); // 43 km/h
            assert_eq!(f.check(D, &fix(i, ts, pos), ts + 150), Ok(()), "fix {i}");
        }
    }

    #[test]
    fn rejects_out_of_range_coordinates() {
        let mut f = filter();
        assert_eq!(
            f.check(D, &fix(1, NOW, LatLng::new(91.0, 0.0)), NOW),
            Err(RejectReason::Coordinates)
        );
        assert_eq!(
            f.check(D, &fix(1, NOW, LatLng::new(0.0, 181.0)), NOW),
            Err(RejectReason::Coordinates)
        );
    }

    #[test]
    fn rejects_accuracy_worse_than_100_m_but_passes_unknown_accuracy() {
        let mut f = filter();
        let p = start();
        let bad = Fix::from_units(1, NOW, p.lat, p.lng, 0.0, 1.0, 150.0);
        assert_eq!(f.check(D, &bad, NOW), Err(RejectReason::Accuracy));
        let unknown = Fix::from_units(2, NOW, p.lat, p.lng, 0.0, 1.0, 0.0);
        assert_eq!(f.check(D, &unknown, NOW), Ok(()));
    }

    #[test]
    fn rejects_a_json_fix_with_negative_accuracy_but_not_unknown_accuracy() {
        let json = |accuracy| protocol::api::JsonFix {
            seq: 1,
            lat: 60.17,
            lng: 24.94,
            heading: 0.0,
            speed: 1.0,
            accuracy,
            timestamp: NOW,
        };
        assert_eq!(
            check_json_fix(&json(-3.0)),
            Err(JsonReject::NegativeAccuracy)
        );
        assert_eq!(check_json_fix(&json(0.0)), Ok(()));
        assert_eq!(check_json_fix(&json(12.5)), Ok(()));
        // What the check prevents: converted, -3 m would read as "unknown" and pass.
        let converted = json(-3.0).to_fix();
        assert_eq!(converted.accuracy_dm, 0);
        assert_eq!(filter().check(D, &converted, NOW), Ok(()));
    }

    #[test]
    fn rejects_fix_reporting_faster_than_200_kmh() {
        let mut f = filter();
        let p = start();
        let fast = Fix::from_units(1, NOW, p.lat, p.lng, 0.0, 210.0 / 3.6, 5.0);
        assert_eq!(f.check(D, &fast, NOW), Err(RejectReason::Speed));
    }

    #[test]
    fn rejects_fix_implying_faster_than_200_kmh_from_the_last_accepted() {
        let mut f = filter();
        assert_eq!(f.check(D, &fix(1, NOW, start()), NOW), Ok(()));
        // 1 km in 10 s = 360 km/h.
        let far = destination(start(), 0.0, 1000.0);
        assert_eq!(
            f.check(D, &fix(2, NOW + 10_000, far), NOW + 10_000),
            Err(RejectReason::Speed)
        );
        // The same jump within the two accuracies is not held against the driver.
        let near = destination(start(), 0.0, 9.0);
        assert_eq!(
            f.check(D, &fix(3, NOW + 10_000, near), NOW + 10_000),
            Ok(())
        );
    }

    #[test]
    fn rejects_timestamps_in_the_future_or_too_old() {
        let mut f = filter();
        assert_eq!(
            f.check(D, &fix(1, NOW + 11_000, start()), NOW),
            Err(RejectReason::FutureTimestamp)
        );
        assert_eq!(
            f.check(D, &fix(1, NOW - 121_000, start()), NOW),
            Err(RejectReason::StaleTimestamp)
        );
        assert_eq!(f.check(D, &fix(1, NOW + 9_000, start()), NOW), Ok(()));
    }

    #[test]
    fn rejects_duplicate_and_out_of_order_sequence_numbers() {
        let mut f = filter();
        assert_eq!(f.check(D, &fix(5, NOW, start()), NOW), Ok(()));
        assert_eq!(
            f.check(D, &fix(5, NOW + 1000, start()), NOW),
            Err(RejectReason::Duplicate)
        );
        assert_eq!(
            f.check(D, &fix(4, NOW + 1000, start()), NOW),
            Err(RejectReason::OutOfOrder)
        );
        assert_eq!(f.check(D, &fix(6, NOW + 1000, start()), NOW + 1000), Ok(()));
        // Another driver has its own sequence space.
        assert_eq!(f.check(DriverId(7), &fix(1, NOW, start()), NOW), Ok(()));
    }

    #[test]
    fn orders_unsequenced_fixes_by_timestamp() {
        let mut f = filter();
        assert_eq!(f.check(D, &fix(0, NOW, start()), NOW), Ok(()));
        assert_eq!(
            f.check(D, &fix(0, NOW, start()), NOW),
            Err(RejectReason::OutOfOrder)
        );
        assert_eq!(
            f.check(D, &fix(0, NOW - 1, start()), NOW),
            Err(RejectReason::OutOfOrder)
        );
        assert_eq!(f.check(D, &fix(0, NOW + 1, start()), NOW), Ok(()));
    }

    #[test]
    fn a_new_session_restarts_sequence_numbers() {
        let mut f = filter();
        assert_eq!(f.check(D, &fix(100, NOW, start()), NOW), Ok(()));
        assert_eq!(
            f.check(D, &fix(1, NOW + 1000, start()), NOW + 1000),
            Err(RejectReason::OutOfOrder)
        );
        f.handle_session_start(D);
        assert_eq!(f.check(D, &fix(1, NOW + 1000, start()), NOW + 1000), Ok(()));
    }

    #[test]
    fn rate_limits_a_flood_but_not_a_backlog() {
        let mut f = filter();
        // 30 fixes with the same timestamp: the burst of 20 passes, the rest is limited.
        let results: Vec<_> = (1..=30)
            .map(|i| f.check(D, &fix(i, NOW, start()), NOW))
            .collect();
        assert!(results[..20].iter().all(|r| r.is_ok()));
        assert!(results[20..]
            .iter()
            .all(|r| *r == Err(RejectReason::RateLimited)));
        // A 48-fix backlog spanning 48 s of driver time, received at once, all passes.
        let mut g = filter();
        let mut pos = start();
        for i in 1..=48u32 {
            pos = destination(pos, 0.0, 10.0);
            let ts = NOW - 60_000 + u64::from(i) * 1000;
            assert_eq!(g.check(D, &fix(i, ts, pos), NOW), Ok(()), "backlog fix {i}");
        }
    }

    #[test]
    fn evicts_drivers_idle_for_two_hours() {
        let mut f = filter();
        assert_eq!(f.check(D, &fix(1, NOW, start()), NOW), Ok(()));
        assert_eq!(f.evict_idle(NOW + IDLE_EVICT_MS - 1), 0);
        assert_eq!(f.evict_idle(NOW + IDLE_EVICT_MS), 1);
        assert_eq!(f.tracked_drivers(), 0);
    }
}
