//! Sans-IO anomaly detection on a delivery's fixes: a driver stationary for too long away from
//! the pickup and drop-off, and a driver moving away from the current target for a sustained
//! stretch. Time comes from the fixes (`ts_ms`); each anomaly is reported once per episode.
//!
//! The detector's state moves with almost every fix, so it is not stored at each fix: the
//! caller stores [`AnomalyDetector::state`] with the delivery's log when an anomaly is reported
//! (and with each zone change), so that an episode already reported is not reported again by
//! the same hub after a restart or by the hub that takes the delivery over. An episode not yet
//! reported starts its clock afresh there.

use protocol::geo::{haversine_m, LatLng};
use protocol::DeliveryId;
use serde::{Deserialize, Serialize};

/// Anomaly thresholds (part of the hub config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnomalyConfig {
    /// A driver who stays within `stationary_radius_m` for this long is stationary, in seconds.
    pub stationary_after_s: u64,
    /// Movement within this radius (metres) does not count as moving.
    pub stationary_radius_m: f64,
    /// Stops within this distance (metres) of the pickup or the drop-off are expected.
    pub stop_radius_m: f64,
    /// Distance to the target must grow by more than this (metres) since its minimum ...
    pub moving_away_m: f64,
    /// ... over at least this long (seconds) to count as moving away.
    pub moving_away_after_s: u64,
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        Self {
            stationary_after_s: 300,
            stationary_radius_m: 30.0,
            stop_radius_m: 100.0,
            moving_away_m: 300.0,
            moving_away_after_s: 60,
        }
    }
}

/// What kind of anomaly.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AnomalyKind {
    Stationary,
    MovingAway,
}

impl AnomalyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AnomalyKind::Stationary => "stationary",
            AnomalyKind::MovingAway => "moving_away",
        }
    }
}

/// Which stop the driver is heading for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Pickup,
    Dropoff,
}

/// One detected anomaly: stored in redb, counted, listed and streamed to operators.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Anomaly {
    pub delivery_id: DeliveryId,
    pub kind: AnomalyKind,
    /// Time of the fix that revealed it (unix ms).
    pub ts_ms: u64,
    pub lat: f64,
    pub lng: f64,
    /// Stationary: how long the driver has not moved, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stationary_s: Option<f64>,
    /// Moving away: the target, the current distance to it and how much it grew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_m: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grew_m: Option<f64>,
}

/// What the detector needs to know with each fix.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AnomalyInput {
    pub delivery_id: DeliveryId,
    pub here: LatLng,
    pub ts_ms: u64,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    /// The stop the driver should be approaching now.
    pub target: Target,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Anchor {
    at: LatLng,
    since_ms: u64,
    reported: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Closest {
    target: Target,
    distance_m: f64,
    ts_ms: u64,
    reported: bool,
}

/// Per-delivery detector state (also its durable form: [`AnomalyDetector::state`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AnomalyDetector {
    #[serde(default)]
    anchor: Option<Anchor>,
    #[serde(default)]
    closest: Option<Closest>,
}

impl AnomalyDetector {
    /// A detector put back from its stored state.
    pub fn from_state(state: AnomalyDetector) -> Self {
        state
    }

    /// The state to store with the delivery's log (when an anomaly was reported).
    pub fn state(&self) -> AnomalyDetector {
        self.clone()
    }

