//! Taking a delivery over: what a hub's whole log of a delivery is (sent on a hand-off, a
//! successor's copy, or as the answer to a takeover's fetch), and merging the copies peers
//! answered with into the local log.

use crate::durable::copies::ReplicaEntry;
use crate::durable::store::{Applied, Store, StoreError};
use cluster::HubInfo;
use protocol::DeliveryId;
use std::collections::BTreeMap;

/// Hubs that may hold events of a delivery this hub does not: a copy sent to them was not
/// answered (lost, late, or its answer lost), so they may have stored an event this hub then
/// failed. Taking the delivery over again (after the failure unloaded it) must first fetch
/// from each of them, even when the view no longer lists them: otherwise the next event
/// would reuse that seq and two events would share it.
#[derive(Clone, Debug, Default)]
pub struct InDoubt(BTreeMap<DeliveryId, BTreeMap<String, HubInfo>>);

impl InDoubt {
    /// A copy of `ids` to `to` was not answered.
    pub fn handle_unanswered(&mut self, to: &HubInfo, ids: impl IntoIterator<Item = DeliveryId>) {
        for id in ids {
            self.0
                .entry(id)
                .or_default()
                .insert(to.id.clone(), to.clone());
        }
    }

    /// Whether a copy of `id` went unanswered and no takeover has heard from that hub since.
    pub fn holds(&self, id: DeliveryId) -> bool {
        self.0.contains_key(&id)
    }

    /// The hubs a takeover of `ids` must fetch from besides the live ones.
    pub fn peers(&self, ids: &[DeliveryId]) -> Vec<HubInfo> {
        let mut out: BTreeMap<String, HubInfo> = BTreeMap::new();
        for id in ids {
            for (k, h) in self.0.get(id).into_iter().flatten() {
                out.insert(k.clone(), h.clone());
            }
        }
        out.into_values().collect()
    }

    /// The takeover of `ids` asked `asked` (the live peers and those in doubt) and heard
    /// from `answered`: those are no longer in doubt. Returns the ids that must wait: all of
    /// them when a peer asked did not answer (it may hold newer events of any of them), else
    /// those still in doubt.
    pub fn handle_fetched(
        &mut self,
        ids: &[DeliveryId],
        asked: &[String],
        answered: &[String],
    ) -> Vec<DeliveryId> {
        for id in ids {
            if let Some(hubs) = self.0.get_mut(id) {
                hubs.retain(|k, _| !answered.contains(k));
                if hubs.is_empty() {
                    self.0.remove(id);
                }
            }
        }
        if asked.iter().any(|a| !answered.contains(a)) {
            return ids.to_vec();
        }
        let mut waiting = Vec::new();
        for id in ids {
            if let Some(hubs) = self.0.get_mut(id) {
                hubs.retain(|k, _| !answered.contains(k));
                if hubs.is_empty() {
                    self.0.remove(id);
                } else {
                    waiting.push(*id);
                }
            }
        }
        waiting
    }
}

/// A delivery's whole durable state in `store`, as a hand-off entry; `None` when it holds
/// nothing of it. A replica that missed the delivery's creation (and so holds no record)
/// still sends the events and idempotency keys it holds: they may be the only other copy of
/// events acknowledged after it became the successor.
pub fn full_log(store: &Store, id: DeliveryId) -> Result<Option<ReplicaEntry>, StoreError> {
    let proofs: Vec<_> = store.proof(id)?.into_iter().collect();
    let devices = store
        .devices()?
        .into_iter()
        .filter(|(d, _)| *d == id)
        .map(|(_, t)| t)
        .collect::<Vec<_>>();
    let (record, events, idempotency, tracking, plan) = match store.load_delivery(id)? {
        Some(r) => (Some(r.record), r.events, r.idempotency, r.tracking, r.plan),
        None => (
            None,
            store.events_after(id, 0)?,
            store.idempotency_keys(id)?,
            store.tracking(id)?,
            crate::durable::plans::load_plan(store, id)?,
        ),
    };
    let (epoch, mut epochs) = store.epochs_of(id, events.iter().map(|e| e.event_seq))?;
    if epochs.iter().all(|e| *e == 0) {
        epochs.clear();
    }
    let entry = ReplicaEntry {
        delivery_id: id,
        record,
        events,
        idempotency,
        proofs,
        devices,
        tracking,
        plan,
        epochs,
        epoch,
    };
    Ok((!entry.is_empty()).then_some(entry))
}

