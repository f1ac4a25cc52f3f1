//! Fuzzes the driver datagram decoder: arbitrary bytes must yield fixes or an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(fixes) = protocol::wire::decode_driver_datagram(data) {
        // Whatever decodes must re-encode and decode to the same fixes.
        let again = protocol::wire::encode_fixes_datagram(&fixes);
        if again.len() <= protocol::wire::MAX_DRIVER_DATAGRAM {
            assert_eq!(protocol::wire::decode_driver_datagram(&again).ok(), Some(fixes));
        }
    }
});
