//! A delivery's durable state as it travels between hubs: one new log entry (live
//! replication), or a delivery's whole log (a hand-off, a successor's copy, a takeover's fetch).

use crate::tracking::deliveries::{DeliveryRecord, LogEntry, SideRecord};
use crate::tracking::proof::ProofRecord;
use protocol::consumer::StatusEvent;
use protocol::DeliveryId;
use serde::{Deserialize, Serialize};

/// What travels to a replica: one log entry, or a delivery's whole durable state (hand-off).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReplicaEntry {
    pub delivery_id: DeliveryId,
    pub record: Option<DeliveryRecord>,
    pub events: Vec<StatusEvent>,
    /// Idempotency keys and the seq each produced (they replicate, so a retried request is
    /// replayed by the next owner instead of applied twice).
    pub idempotency: Vec<(String, u64)>,
    pub proofs: Vec<ProofRecord>,
    pub devices: Vec<notify::DeviceToken>,
}

impl From<&LogEntry> for ReplicaEntry {
    fn from(e: &LogEntry) -> Self {
        let mut proofs = Vec::new();
        let mut devices = Vec::new();
        for side in &e.side {
            match side {
                SideRecord::Proof(p) => proofs.push(p.clone()),
                SideRecord::Device(d) => devices.push(d.clone()),
                // Anomalies are operator hints, not replicated (docs/cluster.md).
                SideRecord::Anomaly(_) => {}
            }
        }
        ReplicaEntry {
            delivery_id: e.delivery_id,
            record: e.record.clone(),
            events: e.events.clone(),
            idempotency: match (&e.idempotency_key, e.events.last()) {
                (Some(k), Some(ev)) => vec![(k.clone(), ev.event_seq)],
                _ => Vec::new(),
            },
            proofs,
            devices,
        }
    }
}

impl ReplicaEntry {
    /// Whether it carries nothing to store.
    pub fn is_empty(&self) -> bool {
        self.record.is_none()
            && self.events.is_empty()
            && self.proofs.is_empty()
            && self.devices.is_empty()
    }
}
