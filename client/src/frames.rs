//! Tolerant parsing of the hub's consumer frames: the `protocol` types first, then lenient
//! fallbacks for positions and ETAs (fields the hub may drop or compact), and unknown frame
//! types are reported, never fatal.

use protocol::consumer::{ConsumerFrame, Eta, Position};
use protocol::DeliveryId;
use serde::Deserialize;

/// What a text frame turned out to be.
#[derive(Clone, Debug, PartialEq)]
// A parsed frame is moved once, to its handler: boxing it would cost an allocation per frame.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    Frame(ConsumerFrame),
    /// A well-formed frame of a type this build does not know (`type` field).
    Unknown(String),
    /// Not a frame at all, or a known type missing what it must carry.
    Malformed(String),
}

/// Position with only what a consumer cannot do without; the rest defaults.
#[derive(Deserialize)]
struct LenientPosition {
    delivery_id: DeliveryId,
    #[serde(default)]
    seq: u64,
    lat: f64,
    lng: f64,
    #[serde(default)]
    heading_deg: f64,
    #[serde(default)]
    speed_mps: f64,
    #[serde(default)]
    accuracy_m: f64,
    ts_ms: u64,
}

#[derive(Deserialize)]
struct LenientEta {
    delivery_id: DeliveryId,
    #[serde(default)]
    seq: u64,
    eta_s: f64,
    #[serde(default)]
    eta_low_s: f64,
    #[serde(default)]
    eta_high_s: f64,
    #[serde(default)]
    remaining_m: f64,
    #[serde(default)]
    ts_ms: u64,
    #[serde(default)]
    route_polyline: Option<String>,
}

#[derive(Deserialize)]
struct TypeOnly {
    #[serde(rename = "type")]
    kind: String,
}

const KNOWN: [&str; 7] = [
    "snapshot",
    "position",
    "status",
    "eta",
    "location_unavailable",
    "redirect",
    "error",
];

/// Parses one frame. Unknown fields are ignored (serde's default); numbers may be integers or
/// floats; a position or ETA missing optional fields still parses.
pub fn parse_frame(text: &str) -> Parsed {
    let err = match ConsumerFrame::from_json(text) {
        Ok(f) => return Parsed::Frame(f),
        Err(e) => e,
    };
    let kind = match serde_json::from_str::<TypeOnly>(text) {
        Ok(t) => t.kind,
        Err(_) => return Parsed::Malformed(format!("{err}: {}", excerpt(text))),
    };
    match kind.as_str() {
        "position" => match serde_json::from_str::<LenientPosition>(text) {
            Ok(p) => Parsed::Frame(ConsumerFrame::Position(Position {
                delivery_id: p.delivery_id,
                seq: p.seq,
                lat: p.lat,
                lng: p.lng,
                heading_deg: p.heading_deg,
                speed_mps: p.speed_mps,
                accuracy_m: p.accuracy_m,
                ts_ms: p.ts_ms,
            })),
            Err(e) => Parsed::Malformed(format!("position: {e}")),
        },
        "eta" => match serde_json::from_str::<LenientEta>(text) {
            Ok(e) => Parsed::Frame(ConsumerFrame::Eta(Eta {
                delivery_id: e.delivery_id,
                seq: e.seq,
                eta_s: e.eta_s,
                eta_low_s: e.eta_low_s,
                eta_high_s: e.eta_high_s,
                remaining_m: e.remaining_m,
                ts_ms: e.ts_ms,
                route_polyline: e.route_polyline,
            })),
            Err(e) => Parsed::Malformed(format!("eta: {e}")),
        },
        k if KNOWN.contains(&k) => Parsed::Malformed(format!("{k}: {err}")),
        _ => Parsed::Unknown(kind),
    }
}

fn excerpt(text: &str) -> String {
    text.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_positions_with_rounded_coordinates_and_extra_fields_parse() {
        let t = r#"{"type":"position","delivery_id":9,"seq":3,"lat":60.1699123,"lng":24.9384,
                    "heading_deg":90,"speed_mps":8,"accuracy_m":5,"ts_ms":17,"new_field":[1,2]}"#;
        let Parsed::Frame(ConsumerFrame::Position(p)) = parse_frame(t) else {
            panic!("{:?}", parse_frame(t));
        };
        assert_eq!((p.seq, p.ts_ms, p.speed_mps), (3, 17, 8.0));
        // Optional fields dropped by a compact encoder default to zero.
        let t = r#"{"type":"position","delivery_id":9,"seq":4,"lat":60.1,"lng":24.9,"ts_ms":18}"#;
        assert!(matches!(
            parse_frame(t),
            Parsed::Frame(ConsumerFrame::Position(Position { seq: 4, .. }))
        ));
    }

    #[test]
    fn integer_etas_and_an_eta_band_parse() {
        let t = r#"{"type":"eta","delivery_id":9,"seq":2,"eta_s":312,"remaining_m":1830,
                    "ts_ms":5,"eta_low_s":280,"eta_high_s":360}"#;
        let Parsed::Frame(ConsumerFrame::Eta(e)) = parse_frame(t) else {
            panic!("{:?}", parse_frame(t));
        };
        assert_eq!((e.eta_s, e.remaining_m), (312.0, 1830.0));
    }

    #[test]
    fn unknown_types_are_reported_and_garbage_is_malformed() {
        assert_eq!(
            parse_frame(r#"{"type":"weather","rain":true}"#),
            Parsed::Unknown("weather".into())
        );
        assert!(matches!(parse_frame("not json"), Parsed::Malformed(_)));
        assert!(matches!(
            parse_frame(r#"{"type":"status","delivery_id":1}"#),
            Parsed::Malformed(_)
        ));
    }
}
