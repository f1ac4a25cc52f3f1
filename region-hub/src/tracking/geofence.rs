//! Sans-IO geofences around a delivery's pickup and drop-off, with hysteresis.
//!
//! Each zone is a circle: a driver is *inside* once a fix lands within `enter_radius_m` and
//! stays inside until a fix lands beyond `exit_radius_m` (enter < exit, so a driver idling on
//! the boundary does not flap). A change must also be seen on `min_fixes` consecutive fixes,
//! and fixes worse than `max_accuracy_m` are ignored. The core turns the transitions into
//! status events: leaving the pickup zone after having been inside it gives `picked_up`
//! followed by `en_route` (two events, each where the status machine allows it); entering the
//! drop-off zone gives `arriving`.
//!
//! What must survive a restart or a takeover is small and changes only on a zone change:
//! [`GeofenceState`] (inside / has been inside, per zone). The caller stores it with the
//! delivery's log whenever [`Geofence::state`] changes and puts it back with
//! [`Geofence::from_state`]; the consecutive-fix streak is not kept (a restart only asks for
//! `min_fixes` agreeing fixes again).

use protocol::geo::{haversine_m, LatLng};
use serde::{Deserialize, Serialize};

/// Geofence tuning (part of the hub config).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GeofenceConfig {
    /// A driver counts as inside a zone once this close to its centre, in metres.
    pub enter_radius_m: f64,
    /// A driver inside counts as having left only beyond this distance, in metres
    /// (must be larger than `enter_radius_m`).
    pub exit_radius_m: f64,
    /// Consecutive fixes that must agree before a zone change is believed.
    pub min_fixes: u32,
    /// Fixes with a reported accuracy worse than this (metres) are ignored; 0 = unknown.
    pub max_accuracy_m: f64,
}

impl Default for GeofenceConfig {
    fn default() -> Self {
        Self {
            enter_radius_m: 50.0,
            exit_radius_m: 80.0,
            min_fixes: 2,
            max_accuracy_m: 60.0,
        }
    }
}

/// A believed zone change.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ZoneEvent {
    /// Left the pickup zone after having been inside it.
    LeftPickup { distance_m: f64 },
    /// Entered the drop-off zone.
    EnteredDropoff { distance_m: f64 },
}

/// The durable part of one zone's state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ZoneState {
    /// The driver is believed inside.
    pub inside: bool,
    /// The driver has been believed inside at some point.
    pub was_inside: bool,
}

/// The durable part of a delivery's zone state: stored with its log when it changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GeofenceState {
    pub pickup: ZoneState,
    pub dropoff: ZoneState,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Zone {
    inside: bool,
    was_inside: bool,
    /// Consecutive fixes that disagree with `inside`.
    streak: u32,
}

impl Zone {
    /// Returns `Some(now_inside)` when the zone state changes.
    fn handle(&mut self, config: &GeofenceConfig, distance_m: f64) -> Option<bool> {
        let candidate = if self.inside {
            distance_m <= config.exit_radius_m
        } else {
            distance_m <= config.enter_radius_m
        };
        if candidate == self.inside {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        if self.streak < config.min_fixes.max(1) {
            return None;
        }
        self.streak = 0;
        self.inside = candidate;
        self.was_inside |= candidate;
        Some(candidate)
    }

    fn state(&self) -> ZoneState {
        ZoneState {
            inside: self.inside,
            was_inside: self.was_inside,
        }
    }

    fn from_state(s: ZoneState) -> Self {
        Self {
            inside: s.inside,
            was_inside: s.was_inside || s.inside,
            streak: 0,
        }
    }
}

/// Zone state of one delivery.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Geofence {
    pickup: Zone,
    dropoff: Zone,
}

impl Geofence {
    /// Zone state put back from what [`Geofence::state`] returned (after a restart or on the
    /// hub that took the delivery over).
    pub fn from_state(state: GeofenceState) -> Self {
        Self {
            pickup: Zone::from_state(state.pickup),
            dropoff: Zone::from_state(state.dropoff),
        }
    }

    /// The part of the zone state worth keeping: changes only when a zone change is believed.
    pub fn state(&self) -> GeofenceState {
        GeofenceState {
            pickup: self.pickup.state(),
            dropoff: self.dropoff.state(),
        }
    }

    /// Feeds one fix; returns the zone changes it confirms.
    pub fn handle_fix(
        &mut self,
        config: &GeofenceConfig,
        pickup: LatLng,
        dropoff: LatLng,
        here: LatLng,
        accuracy_m: f64,
    ) -> Vec<ZoneEvent> {
        let mut out = Vec::new();
        if config.max_accuracy_m > 0.0 && accuracy_m > config.max_accuracy_m {
            return out;
        }
        let d = haversine_m(here, pickup);
        let had_been_inside = self.pickup.was_inside;
        if self.pickup.handle(config, d) == Some(false) && had_been_inside {
            out.push(ZoneEvent::LeftPickup { distance_m: d });
        }
        let d = haversine_m(here, dropoff);
        if self.dropoff.handle(config, d) == Some(true) {
            out.push(ZoneEvent::EnteredDropoff { distance_m: d });
        }
        out
    }

