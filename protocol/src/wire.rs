//! Binary envelopes: driver fixes (QUIC datagrams), the driver control stream, and edge <-> hub frames.
//!
//! Every envelope starts with [`WIRE_VERSION`](crate::WIRE_VERSION) and a kind byte, followed by a
//! postcard body. A fix is ~25 bytes on the wire: varint sequence and timestamp, fixed 4-byte
//! lat/lng in 1e-7 degrees, varint heading (0.1 deg), speed (cm/s) and accuracy (dm).

use crate::ids::{DeliveryId, DriverId};
use crate::WIRE_VERSION;
use serde::{Deserialize, Serialize};

/// Largest datagram a driver may send; bigger ones are rejected before parsing.
pub const MAX_DRIVER_DATAGRAM: usize = 1400;
/// Most fixes one driver datagram (or one JSON batch) may carry.
pub const MAX_FIXES_PER_DATAGRAM: usize = 48;
/// Most fixes in one edge -> hub batch.
pub const MAX_FIXES_PER_BATCH: usize = 8192;

/// One GPS fix as measured by the driver's phone.
///
/// `seq` is a per-session counter starting at 1; `0` means "unsequenced" (the HTTPS fallback
/// without sequence numbers), in which case ordering falls back to `ts_ms`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fix {
    pub seq: u32,
    /// Unix time of the measurement at the driver, milliseconds.
    pub ts_ms: u64,
    #[serde(with = "postcard::fixint::le")]
    pub lat_e7: i32,
    #[serde(with = "postcard::fixint::le")]
    pub lng_e7: i32,
    /// Heading in tenths of a degree, 0..3600.
    pub heading_ddeg: u16,
    /// Ground speed in centimetres per second.
    pub speed_cmps: u16,
    /// Horizontal accuracy (1 sigma) in decimetres; 0 = unknown.
    pub accuracy_dm: u16,
}

impl Fix {
    /// Builds a fix from SI units, rounding and saturating into the wire ranges.
    pub fn from_units(
        seq: u32,
        ts_ms: u64,
        lat: f64,
        lng: f64,
        heading_deg: f64,
        speed_mps: f64,
        accuracy_m: f64,
    ) -> Self {
        let heading = heading_deg.rem_euclid(360.0);
        Self {
            seq,
            ts_ms,
            lat_e7: deg_to_e7(lat),
            lng_e7: deg_to_e7(lng),
            heading_ddeg: ((heading * 10.0).round() as u16).min(3599),
            speed_cmps: sat_u16(speed_mps * 100.0),
            accuracy_dm: sat_u16(accuracy_m * 10.0),
        }
    }

    pub fn lat(&self) -> f64 {
        f64::from(self.lat_e7) / 1e7
    }
    pub fn lng(&self) -> f64 {
        f64::from(self.lng_e7) / 1e7
    }
    pub fn heading_deg(&self) -> f64 {
        f64::from(self.heading_ddeg) / 10.0
    }
    pub fn speed_mps(&self) -> f64 {
        f64::from(self.speed_cmps) / 100.0
    }
    pub fn accuracy_m(&self) -> f64 {
        f64::from(self.accuracy_dm) / 10.0
    }
    pub fn position(&self) -> crate::geo::LatLng {
        crate::geo::LatLng::new(self.lat(), self.lng())
    }
}

fn deg_to_e7(deg: f64) -> i32 {
    let v = (deg * 1e7).round();
    if v.is_nan() {
        i32::MAX // out of range on purpose: the filter rejects it as bad coordinates
    } else {
        v.clamp(f64::from(i32::MIN), f64::from(i32::MAX)) as i32
    }
}

fn sat_u16(v: f64) -> u16 {
    if v.is_nan() || v <= 0.0 {
        0
    } else {
        v.round().min(f64::from(u16::MAX)) as u16
    }
}

