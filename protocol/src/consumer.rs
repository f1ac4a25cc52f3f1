//! JSON frames the hub pushes to consumers (browsers and apps), over every transport alike.
//!
//! Positions travel as WebTransport datagrams (or WebSocket text frames) and may be dropped:
//! each carries a per-delivery `seq`, so a consumer keeps only the newest. Status events are
//! never dropped: each carries the delivery's `event_seq` from the hub's durable log, and a
//! consumer that reconnects with `last_event_seq` receives everything after it.

use crate::geo::LatLng;
use crate::ids::DeliveryId;
use crate::status::DeliveryStatus;
use serde::{Deserialize, Serialize};

/// A driver position as consumers see it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Position {
    pub delivery_id: DeliveryId,
    /// Per-delivery position counter (newest wins).
    pub seq: u64,
    pub lat: f64,
    pub lng: f64,
    pub heading_deg: f64,
    pub speed_mps: f64,
    pub accuracy_m: f64,
    /// When the driver measured it (unix ms).
    pub ts_ms: u64,
}

/// A status transition from the durable event log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusEvent {
    pub delivery_id: DeliveryId,
    /// Position of this event in the delivery's log, starting at 1.
    pub event_seq: u64,
    pub status: DeliveryStatus,
    pub ts_ms: u64,
    /// `api`, `geofence` or `driver`.
    pub source: String,
    #[serde(default, skip_serializing_if = "serde_json::Value::is_null")]
    pub metadata: serde_json::Value,
}

/// Estimated time of arrival at the next stop (pickup or drop-off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Eta {
    pub delivery_id: DeliveryId,
    pub seq: u64,
    /// Seconds from `ts_ms` until arrival at the drop-off (sent as a whole number).
    #[serde(serialize_with = "whole")]
    pub eta_s: f64,
    /// Confidence band around `eta_s`, seconds from `ts_ms` (whole numbers): by the hub's
    /// record of past trips, the true arrival falls between the two 8 times in 10 (p10 and
    /// p90). Absent (0) from hubs that predate it.
    #[serde(default, serialize_with = "whole")]
    pub eta_low_s: f64,
    #[serde(default, serialize_with = "whole")]
    pub eta_high_s: f64,
    /// Metres of route left (sent as a whole number).
    #[serde(serialize_with = "whole")]
    pub remaining_m: f64,
    pub ts_ms: u64,
    /// Encoded polyline (precision 5) of the route, sent when it changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_polyline: Option<String>,
}

/// Writes a non-negative quantity rounded to a whole number: a second or a metre is the
/// precision a consumer shows, and `812` is shorter on the wire than `811.6421307845516`.
fn whole<S: serde::Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    if v.is_finite() {
        s.serialize_i64(v.round() as i64)
    } else {
        s.serialize_i64(0)
    }
}

/// Everything a consumer needs when it (re)connects.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Snapshot {
    pub delivery_id: DeliveryId,
    pub status: DeliveryStatus,
    pub last_event_seq: u64,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    pub position: Option<Position>,
    pub eta: Option<Eta>,
    /// Age of the last position in seconds, when there is one.
    pub position_age_s: Option<f64>,
    pub server_time_ms: u64,
}

/// One frame pushed to a consumer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ConsumerFrame {
    Snapshot(Snapshot),
    Position(Position),
    Status(StatusEvent),
    Eta(Eta),
    /// No fix for a while: show the last known position with its age.
    LocationUnavailable {
        delivery_id: DeliveryId,
        last_ts_ms: u64,
        age_s: f64,
    },
    /// Reconnect to `url` (the serving node is draining).
    Redirect {
        url: String,
    },
    /// The request was refused; nothing else follows.
    Error {
        code: u16,
        message: String,
    },
}

impl ConsumerFrame {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|_| "{\"type\":\"error\",\"code\":500,\"message\":\"encode\"}".into())
    }

    /// Parses a frame from untrusted text (used by client-sim and tests).
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_tagged_by_type_and_round_trip() {
        let p = ConsumerFrame::Position(Position {
            delivery_id: DeliveryId(9),
            seq: 3,
            lat: 60.1,
            lng: 24.9,
            heading_deg: 90.0,
            speed_mps: 8.0,
            accuracy_m: 5.0,
            ts_ms: 1,
        });
        let j = p.to_json();
        assert!(j.starts_with("{\"type\":\"position\""), "{j}");
        assert!(j.len() < 200, "{}", j.len());
        assert_eq!(ConsumerFrame::from_json(&j).expect("parse"), p);
        let s = ConsumerFrame::Status(StatusEvent {
            delivery_id: DeliveryId(9),
            event_seq: 4,
            status: DeliveryStatus::PickedUp,
            ts_ms: 2,
            source: "geofence".into(),
            metadata: serde_json::Value::Null,
        });
        let j = s.to_json();
        assert!(j.contains("\"status\":\"picked_up\""), "{j}");
        assert_eq!(ConsumerFrame::from_json(&j).expect("parse"), s);
    }
}
