//! The replication plan of one committed batch: which hub must store a copy of each entry
//! before it is acknowledged (the successor when this hub owns the delivery, else the owner),
//! and, once the copies are answered, which deliveries' entries must fail (`min_copies`).

use super::view::View;
use crate::durable::copies::ReplicaEntry;
use crate::durable::store::Refusal;
use crate::tracking::deliveries::LogEntry;
use cluster::HubInfo;
use protocol::DeliveryId;
use std::collections::{BTreeMap, HashMap};

/// Where this hub's copy of `id` must go: the successor when we own it, else the owner.
pub fn replica_target(me: &str, view: &dyn View, id: DeliveryId) -> Option<HubInfo> {
    view.owners_of(id, 2).into_iter().find(|h| h.id != me)
}

/// One replica's share of a batch.
#[derive(Clone, Debug, PartialEq)]
pub struct ReplicaCopy {
    pub to: HubInfo,
    pub entries: Vec<ReplicaEntry>,
    /// Status events among them.
    pub events: u64,
}

/// The copies of one batch, and what already fails for want of a replica.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ReplicationPlan {
    /// One exchange per replica, by hub id.
    pub copies: Vec<ReplicaCopy>,
    /// Status changes with no replica at all while `min_copies` is 2.
    pub refused: Vec<(DeliveryId, Refusal)>,
    /// Status events acknowledged without a replica (`min_copies` 1, none live).
    pub alone: u64,
}

impl ReplicationPlan {
    /// Plans the copies of `entries` committed by `me`, each carrying the write epoch of its
    /// delivery (`epochs`; absent: 0).
    pub fn new(
        me: &str,
        view: &dyn View,
        min_copies: u8,
        entries: &[LogEntry],
        epochs: &HashMap<DeliveryId, u64>,
    ) -> Self {
        let mut by_target: BTreeMap<String, ReplicaCopy> = BTreeMap::new();
        let mut plan = Self::default();
        for e in entries {
            let epoch = epochs.get(&e.delivery_id).copied().unwrap_or(0);
            let entry = ReplicaEntry::written(e, epoch);
            if entry.is_empty() {
                continue;
            }
            let n = e.events.len() as u64;
            match replica_target(me, view, e.delivery_id) {
                Some(h) => {
                    let slot = by_target
                        .entry(h.id.clone())
                        .or_insert_with(|| ReplicaCopy {
                            to: h,
                            entries: Vec::new(),
                            events: 0,
                        });
                    slot.entries.push(entry);
                    slot.events += n;
                }
                None if min_copies >= 2 && n > 0 => {
                    plan.refused.push((e.delivery_id, Refusal::NoReplica));
                }
                None => plan.alone += n,
            }
        }
        plan.copies = by_target.into_values().collect();
        plan
    }
}

/// How one copy was answered.
#[derive(Clone, Debug, PartialEq)]
pub enum CopyOutcome {
    /// Stored, except the entries of these deliveries (fenced).
    Stored { fenced: Vec<DeliveryId> },
    /// Not stored (timeout, refused, no connection).
    Failed,
}

/// What a copy's answer means for the batch.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settled {
    /// Deliveries whose entries must fail (not acknowledged; the client retries).
    pub refused: Vec<(DeliveryId, Refusal)>,
    /// Status events stored by the replica.
    pub replicated: u64,
    /// Status events acknowledged without the replica's copy (`min_copies` 1).
    pub unreplicated: u64,
    /// Deliveries refused because no replica stored them (`min_copies` 2).
    pub no_replica: u64,
    /// Deliveries the replica fenced.
    pub fenced: u64,
}

