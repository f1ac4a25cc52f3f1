//! Fuzzes token verification with arbitrary strings.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let v = protocol::token::TokenVerifier::new().with_key(1, [9u8; 32]);
        let _ = v.verify(s, 0);
        let _ = protocol::token::decode_public_key(s);
    }
});
