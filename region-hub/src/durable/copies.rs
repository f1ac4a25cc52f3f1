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
    /// The write epoch of each of `events`, in the same order (`docs/cluster.md`, *Write
    /// epochs*): of two different events under one seq, the one under the higher epoch was
    /// written by the later owner. Missing entries are 0 (copies from older hubs, events
    /// written before epochs).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub epochs: Vec<u64>,
    /// The highest write epoch the sender knows of the delivery (a takeover that merges this
    /// copy writes under a higher one). 0 from older hubs.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub epoch: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
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
            epochs: Vec::new(),
            epoch: 0,
        }
    }
}

impl ReplicaEntry {
    /// A new log entry as copied by a hub writing its delivery under write epoch `epoch`.
    pub fn written(e: &LogEntry, epoch: u64) -> Self {
        let mut entry = Self::from(e);
        if epoch > 0 {
            entry.epochs = vec![epoch; entry.events.len()];
            entry.epoch = epoch;
        }
        entry
    }

    /// The write epoch of `events[i]`.
    pub fn epoch_of(&self, i: usize) -> u64 {
        self.epochs.get(i).copied().unwrap_or(0)
    }

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

    #[test]
    fn a_copy_without_epochs_decodes_at_epoch_0_and_one_with_them_round_trips() {
        let old = r#"{"delivery_id":4,"record":null,"events":[{"delivery_id":4,"event_seq":1,"status":"confirmed","ts_ms":1,"source":"api","metadata":null}],"idempotency":[],"proofs":[],"devices":[]}"#;
        let mut e: ReplicaEntry = serde_json::from_str(old).expect("decodes");
        assert_eq!((e.epoch, e.epoch_of(0), e.epoch_of(5)), (0, 0, 0));
        let back = serde_json::to_string(&e).expect("json");
        assert!(
            !back.contains("epoch"),
            "sent as an older hub reads it: {back}"
        );
        e.epochs = vec![3];
        e.epoch = 4;
        let json = serde_json::to_string(&e).expect("json");
        let again: ReplicaEntry = serde_json::from_str(&json).expect("decodes");
        assert_eq!((again.epoch, again.epoch_of(0)), (4, 3));
        assert_eq!(again, e);
    }
}
