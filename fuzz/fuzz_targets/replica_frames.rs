//! Fuzzes what a hub decodes from a peer on the replica link: the frame
//! (`ReplicaFrame::decode`, postcard) and the JSON log entries inside `Append`, `Entries` and
//! `Handoff`. Whatever decodes must re-encode and decode to the same frame.
#![no_main]
use libfuzzer_sys::fuzz_target;
use region_hub::durable::copies::ReplicaEntry;
use region_hub::replication::wire::ReplicaFrame;

fuzz_target!(|data: &[u8]| {
    // The raw bytes as one JSON entries payload, as a peer could send inside a valid frame.
    let _ = serde_json::from_slice::<Vec<ReplicaEntry>>(data);
    let Ok(frame) = ReplicaFrame::decode(data) else {
        return;
    };
    let again = ReplicaFrame::decode(&frame.encode()).expect("an encoded frame decodes");
    assert_eq!(again, frame);
    if let ReplicaFrame::Append { entries, .. }
    | ReplicaFrame::Entries { entries }
    | ReplicaFrame::Handoff { entries, .. } = &frame
    {
        let _ = serde_json::from_slice::<Vec<ReplicaEntry>>(entries);
    }
});