/// Why a byte string could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("empty message")]
    Empty,
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("unsupported wire version {0} (this build speaks {WIRE_VERSION})")]
    Version(u8),
    #[error("unknown message kind 0x{0:02x}")]
    UnknownKind(u8),
    #[error("malformed body: {0}")]
    Body(String),
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
    #[error("{count} fixes exceed the limit of {max}")]
    TooManyFixes { count: usize, max: usize },
}

impl WireError {
    /// Short stable label for metrics (`reason="..."`).
    pub fn reason(&self) -> &'static str {
        match self {
            WireError::Empty => "empty",
            WireError::TooLarge { .. } => "too_large",
            WireError::Version(_) => "version",
            WireError::UnknownKind(_) => "unknown_kind",
            WireError::Body(_) => "malformed",
            WireError::Trailing(_) => "trailing_bytes",
            WireError::TooManyFixes { .. } => "too_many_fixes",
        }
    }
}

const KIND_FIX: u8 = 0x01;
const KIND_FIXES: u8 = 0x02;

/// Encodes one fix as a driver datagram (version, kind, body).
pub fn encode_fix_datagram(fix: &Fix) -> Vec<u8> {
    let mut out = Vec::with_capacity(32);
    out.push(WIRE_VERSION);
    out.push(KIND_FIX);
    // Serializing a plain struct into a Vec cannot fail.
    out.extend_from_slice(&postcard::to_stdvec(fix).unwrap_or_default());
    out
}

/// Encodes several fixes (a backlog after a network gap) as one driver datagram.
pub fn encode_fixes_datagram(fixes: &[Fix]) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + fixes.len() * 26);
    out.push(WIRE_VERSION);
    out.push(KIND_FIXES);
    out.extend_from_slice(&postcard::to_stdvec(fixes).unwrap_or_default());
    out
}

/// Decodes a driver datagram into its fixes. Never panics; rejects oversize input first.
pub fn decode_driver_datagram(bytes: &[u8]) -> Result<Vec<Fix>, WireError> {
    let body = check_header(bytes, MAX_DRIVER_DATAGRAM)?;
    match bytes[1] {
        KIND_FIX => Ok(vec![take_exact::<Fix>(body)?]),
        KIND_FIXES => {
            let fixes: Vec<Fix> = take_exact(body)?;
            if fixes.len() > MAX_FIXES_PER_DATAGRAM {
                return Err(WireError::TooManyFixes {
                    count: fixes.len(),
                    max: MAX_FIXES_PER_DATAGRAM,
                });
            }
            Ok(fixes)
        }
        k => Err(WireError::UnknownKind(k)),
    }
}

/// Checks length, version and presence of a kind byte; returns the body after them.
fn check_header(bytes: &[u8], max: usize) -> Result<&[u8], WireError> {
    if bytes.is_empty() {
        return Err(WireError::Empty);
    }
    if bytes.len() > max {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max,
        });
    }
    if bytes[0] != WIRE_VERSION {
        return Err(WireError::Version(bytes[0]));
    }
    bytes
        .get(2..)
        .ok_or(WireError::Body("missing kind byte".into()))
}

/// Decodes a postcard value that must use every byte.
pub(crate) fn take_exact<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, WireError> {
    let (value, rest) =
        postcard::take_from_bytes::<T>(body).map_err(|e| WireError::Body(e.to_string()))?;
    if rest.is_empty() {
        Ok(value)
    } else {
        Err(WireError::Trailing(rest.len()))
    }
}

/// Messages a driver app sends on its control stream (length-prefixed, see [`crate::framing`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum DriverToEdge {
    /// First message of a session: the driver's signed token.
    Hello { token: String, app_version: String },
    /// Fixes sent reliably (used when the path does not support datagrams).
    Fixes(Vec<Fix>),
    /// The deliveries the driver is on duty for (at most [`MAX_ON_DUTY_DELIVERIES`]; empty =
    /// none). Sent after `Hello` and whenever the app's assignment changes; the edge routes
    /// the driver's fixes to each delivery's owning hub. Added last: variant indices are wire.
    OnDuty { deliveries: Vec<DeliveryId> },
}

