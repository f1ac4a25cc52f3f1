//! A delivery's durable state as it travels between hubs: one new log entry (live
//! replication), or a delivery's whole log (a hand-off, a successor's copy, a takeover's fetch).

use crate::tracking::deliveries::{DeliveryRecord, LogEntry, SideRecord, TrackingState};
use crate::tracking::eta::StoredPlan;
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
    /// The delivery's zone and anomaly state (newest version wins). Absent from copies sent
    /// by older hubs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tracking: Option<TrackingState>,
    /// The delivery's route plan (the higher version wins), so the next owner follows it
    /// instead of planning again. Absent from copies sent by older hubs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<StoredPlan>,
}

impl From<&LogEntry> for ReplicaEntry {
    fn from(e: &LogEntry) -> Self {
        let mut proofs = Vec::new();
        let mut devices = Vec::new();
        let mut tracking = None;
        let mut plan = None;
        for side in &e.side {
            match side {
                SideRecord::Proof(p) => proofs.push(p.clone()),
                SideRecord::Device(d) => devices.push(d.clone()),
                SideRecord::Tracking(t) => tracking = Some(t.clone()),
                SideRecord::Plan(p) => plan = Some(p.clone()),
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
            tracking,
            plan,
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
            && self.tracking.is_none()
            && self.plan.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_from_a_hub_that_sends_no_tracking_state_or_plan_still_decodes() {
        let old = r#"{"delivery_id":4,"record":null,"events":[],"idempotency":[],"proofs":[],"devices":[]}"#;
        let e: ReplicaEntry = serde_json::from_str(old).expect("decodes");
        assert!(e.tracking.is_none() && e.plan.is_none());
        assert!(e.is_empty());
        // And a copy without them is sent without them (an older hub reads it).
        let back = serde_json::to_string(&e).expect("json");
        assert!(
            !back.contains("tracking") && !back.contains("plan"),
            "{back}"
        );
    }
}