/// Merges copies fetched from a peer into the local log: monotone (events and keys already
/// stored are kept), except that an event stored under a lower write epoch than the copy's
/// event under the same seq is a stray and is replaced ([`Applied::superseded`]); other
/// events under seqs we hold are conflicts (ours kept, [`Applied::conflicts`]). The epochs
/// the copies report raise what this hub knows, so [`begin`] picks a higher one.
pub fn merge(store: &Store, copies: &[ReplicaEntry]) -> Result<Applied, StoreError> {
    store.apply_replica_checked(copies, false)
}

/// After a takeover merged the peers' copies: the deliveries of `copies` (one peer's answer)
/// holding an event the merged local log does not hold as it is, under its seq: a stray
/// replaced by an event of a later write epoch, or another event than ours under one epoch.
/// That peer is sent the merged log of those deliveries (merged there like a hand-off, so its
/// strays are replaced in turn): otherwise it would keep another event under a seq for good,
/// since it may never be the delivery's successor again.
pub fn stale_copies(store: &Store, copies: &[ReplicaEntry]) -> Result<Vec<DeliveryId>, StoreError> {
    let mut stale = Vec::new();
    for copy in copies {
        if copy.events.is_empty() {
            continue;
        }
        let ours = store.events_after(copy.delivery_id, 0)?;
        let differs = copy.events.iter().any(|ev| {
            ours.iter()
                .find(|o| o.event_seq == ev.event_seq)
                .is_none_or(|o| o != ev)
        });
        if differs {
            stale.push(copy.delivery_id);
        }
    }
    Ok(stale)
}

/// After a sync merged the owner's `copies`: the deliveries of which this hub still holds
/// events past the end of the owner's log. Synced again at the next pass: such an event may
/// be a stray that the owner has not written another event over YET (it took the delivery
/// over without hearing from this hub), and only the owner's event under that seq replaces
/// it. Rare: otherwise the owner's log is never behind a copy's.
pub fn ahead_of(store: &Store, copies: &[ReplicaEntry]) -> Result<Vec<DeliveryId>, StoreError> {
    let mut ahead = Vec::new();
    for copy in copies {
        let theirs = copy.events.last().map_or(0, |e| e.event_seq);
        if !store.events_after(copy.delivery_id, theirs)?.is_empty() {
            ahead.push(copy.delivery_id);
        }
    }
    Ok(ahead)
}

/// Whether the local log of `id` lacks an event below its last one (a copy that went to
/// this hub past an event it never got). Such a log is not loaded from a copy
/// ([`super::fencing::LiveCore::Load`]): the rebalancer's takeover, which fetches from every
/// peer, loads it instead.
pub fn has_hole(store: &Store, id: DeliveryId) -> Result<bool, StoreError> {
    let events = store.events_after(id, 0)?;
    Ok(events
        .iter()
        .enumerate()
        .any(|(i, e)| e.event_seq != i as u64 + 1))
}

