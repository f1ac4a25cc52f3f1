//! The replica link's wire format: one request frame and one answer frame per bidirectional
//! stream (postcard framing; log entries inside as JSON). Decoding never panics.

use crate::durable::history::Breadcrumb;
use protocol::framing::{frame_bytes, FrameDecoder};
use protocol::DeliveryId;
use serde::{Deserialize, Serialize};

/// ALPN of the hub-to-hub replication link (on the edge link's QUIC endpoint).
pub const ALPN_REPLICA: &[u8] = b"trackline-replica/1";

/// Largest replication frame (a hand-off carries a delivery's whole log).
pub(crate) const MAX_REPLICA_FRAME: usize = 16 * 1024 * 1024;

/// Most deliveries in one `FetchBreadcrumbs` (keeps the answer well under the frame limit).
pub(crate) const MAX_FETCH_IDS: usize = 64;

/// Most breadcrumbs in one `Breadcrumbs` frame (~40 bytes each): well under the frame limit.
pub(crate) const MAX_CRUMBS_PER_FRAME: usize = 100_000;

/// Most breadcrumbs of one delivery sent with a hand-off (its newest; ~2 h of fixes at 4 s).
pub(crate) const MAX_CRUMBS_PER_HANDOFF: usize = 2_000;

/// Frames of the replica link: one request and one answer per bidirectional stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum ReplicaFrame {
    /// Store these entries durably, then ack. `entries` is JSON (`Vec<ReplicaEntry>`):
    /// status metadata is free-form JSON, which postcard cannot carry.
    Append { from: String, entries: Vec<u8> },
    /// Stored (`Durability::Immediate`).
    Ack,
    /// Not stored; the reason says why.
    Refused { reason: String },
    /// Send me your whole log of these deliveries (before a takeover).
    Fetch { from: String, ids: Vec<DeliveryId> },
    /// Answer to `Fetch`: JSON `Vec<ReplicaEntry>` of the deliveries the peer holds.
    Entries { entries: Vec<u8> },
    /// Store these committed logs (a hand-off or a successor's full copy): merged
    /// monotonically, never fenced. JSON like `Append`.
    Handoff { from: String, entries: Vec<u8> },
    /// Answer to `Append`: stored, except the entries of these deliveries (fenced: the
    /// receiver serves them as their owner, or holds other events under the same seqs).
    Fenced { ids: Vec<DeliveryId> },
    /// Store these breadcrumbs (a copy of what the sender committed; idempotent), then ack.
    /// Also the answer to `FetchBreadcrumbs`.
    Breadcrumbs {
        from: String,
        crumbs: Vec<Breadcrumb>,
    },
    /// Send me the newest breadcrumbs you hold of these deliveries (after a takeover; at most
    /// [`MAX_FETCH_IDS`] ids, [`MAX_CRUMBS_PER_HANDOFF`] breadcrumbs each).
    FetchBreadcrumbs { from: String, ids: Vec<DeliveryId> },
}

impl ReplicaFrame {
    /// The frame as bytes on the stream.
    pub fn encode(&self) -> Vec<u8> {
        frame_bytes(self)
    }

