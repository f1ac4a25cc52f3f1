//! JSON bodies of the HTTP APIs (driver fallback, order-service stand-in, tracking REST).

use crate::consumer::Snapshot;
use crate::geo::LatLng;
use crate::ids::{DeliveryId, DriverId};
use crate::status::DeliveryStatus;
use crate::wire::Fix;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One fix in `POST /api/v1/tracking/locations` (the body is a JSON array of these).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JsonFix {
    /// Per-driver sequence number; omit (or 0) to order by timestamp only.
    #[serde(default)]
    pub seq: u32,
    pub lat: f64,
    pub lng: f64,
    /// Degrees clockwise from north.
    #[serde(default)]
    pub heading: f64,
    /// Metres per second.
    #[serde(default)]
    pub speed: f64,
    /// Horizontal accuracy in metres; omit if unknown.
    #[serde(default)]
    pub accuracy: f64,
    /// Unix time of the measurement, milliseconds.
    pub timestamp: u64,
}

impl JsonFix {
    pub fn to_fix(&self) -> Fix {
        Fix::from_units(
            self.seq,
            self.timestamp,
            self.lat,
            self.lng,
            self.heading,
            self.speed,
            self.accuracy,
        )
    }

    pub fn from_fix(f: &Fix) -> Self {
        Self {
            seq: f.seq,
            lat: f.lat(),
            lng: f.lng(),
            heading: f.heading_deg(),
            speed: f.speed_mps(),
            accuracy: f.accuracy_m(),
            timestamp: f.ts_ms,
        }
    }
}

/// Answer to a location batch: how many fixes were taken and why the others were not.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct IngestResult {
    pub accepted: u32,
    pub rejected: BTreeMap<String, u32>,
}

/// `POST /api/v1/deliveries` (the order service's call when an order is confirmed).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreateDelivery {
    /// Chosen by the caller, or by the hub when omitted.
    #[serde(default)]
    pub delivery_id: Option<DeliveryId>,
    pub pickup: LatLng,
    pub dropoff: LatLng,
    /// The assigned driver, if already known (assigns immediately).
    #[serde(default)]
    pub driver_id: Option<DriverId>,
}

/// Answer to [`CreateDelivery`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryCreated {
    pub delivery_id: DeliveryId,
    pub status: DeliveryStatus,
    pub last_event_seq: u64,
    /// Bearer token for the consumer watching this delivery.
    pub tracking_token: String,
    /// Path of the consumer tracking page (token included).
    pub tracking_path: String,
}

/// `POST /api/v1/deliveries/{id}/status`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ChangeStatus {
    pub status: DeliveryStatus,
    /// Repeating a request with the same key returns the first result instead of a new event.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Driver to assign (with `driver_assigned`).
    #[serde(default)]
    pub driver_id: Option<DriverId>,
    #[serde(default)]
    pub metadata: serde_json::Value,
}

/// Answer to [`ChangeStatus`]: the event is durable when this is sent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatusChanged {
    pub delivery_id: DeliveryId,
    pub event_seq: u64,
    pub status: DeliveryStatus,
    /// True when an earlier request with the same idempotency key already made this event.
    pub replayed: bool,
}

/// `GET /api/v1/tracking/{id}/status`: the REST fallback's view.
pub type TrackingStatus = Snapshot;

/// Optional header of the driver location upload naming the deliveries the driver is on duty
/// for, as comma-separated decimal ids (`x-trackline-deliveries: 12,34`); the HTTP twin of
/// [`crate::wire::DriverToEdge::OnDuty`].
pub const DELIVERIES_HEADER: &str = "x-trackline-deliveries";

/// Parses a [`DELIVERIES_HEADER`] value: comma-separated decimal ids (spaces allowed, empty
/// items skipped), at most [`crate::wire::MAX_ON_DUTY_DELIVERIES`]. The error says what is wrong.
pub fn parse_deliveries_header(value: &str) -> Result<Vec<DeliveryId>, String> {
    let mut out = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let id = item
            .parse::<DeliveryId>()
            .map_err(|_| format!("{DELIVERIES_HEADER}: `{item}` is not a delivery id"))?;
        if !out.contains(&id) {
            out.push(id);
        }
    }
    if out.len() > crate::wire::MAX_ON_DUTY_DELIVERIES {
        return Err(format!(
            "{DELIVERIES_HEADER}: {} deliveries exceed the limit of {}",
            out.len(),
            crate::wire::MAX_ON_DUTY_DELIVERIES
        ));
    }
    Ok(out)
}

/// Error body of every API.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub error: String,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_header_parses_ids_and_refuses_garbage_and_too_many() {
        assert_eq!(
            parse_deliveries_header("12, 34,,12"),
            Ok(vec![DeliveryId(12), DeliveryId(34)])
        );
        assert_eq!(parse_deliveries_header(""), Ok(vec![]));
        assert!(parse_deliveries_header("12,x")
            .expect_err("garbage")
            .contains("`x`"));
        assert!(parse_deliveries_header("1,2,3,4,5,6,7,8,9")
            .expect_err("too many")
            .contains("limit of 8"));
    }

    #[test]
    fn json_fix_accepts_the_seed_shape_without_seq_or_accuracy() {
        let v: Vec<JsonFix> = serde_json::from_str(
            r#"[{"lat":60.17,"lng":24.94,"heading":90,"speed":8.5,"timestamp":1764000000000}]"#,
        )
        .expect("parse");
        let f = v[0].to_fix();
        assert_eq!(f.seq, 0);
        assert_eq!(f.accuracy_dm, 0);
        assert_eq!(f.lat_e7, 601_700_000);
        assert_eq!(f.speed_cmps, 850);
    }
}
