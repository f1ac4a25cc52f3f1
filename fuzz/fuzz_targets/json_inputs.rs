//! Fuzzes the JSON bodies the nodes parse from untrusted peers.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<Vec<protocol::api::JsonFix>>(data).map(|v| v.iter().map(|f| f.to_fix()).count());
    let _ = serde_json::from_slice::<protocol::api::CreateDelivery>(data);
    let _ = serde_json::from_slice::<protocol::api::ChangeStatus>(data);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = protocol::consumer::ConsumerFrame::from_json(s);
    }
});