    /// Feeds one fix (in time order); returns the anomalies it reveals.
    pub fn handle_fix(&mut self, config: &AnomalyConfig, input: &AnomalyInput) -> Vec<Anomaly> {
        let mut out = Vec::new();
        let base = Anomaly {
            delivery_id: input.delivery_id,
            kind: AnomalyKind::Stationary,
            ts_ms: input.ts_ms,
            lat: input.here.lat,
            lng: input.here.lng,
            stationary_s: None,
            target: None,
            distance_m: None,
            grew_m: None,
        };

        // Stationary: the anchor moves whenever the driver leaves its radius.
        match &mut self.anchor {
            Some(a) if haversine_m(a.at, input.here) <= config.stationary_radius_m => {
                let still_ms = input.ts_ms.saturating_sub(a.since_ms);
                let near_stop = haversine_m(a.at, input.pickup) <= config.stop_radius_m
                    || haversine_m(a.at, input.dropoff) <= config.stop_radius_m;
                if !a.reported && !near_stop && still_ms >= config.stationary_after_s * 1000 {
                    a.reported = true;
                    out.push(Anomaly {
                        stationary_s: Some(still_ms as f64 / 1000.0),
                        ..base.clone()
                    });
                }
            }
            _ => {
                self.anchor = Some(Anchor {
                    at: input.here,
                    since_ms: input.ts_ms,
                    reported: false,
                })
            }
        }

        // Moving away: distance to the target measured against its minimum so far.
        let stop = match input.target {
            Target::Pickup => input.pickup,
            Target::Dropoff => input.dropoff,
        };
        let d = haversine_m(input.here, stop);
        match &mut self.closest {
            Some(c) if c.target == input.target && d >= c.distance_m => {
                let grew_m = d - c.distance_m;
                let over_ms = input.ts_ms.saturating_sub(c.ts_ms);
                if !c.reported
                    && grew_m > config.moving_away_m
                    && over_ms >= config.moving_away_after_s * 1000
                {
                    c.reported = true;
                    out.push(Anomaly {
                        kind: AnomalyKind::MovingAway,
                        target: Some(input.target),
                        distance_m: Some(d),
                        grew_m: Some(grew_m),
                        ..base
                    });
                }
            }
            _ => {
                self.closest = Some(Closest {
                    target: input.target,
                    distance_m: d,
                    ts_ms: input.ts_ms,
                    reported: false,
                })
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::geo::destination;

    const PICKUP: LatLng = LatLng::new(60.170, 24.940);
    const DROPOFF: LatLng = LatLng::new(60.180, 24.960);
    const T0: u64 = 1_764_000_000_000;

    fn input(here: LatLng, ts_ms: u64, target: Target) -> AnomalyInput {
        AnomalyInput {
            delivery_id: DeliveryId(1),
            here,
            ts_ms,
            pickup: PICKUP,
            dropoff: DROPOFF,
            target,
        }
    }

    #[test]
    fn reports_a_driver_stationary_for_five_minutes_away_from_the_stops_once() {
        let c = AnomalyConfig::default();
        let mut d = AnomalyDetector::default();
        let spot = destination(PICKUP, 0.0, 500.0);
        let mut found = Vec::new();
        // GPS jitter of up to 20 m for 6 minutes, one fix every 10 s.
        for i in 0..=36u64 {
            let here = destination(spot, (i * 97 % 360) as f64, (i % 3) as f64 * 10.0);
            found.extend(d.handle_fix(&c, &input(here, T0 + i * 10_000, Target::Dropoff)));
        }
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].kind, AnomalyKind::Stationary);
        assert_eq!(found[0].ts_ms, T0 + 300_000);
        assert_eq!(found[0].stationary_s, Some(300.0));
        // Moving on and stopping again is a new episode.
        let other = destination(spot, 0.0, 1_000.0);
        for i in 0..=31u64 {
            found.extend(d.handle_fix(
                &c,
                &input(other, T0 + 400_000 + i * 10_000, Target::Dropoff),
            ));
        }
        assert_eq!(found.len(), 2);
    }

    #[test]
    fn a_reported_episode_is_not_reported_again_by_a_detector_put_back_from_its_state() {
        let c = AnomalyConfig::default();
        let mut d = AnomalyDetector::default();
        let spot = destination(PICKUP, 0.0, 500.0);
        let mut found = Vec::new();
        for i in 0..=31u64 {
            found.extend(d.handle_fix(&c, &input(spot, T0 + i * 10_000, Target::Dropoff)));
        }
        assert_eq!(found.len(), 1);
        let stored = serde_json::to_string(&d.state()).expect("json");
        let mut back = AnomalyDetector::from_state(serde_json::from_str(&stored).expect("decode"));
        assert_eq!(back, d);
        for i in 32..=80u64 {
            assert!(back
                .handle_fix(&c, &input(spot, T0 + i * 10_000, Target::Dropoff))
                .is_empty());
        }
        // A fresh detector (what a restart used to give) reports the same stop again.
        let mut fresh = AnomalyDetector::default();
        let again: Vec<_> = (32..=80u64)
            .flat_map(|i| fresh.handle_fix(&c, &input(spot, T0 + i * 10_000, Target::Dropoff)))
            .collect();
        assert_eq!(again.len(), 1);
    }

    #[test]
    fn waiting_at_the_pickup_is_not_an_anomaly() {
        let c = AnomalyConfig::default();
        let mut d = AnomalyDetector::default();
        let here = destination(PICKUP, 45.0, 40.0);
        for i in 0..=60u64 {
            assert!(d
                .handle_fix(&c, &input(here, T0 + i * 10_000, Target::Pickup))
                .is_empty());
        }
    }

    #[test]
    fn reports_moving_away_from_the_target_only_when_sustained() {
        let c = AnomalyConfig::default();
        let mut d = AnomalyDetector::default();
        let start = destination(DROPOFF, 180.0, 2_000.0);
        // Approaching: nothing.
        for i in 0..10u64 {
            let here = destination(start, 0.0, i as f64 * 50.0);
            assert!(d
                .handle_fix(&c, &input(here, T0 + i * 5_000, Target::Dropoff))
                .is_empty());
        }
        let closest = destination(start, 0.0, 450.0);
        // A fast 400 m detour in 30 s: grew enough but not for long enough.
        let away = destination(closest, 180.0, 400.0);
        assert!(d
            .handle_fix(&c, &input(away, T0 + 75_000, Target::Dropoff))
            .is_empty());
        // Still away 65 s after the closest point: reported, once.
        let v = d.handle_fix(
            &c,
            &input(
                destination(closest, 180.0, 420.0),
                T0 + 110_000,
                Target::Dropoff,
            ),
        );
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(
            (v[0].kind, v[0].target),
            (AnomalyKind::MovingAway, Some(Target::Dropoff))
        );
        assert!(
            v[0].grew_m.is_some_and(|g| (g - 420.0).abs() < 1.0),
            "{v:?}"
        );
        assert!(d
            .handle_fix(
                &c,
                &input(
                    destination(closest, 180.0, 600.0),
                    T0 + 120_000,
                    Target::Dropoff
                )
            )
            .is_empty());
        // A small drift (< 300 m) for minutes is not moving away.
        let mut d = AnomalyDetector::default();
        for i in 0..30u64 {
            let here = destination(start, 180.0, i as f64 * 8.0);
            assert!(d
                .handle_fix(&c, &input(here, T0 + i * 10_000, Target::Dropoff))
                .is_empty());
        }
    }
}
