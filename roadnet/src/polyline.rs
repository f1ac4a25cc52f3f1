//! Google encoded polyline format (precision 5), for sending routes to browsers compactly.

use thiserror::Error;

use crate::geo::LatLng;

const FACTOR: f64 = 1e5;

/// Why an encoded polyline could not be decoded.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PolylineError {
    /// A character outside the alphabet `?`..=`~` (63..=126).
    #[error("invalid polyline character {ch:?} at byte {at}")]
    InvalidChar {
        /// The offending character.
        ch: char,
        /// Its byte offset.
        at: usize,
    },
    /// The string ended in the middle of a value, or after a latitude without its longitude.
    #[error("polyline truncated at byte {at}")]
    Truncated {
        /// Length of the input.
        at: usize,
    },
    /// A value had more 5-bit chunks than fit in 32 bits.
    #[error("polyline value too long at byte {at}")]
    Overflow {
        /// Byte offset where the value started.
        at: usize,
    },
    /// A decoded coordinate lies outside the valid latitude or longitude range.
    #[error("polyline coordinate out of range: {lat}, {lng}")]
    OutOfRange {
        /// Decoded latitude.
        lat: f64,
        /// Decoded longitude.
        lng: f64,
    },
}

/// Encode points with 5 decimal places (about 1 m).
pub fn encode(points: &[LatLng]) -> String {
    let mut out = String::with_capacity(points.len() * 8);
    let (mut prev_lat, mut prev_lng) = (0i64, 0i64);
    for p in points {
        let lat = (p.lat * FACTOR).round() as i64;
        let lng = (p.lng * FACTOR).round() as i64;
        encode_value(lat - prev_lat, &mut out);
        encode_value(lng - prev_lng, &mut out);
        prev_lat = lat;
        prev_lng = lng;
    }
    out
}

fn encode_value(delta: i64, out: &mut String) {
    let zigzag = if delta < 0 { !(delta << 1) } else { delta << 1 };
    let mut v = zigzag as u64;
    while v >= 0x20 {
        out.push(char::from(((0x20 | (v & 0x1f)) + 63) as u8));
        v >>= 5;
    }
    out.push(char::from((v + 63) as u8));
}

/// Decode a polyline produced by [`encode`] (or any precision-5 Google polyline).
pub fn decode(encoded: &str) -> Result<Vec<LatLng>, PolylineError> {
    let bytes = encoded.as_bytes();
    let mut points = Vec::new();
    let mut i = 0;
    let (mut lat, mut lng) = (0i64, 0i64);
    while i < bytes.len() {
        lat += decode_value(encoded, &mut i)?;
        if i >= bytes.len() {
            return Err(PolylineError::Truncated { at: bytes.len() });
        }
        lng += decode_value(encoded, &mut i)?;
        let p = LatLng::new(lat as f64 / FACTOR, lng as f64 / FACTOR);
        if !p.is_valid() {
            return Err(PolylineError::OutOfRange {
                lat: p.lat,
                lng: p.lng,
            });
        }
        points.push(p);
    }
    Ok(points)
}

fn decode_value(encoded: &str, i: &mut usize) -> Result<i64, PolylineError> {
    let bytes = encoded.as_bytes();
    let start = *i;
    let mut result: u64 = 0;
    let mut shift = 0u32;
    loop {
        let Some(&b) = bytes.get(*i) else {
            return Err(PolylineError::Truncated { at: bytes.len() });
        };
        if !(63..=126).contains(&b) {
            let ch = encoded[*i..].chars().next().unwrap_or('\u{fffd}');
            return Err(PolylineError::InvalidChar { ch, at: *i });
        }
        if shift > 30 {
            return Err(PolylineError::Overflow { at: start });
        }
        let chunk = u64::from(b - 63);
        result |= (chunk & 0x1f) << shift;
        shift += 5;
        *i += 1;
        if chunk < 0x20 {
            break;
        }
    }
    let value = if result & 1 == 1 {
        !(result >> 1) as i64
    } else {
        (result >> 1) as i64
    };
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_the_reference_example_from_the_format_spec() {
        let pts = [
            LatLng::new(38.5, -120.2),
            LatLng::new(40.7, -120.95),
            LatLng::new(43.252, -126.453),
        ];
        assert_eq!(encode(&pts), "_p~iF~ps|U_ulLnnqC_mqNvxq`@");
        assert_eq!(decode("_p~iF~ps|U_ulLnnqC_mqNvxq`@"), Ok(pts.to_vec()));
    }

    #[test]
    fn rejects_truncated_and_invalid_input() {
        assert!(matches!(
            decode("_p~iF"),
            Err(PolylineError::Truncated { .. })
        ));
        assert!(matches!(
            decode("_p~i"),
            Err(PolylineError::Truncated { .. })
        ));
        assert!(matches!(
            decode("_p~iF ps|U"),
            Err(PolylineError::InvalidChar { ch: ' ', .. })
        ));
        assert!(matches!(
            decode("~~~~~~~~~~"),
            Err(PolylineError::Overflow { .. })
        ));
        assert_eq!(decode(""), Ok(Vec::new()));
    }

    fn coord() -> impl Strategy<Value = LatLng> {
        (-90.0f64..=90.0, -180.0f64..=180.0).prop_map(|(lat, lng)| LatLng::new(lat, lng))
    }

    proptest! {
        #[test]
        fn round_trip_preserves_points_to_five_decimals(pts in prop::collection::vec(coord(), 0..50)) {
            let decoded = decode(&encode(&pts)).expect("own encoding decodes");
            prop_assert_eq!(decoded.len(), pts.len());
            for (a, b) in pts.iter().zip(&decoded) {
                prop_assert!((a.lat - b.lat).abs() <= 0.5e-5 + 1e-9);
                prop_assert!((a.lng - b.lng).abs() <= 0.5e-5 + 1e-9);
            }
            // Decoded points are exactly representable: encoding them again is stable.
            prop_assert_eq!(encode(&decoded), encode(&pts));
        }

        #[test]
        fn decode_never_panics_on_arbitrary_text(s in ".{0,64}") {
            let _ = decode(&s);
        }
    }
}