/// Most deliveries one `DriverToEdge::OnDuty` (or `x-trackline-deliveries` header) may name.
pub const MAX_ON_DUTY_DELIVERIES: usize = 8;

/// Messages the edge sends a driver on the control stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EdgeToDriver {
    /// The token was accepted.
    Welcome {
        driver_id: DriverId,
        session_id: u64,
        server_time_ms: u64,
        max_datagram: u16,
    },
    /// Reconnect to another edge (this one is draining).
    Redirect { addr: String, reason: String },
}

/// QUIC application error codes an edge or hub closes a connection with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    Normal = 0x0,
    BadToken = 0x10,
    TokenExpired = 0x11,
    HelloTimeout = 0x12,
    ProtocolViolation = 0x13,
    WrongTokenKind = 0x14,
    Draining = 0x20,
    ShuttingDown = 0x21,
}

impl CloseCode {
    pub fn from_u64(code: u64) -> Option<Self> {
        Some(match code {
            0x0 => Self::Normal,
            0x10 => Self::BadToken,
            0x11 => Self::TokenExpired,
            0x12 => Self::HelloTimeout,
            0x13 => Self::ProtocolViolation,
            0x14 => Self::WrongTokenKind,
            0x20 => Self::Draining,
            0x21 => Self::ShuttingDown,
            _ => return None,
        })
    }
}

/// A fix the edge accepted, tagged with the authenticated driver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoutedFix {
    pub driver_id: DriverId,
    pub fix: Fix,
    /// When the edge received it (unix ms, edge clock).
    pub edge_rx_ms: u64,
}

/// Frames an edge sends its hub on the link's bidirectional stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum EdgeToHub {
    Hello {
        edge_id: String,
    },
    Batch {
        batch_seq: u64,
        fixes: Vec<RoutedFix>,
    },
}