    /// True while the driver is believed inside the pickup zone.
    pub fn in_pickup(&self) -> bool {
        self.pickup.inside
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::geo::destination;

    const PICKUP: LatLng = LatLng::new(60.170, 24.940);
    const DROPOFF: LatLng = LatLng::new(60.180, 24.960);

    fn feed(g: &mut Geofence, c: &GeofenceConfig, from: LatLng, metres: &[f64]) -> Vec<ZoneEvent> {
        metres
            .iter()
            .flat_map(|m| g.handle_fix(c, PICKUP, DROPOFF, destination(from, 90.0, *m), 5.0))
            .collect()
    }

    #[test]
    fn noise_around_the_enter_radius_does_not_flap() {
        let c = GeofenceConfig::default();
        let mut g = Geofence::default();
        // Alternating 45 m / 55 m: never two consecutive fixes inside.
        assert!(feed(&mut g, &c, PICKUP, &[55.0, 45.0, 55.0, 45.0, 55.0]).is_empty());
        assert!(!g.in_pickup());
        // Two consecutive fixes inside: inside. Then noise between 50 and 80 m keeps it inside.
        assert!(feed(&mut g, &c, PICKUP, &[40.0, 30.0]).is_empty());
        assert!(g.in_pickup());
        assert!(feed(&mut g, &c, PICKUP, &[60.0, 75.0, 70.0, 79.0, 65.0]).is_empty());
        assert!(g.in_pickup(), "between enter and exit radius stays inside");
        // One fix beyond the exit radius is not enough.
        assert!(feed(&mut g, &c, PICKUP, &[90.0, 70.0]).is_empty());
        let ev = feed(&mut g, &c, PICKUP, &[90.0, 120.0]);
        assert!(
            matches!(ev[..], [ZoneEvent::LeftPickup { distance_m }] if (distance_m - 120.0).abs() < 0.5),
            "{ev:?}"
        );
        assert!(!g.in_pickup());
        // Wobbling back to 60 m does not re-enter.
        assert!(feed(&mut g, &c, PICKUP, &[60.0, 60.0, 200.0]).is_empty());
    }

    #[test]
    fn zone_state_put_back_from_its_durable_part_still_gives_the_pickup() {
        let c = GeofenceConfig::default();
        let mut g = Geofence::default();
        let before = g.state();
        assert!(feed(&mut g, &c, PICKUP, &[30.0]).is_empty());
        assert_eq!(
            g.state(),
            before,
            "a fix that changes no zone changes no state"
        );
        assert!(feed(&mut g, &c, PICKUP, &[20.0]).is_empty());
        let inside = g.state();
        assert!(inside.pickup.inside && inside.pickup.was_inside);
        // The hub restarts (or another takes over): only the durable part is left.
        let mut back = Geofence::from_state(inside);
        assert_eq!(back.state(), inside);
        assert!(back.in_pickup());
        let ev = feed(&mut back, &c, PICKUP, &[150.0, 200.0]);
        assert!(matches!(ev[..], [ZoneEvent::LeftPickup { .. }]), "{ev:?}");
        // A fresh geofence (what a restart used to give) never sees the pickup.
        let mut fresh = Geofence::default();
        assert!(feed(&mut fresh, &c, PICKUP, &[150.0, 200.0, 300.0]).is_empty());
    }

    #[test]
    fn zone_state_round_trips_through_json() {
        let s = GeofenceState {
            pickup: ZoneState {
                inside: false,
                was_inside: true,
            },
            dropoff: ZoneState {
                inside: true,
                was_inside: true,
            },
        };
        let back: GeofenceState =
            serde_json::from_str(&serde_json::to_string(&s).expect("json")).expect("decode");
        assert_eq!(back, s);
    }

    #[test]
    fn leaving_the_pickup_without_having_been_inside_is_not_a_pickup() {
        let c = GeofenceConfig::default();
        let mut g = Geofence::default();
        assert!(feed(&mut g, &c, PICKUP, &[100.0, 200.0, 300.0, 400.0]).is_empty());
    }

    #[test]
    fn entering_the_dropoff_needs_consecutive_fixes_and_good_accuracy() {
        let c = GeofenceConfig::default();
        let mut g = Geofence::default();
        assert!(feed(&mut g, &c, DROPOFF, &[300.0, 40.0, 300.0]).is_empty());
        // Inaccurate fixes are ignored entirely.
        for _ in 0..3 {
            assert!(g.handle_fix(&c, PICKUP, DROPOFF, DROPOFF, 150.0).is_empty());
        }
        let ev = feed(&mut g, &c, DROPOFF, &[40.0, 20.0]);
        assert!(
            matches!(ev[..], [ZoneEvent::EnteredDropoff { .. }]),
            "{ev:?}"
        );
        assert!(
            feed(&mut g, &c, DROPOFF, &[10.0, 70.0, 10.0]).is_empty(),
            "enters once"
        );
    }
}
