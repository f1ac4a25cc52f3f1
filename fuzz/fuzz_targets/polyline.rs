//! Fuzzes the encoded-polyline decoder (routes in consumer frames and plans).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(points) = roadnet::polyline::decode(s) {
            // Decoded points re-encode to a string that decodes to the same points.
            let again = roadnet::polyline::encode(&points);
            assert_eq!(roadnet::polyline::decode(&again).map(|p| p.len()).ok(), Some(points.len()));
        }
    }
});