    /// The one frame in `bytes` (a whole stream): an error, never a panic, on anything else.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let mut dec = FrameDecoder::new(MAX_REPLICA_FRAME);
        dec.push(bytes);
        match dec.next_frame::<ReplicaFrame>() {
            Ok(Some(f)) => Ok(f),
            Ok(None) => Err("no complete frame".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// Whether a breadcrumb received from a peer is plausible enough to store.
pub(crate) fn crumb_is_valid(c: &Breadcrumb) -> bool {
    c.lat.is_finite()
        && c.lng.is_finite()
        && (-90.0..=90.0).contains(&c.lat)
        && (-180.0..=180.0).contains(&c.lng)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::copies::ReplicaEntry;
    use crate::tracking::deliveries::{LogEntry, SideRecord};
    use protocol::consumer::StatusEvent;

    #[test]
    fn a_log_entry_replicates_its_idempotency_key_proof_and_devices() {
        let device = notify::DeviceToken::new(notify::Platform::Fcm, "phone").expect("token");
        let e = LogEntry {
            delivery_id: DeliveryId(4),
            record: None,
            events: vec![StatusEvent {
                delivery_id: DeliveryId(4),
                event_seq: 7,
                status: protocol::status::DeliveryStatus::Cancelled,
                ts_ms: 1,
                source: "api".into(),
                metadata: serde_json::json!({"why": "test"}),
            }],
            idempotency_key: Some("k".into()),
            side: vec![SideRecord::Device(device.clone())],
            generation: 1,
        };
        let r = ReplicaEntry::from(&e);
        assert_eq!(r.idempotency, vec![("k".to_owned(), 7)]);
        assert_eq!(r.devices, vec![device]);
        // JSON inside the postcard frame round-trips free-form metadata.
        let frame = ReplicaFrame::Append {
            from: "hub-a".into(),
            entries: serde_json::to_vec(std::slice::from_ref(&r)).expect("json"),
        }
        .encode();
        match ReplicaFrame::decode(&frame).expect("decode") {
            ReplicaFrame::Append { entries, .. } => {
                let back: Vec<ReplicaEntry> = serde_json::from_slice(&entries).expect("json");
                assert_eq!(back, vec![r]);
            }
            other => panic!("{other:?}"),
        }
    }

    fn crumb(lat: f64, lng: f64) -> Breadcrumb {
        Breadcrumb {
            delivery_id: DeliveryId(9),
            ts_ms: 1_700_000_000_000,
            lat,
            lng,
            heading_deg: 90.0,
            speed_mps: 8.0,
            accuracy_m: 5.0,
        }
    }

    #[test]
    fn breadcrumb_frames_round_trip_and_implausible_crumbs_are_refused() {
        let crumbs = vec![crumb(60.17, 24.94), crumb(60.18, 24.95)];
        let frame = ReplicaFrame::Breadcrumbs {
            from: "hub-a".into(),
            crumbs: crumbs.clone(),
        }
        .encode();
        match ReplicaFrame::decode(&frame).expect("decode") {
            ReplicaFrame::Breadcrumbs { from, crumbs: back } => {
                assert_eq!(from, "hub-a");
                assert_eq!(back, crumbs);
            }
            other => panic!("{other:?}"),
        }
        assert!(crumb_is_valid(&crumb(60.17, 24.94)));
        for (lat, lng) in [
            (f64::NAN, 0.0),
            (0.0, f64::INFINITY),
            (91.0, 0.0),
            (0.0, -180.5),
        ] {
            assert!(!crumb_is_valid(&crumb(lat, lng)), "{lat},{lng}");
        }
    }

    #[test]
    fn a_truncated_frame_is_an_error() {
        let frame = ReplicaFrame::Fetch {
            from: "hub-a".into(),
            ids: vec![DeliveryId(1), DeliveryId(2)],
        }
        .encode();
        assert!(ReplicaFrame::decode(&frame[..frame.len() - 1]).is_err());
        assert!(ReplicaFrame::decode(&[]).is_err());
    }

    proptest::proptest! {
        /// The replica link's decoder (peers are authenticated, but a bug or a corrupted
        /// peer must not bring a hub down) never panics on arbitrary bytes, whole or split.
        #[test]
        fn replica_frame_decoding_never_panics(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512),
            split in 0usize..512,
        ) {
            let split = split.min(bytes.len());
            let mut dec = FrameDecoder::new(MAX_REPLICA_FRAME);
            for chunk in [&bytes[..split], &bytes[split..]] {
                dec.push(chunk);
                while let Ok(Some(_)) = dec.next_frame::<ReplicaFrame>() {}
            }
            let _ = ReplicaFrame::decode(&bytes);
        }
    }
}