/// Taking `id` over, once every peer asked has answered and its copy is merged: this hub
/// writes it from now on under a new write epoch, higher than any it or those peers knew
/// (so a stray written under an earlier epoch loses to what this hub writes under its seq).
pub fn begin(store: &Store, id: DeliveryId) -> Result<u64, StoreError> {
    store.begin_epoch(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::hub_info;
    use protocol::consumer::StatusEvent;

    #[test]
    fn a_replica_that_missed_the_creation_still_sends_its_later_events_and_keys() {
        let store = Store::in_memory().expect("store");
        let d = DeliveryId(5);
        let later = ReplicaEntry {
            delivery_id: d,
            record: None,
            events: vec![StatusEvent {
                delivery_id: d,
                event_seq: 4,
                status: protocol::status::DeliveryStatus::EnRoute,
                ts_ms: 1,
                source: "api".into(),
                metadata: serde_json::Value::Null,
            }],
            idempotency: vec![("retry-me".into(), 4)],
            proofs: Vec::new(),
            devices: Vec::new(),
            tracking: None,
            plan: None,
            epochs: Vec::new(),
            epoch: 0,
        };
        store
            .apply_replica(std::slice::from_ref(&later))
            .expect("stored");
        assert_eq!(full_log(&store, d).expect("read"), Some(later));
        assert_eq!(full_log(&store, DeliveryId(6)).expect("read"), None);
    }

    fn event(seq: u64, status: protocol::status::DeliveryStatus) -> StatusEvent {
        StatusEvent {
            delivery_id: DeliveryId(5),
            event_seq: seq,
            status,
            ts_ms: 1,
            source: "api".into(),
            metadata: serde_json::Value::Null,
        }
    }

    fn copy(events: Vec<StatusEvent>, epochs: Vec<u64>) -> ReplicaEntry {
        ReplicaEntry {
            delivery_id: DeliveryId(5),
            record: None,
            events,
            idempotency: Vec::new(),
            proofs: Vec::new(),
            devices: Vec::new(),
            tracking: None,
            plan: None,
            epoch: epochs.iter().copied().max().unwrap_or(0),
            epochs,
        }
    }

    #[test]
    fn a_takeover_prefers_the_later_epoch_and_names_the_peers_holding_strays() {
        use protocol::status::DeliveryStatus::*;
        let store = Store::in_memory().expect("store");
        // Our copy: #1, and a stray #2 (epoch 1) whose write failed.
        let ours = copy(vec![event(1, Confirmed), event(2, EnRoute)], vec![0, 1]);
        store
            .apply_replica(std::slice::from_ref(&ours))
            .expect("stored");
        // A peer holds #2 as written by a later owner (epoch 2), and one an older #1 only.
        let later = copy(vec![event(1, Confirmed), event(2, PickedUp)], vec![0, 2]);
        let behind = copy(vec![event(1, Confirmed)], vec![0]);
        let applied = merge(&store, std::slice::from_ref(&later)).expect("merged");
        assert_eq!(applied.superseded, vec![DeliveryId(5)]);
        assert_eq!(
            store.events_after(DeliveryId(5), 0).expect("events"),
            later.events
        );
        assert_eq!(begin(&store, DeliveryId(5)).expect("begin"), 3);
        // The peer that answered with the stray gets the merged log; the others need nothing.
        assert_eq!(
            stale_copies(&store, &[ours]).expect("compared"),
            vec![DeliveryId(5)]
        );
        assert!(stale_copies(&store, &[later, behind])
            .expect("compared")
            .is_empty());
    }

    #[test]
    fn a_log_missing_an_event_below_its_last_has_a_hole() {
        // Seed 8045: a copy of #1 and #3 (#2 adopted by a takeover, never copied there) was
        // handed to the owner, which loaded it and served the hole.
        use protocol::status::DeliveryStatus::*;
        let store = Store::in_memory().expect("store");
        store
            .apply_replica(&[copy(vec![event(1, Confirmed), event(3, PickedUp)], vec![])])
            .expect("stored");
        assert!(has_hole(&store, DeliveryId(5)).expect("read"));
        store
            .apply_replica(&[copy(vec![event(2, EnRoute)], vec![])])
            .expect("stored");
        assert!(!has_hole(&store, DeliveryId(5)).expect("read"));
    }

    #[test]
    fn a_delivery_whose_copy_went_unanswered_waits_for_that_hub() {
        let mut doubt = InDoubt::default();
        let (d, e) = (DeliveryId(1), DeliveryId(2));
        doubt.handle_unanswered(&hub_info("b"), [d]);
        assert_eq!(doubt.peers(&[d, e]), vec![hub_info("b")]);
        assert!(doubt.peers(&[e]).is_empty());
        // b did not answer the fetch: d waits; e was never in doubt.
        let c = vec!["c".to_owned()];
        assert_eq!(doubt.handle_fetched(&[d, e], &c, &c), vec![d]);
        let bc = vec!["b".to_owned(), "c".to_owned()];
        assert_eq!(
            doubt.handle_fetched(&[d], &bc, &bc),
            Vec::<DeliveryId>::new()
        );
        assert!(doubt.peers(&[d]).is_empty());
        // A live peer that did not answer may hold newer events of any of them.
        assert_eq!(doubt.handle_fetched(&[d, e], &bc, &c), vec![d, e]);
    }
}