/// Settles one copy: with `min_copies` 2 a failed copy fails its status changes; with 1 they
/// are acknowledged unreplicated. Fenced deliveries always fail.
pub fn settle(copy: &ReplicaCopy, outcome: &CopyOutcome, min_copies: u8) -> Settled {
    let mut s = Settled::default();
    match outcome {
        CopyOutcome::Stored { fenced } => {
            let refused_events = copy
                .entries
                .iter()
                .filter(|e| fenced.contains(&e.delivery_id))
                .map(|e| e.events.len() as u64)
                .sum::<u64>();
            s.replicated = copy.events - refused_events.min(copy.events);
            s.fenced = fenced.len() as u64;
            s.refused = fenced.iter().map(|id| (*id, Refusal::Fenced)).collect();
        }
        CopyOutcome::Failed if min_copies >= 2 => {
            s.refused = copy
                .entries
                .iter()
                .filter(|e| !e.events.is_empty())
                .map(|e| (e.delivery_id, Refusal::NoReplica))
                .collect();
            s.no_replica = s.refused.len() as u64;
        }
        CopyOutcome::Failed => s.unreplicated = copy.events,
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::StaticView;
    use protocol::consumer::StatusEvent;

    fn entry(id: u64, seq: u64) -> LogEntry {
        LogEntry {
            delivery_id: DeliveryId(id),
            record: None,
            events: vec![StatusEvent {
                delivery_id: DeliveryId(id),
                event_seq: seq,
                status: protocol::status::DeliveryStatus::PickedUp,
                ts_ms: 1,
                source: "test".into(),
                metadata: serde_json::Value::Null,
            }],
            idempotency_key: None,
            side: Vec::new(),
            generation: 1,
        }
    }

    fn owned_by(view: &StaticView, hub: &str) -> u64 {
        (1..1000)
            .find(|d| view.owner_of(DeliveryId(*d)).is_some_and(|h| h.id == hub))
            .expect("some delivery")
    }

    #[test]
    fn an_owned_delivery_is_copied_to_its_successor_and_a_foreign_one_to_its_owner() {
        let view = StaticView::of(&["a", "b", "c"]);
        let mine = owned_by(&view, "a");
        let theirs = owned_by(&view, "c");
        let plan = ReplicationPlan::new(
            "a",
            &view,
            1,
            &[entry(mine, 1), entry(theirs, 1)],
            &HashMap::new(),
        );
        let succ = view.owners_of(DeliveryId(mine), 2)[1].id.clone();
        let mut targets: Vec<(String, Vec<DeliveryId>)> = plan
            .copies
            .iter()
            .map(|c| {
                (
                    c.to.id.clone(),
                    c.entries.iter().map(|e| e.delivery_id).collect(),
                )
            })
            .collect();
        targets.sort();
        let mut want = vec![
            (succ, vec![DeliveryId(mine)]),
            ("c".to_owned(), vec![DeliveryId(theirs)]),
        ];
        want.sort();
        if want[0].0 == want[1].0 {
            // Both go to c: one exchange carries both.
            assert_eq!(targets.len(), 1);
            assert_eq!(targets[0].1.len(), 2);
        } else {
            assert_eq!(targets, want);
        }
        assert!(plan.refused.is_empty());
    }

    #[test]
    fn alone_a_status_change_is_refused_with_min_copies_2_and_acknowledged_with_1() {
        let view = StaticView::of(&["a"]);
        let plan = ReplicationPlan::new("a", &view, 2, &[entry(5, 1)], &HashMap::new());
        assert_eq!(plan.refused, vec![(DeliveryId(5), Refusal::NoReplica)]);
        assert!(plan.copies.is_empty());
        let plan = ReplicationPlan::new("a", &view, 1, &[entry(5, 1)], &HashMap::new());
        assert!(plan.refused.is_empty());
        assert_eq!(plan.alone, 1);
    }

    #[test]
    fn a_failed_copy_fails_its_status_changes_only_with_min_copies_2() {
        let view = StaticView::of(&["a", "b"]);
        let plan =
            ReplicationPlan::new("a", &view, 2, &[entry(5, 1), entry(6, 1)], &HashMap::new());
        let copy = &plan.copies[0];
        let strict = settle(copy, &CopyOutcome::Failed, 2);
        assert_eq!(strict.refused.len(), 2);
        assert_eq!(strict.no_replica, 2);
        let lax = settle(copy, &CopyOutcome::Failed, 1);
        assert!(lax.refused.is_empty());
        assert_eq!(lax.unreplicated, 2);
    }

    #[test]
    fn fenced_deliveries_fail_and_the_rest_count_as_replicated() {
        let view = StaticView::of(&["a", "b"]);
        let plan =
            ReplicationPlan::new("a", &view, 1, &[entry(5, 1), entry(6, 1)], &HashMap::new());
        let s = settle(
            &plan.copies[0],
            &CopyOutcome::Stored {
                fenced: vec![DeliveryId(6)],
            },
            1,
        );
        assert_eq!(s.refused, vec![(DeliveryId(6), Refusal::Fenced)]);
        assert_eq!(s.replicated, 1);
        assert_eq!(s.fenced, 1);
    }
}