/// Frames a hub sends back to an edge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum HubToEdge {
    Welcome {
        hub_id: String,
    },
    /// Every batch up to and including `batch_seq` was accepted (queued to be applied, in order).
    Ack {
        batch_seq: u64,
    },
    /// The hub is draining: send future batches elsewhere.
    Redirect {
        addr: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> Fix {
        Fix::from_units(1234, 1_764_000_000_000, 60.1699, 24.9384, 271.5, 13.9, 6.5)
    }

    #[test]
    fn single_fix_datagram_is_at_most_32_bytes() {
        let bytes = encode_fix_datagram(&sample());
        assert!(bytes.len() <= 32, "{} bytes", bytes.len());
        assert_eq!(decode_driver_datagram(&bytes), Ok(vec![sample()]));
    }

    #[test]
    fn rejects_wrong_version_unknown_kind_and_trailing_bytes() {
        let mut b = encode_fix_datagram(&sample());
        b[0] = 9;
        assert_eq!(decode_driver_datagram(&b), Err(WireError::Version(9)));
        let mut b = encode_fix_datagram(&sample());
        b[1] = 0x7f;
        assert_eq!(
            decode_driver_datagram(&b),
            Err(WireError::UnknownKind(0x7f))
        );
        let mut b = encode_fix_datagram(&sample());
        b.push(0);
        assert_eq!(decode_driver_datagram(&b), Err(WireError::Trailing(1)));
        assert_eq!(decode_driver_datagram(&[]), Err(WireError::Empty));
        assert_eq!(
            decode_driver_datagram(&[WIRE_VERSION]).map_err(|e| e.reason()),
            Err("malformed")
        );
    }

    #[test]
    fn rejects_datagrams_with_too_many_fixes() {
        let fixes = vec![sample(); MAX_FIXES_PER_DATAGRAM + 1];
        let b = encode_fixes_datagram(&fixes);
        assert!(matches!(
            decode_driver_datagram(&b),
            Err(WireError::TooManyFixes { .. }) | Err(WireError::TooLarge { .. })
        ));
    }

    #[test]
    fn units_saturate_instead_of_wrapping() {
        let f = Fix::from_units(1, 0, 10.0, 20.0, -90.0, 1e9, -3.0);
        assert_eq!(f.heading_ddeg, 2700);
        assert_eq!(f.speed_cmps, u16::MAX);
        assert_eq!(f.accuracy_dm, 0);
        let nan = Fix::from_units(1, 0, f64::NAN, 20.0, 0.0, 0.0, 0.0);
        assert!(!nan.position().is_valid());
    }

    fn any_fix() -> impl Strategy<Value = Fix> {
        (
            any::<u32>(),
            any::<u64>(),
            any::<i32>(),
            any::<i32>(),
            0u16..3600,
            any::<u16>(),
            any::<u16>(),
        )
            .prop_map(
                |(seq, ts_ms, lat_e7, lng_e7, heading_ddeg, speed_cmps, accuracy_dm)| Fix {
                    seq,
                    ts_ms,
                    lat_e7,
                    lng_e7,
                    heading_ddeg,
                    speed_cmps,
                    accuracy_dm,
                },
            )
    }

    proptest! {
        #[test]
        fn fix_datagram_round_trips(fix in any_fix()) {
            prop_assert_eq!(decode_driver_datagram(&encode_fix_datagram(&fix)), Ok(vec![fix]));
        }

        #[test]
        fn fixes_datagram_round_trips(fixes in proptest::collection::vec(any_fix(), 0..MAX_FIXES_PER_DATAGRAM)) {
            let bytes = encode_fixes_datagram(&fixes);
            if bytes.len() <= MAX_DRIVER_DATAGRAM {
                prop_assert_eq!(decode_driver_datagram(&bytes), Ok(fixes));
            }
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_driver_datagram(&bytes);
        }

        #[test]
        fn edge_to_hub_batches_round_trip(fixes in proptest::collection::vec(any_fix(), 0..20), seq in any::<u64>()) {
            let routed: Vec<RoutedFix> = fixes.into_iter().enumerate()
                .map(|(i, fix)| RoutedFix { driver_id: DriverId(i as u64), fix, edge_rx_ms: 7 }).collect();
            let msg = EdgeToHub::Batch { batch_seq: seq, fixes: routed };
            let mut buf = Vec::new();
            crate::framing::encode_frame(&msg, &mut buf);
            let mut dec = crate::framing::FrameDecoder::new(crate::framing::MAX_HUB_FRAME);
            dec.push(&buf);
            prop_assert_eq!(dec.next_frame::<EdgeToHub>(), Ok(Some(msg)));
        }

        #[test]
        fn on_duty_frames_round_trip(ids in proptest::collection::vec(any::<u64>(), 0..=MAX_ON_DUTY_DELIVERIES)) {
            let msg = DriverToEdge::OnDuty { deliveries: ids.into_iter().map(DeliveryId).collect() };
            let mut buf = Vec::new();
            crate::framing::encode_frame(&msg, &mut buf);
            let mut dec = crate::framing::FrameDecoder::new(crate::framing::MAX_DRIVER_FRAME);
            dec.push(&buf);
            prop_assert_eq!(dec.next_frame::<DriverToEdge>(), Ok(Some(msg)));
        }
    }

    #[test]
    fn existing_driver_frames_keep_their_variant_indices() {
        // postcard encodes the variant index first: adding OnDuty must not move Hello or Fixes.
        let hello = postcard::to_stdvec(&DriverToEdge::Hello {
            token: String::new(),
            app_version: String::new(),
        })
        .expect("encode");
        let fixes = postcard::to_stdvec(&DriverToEdge::Fixes(Vec::new())).expect("encode");
        let on_duty = postcard::to_stdvec(&DriverToEdge::OnDuty {
            deliveries: vec![DeliveryId(12)],
        })
        .expect("encode");
        assert_eq!((hello[0], fixes[0], on_duty[0]), (0, 1, 2));
    }
}
