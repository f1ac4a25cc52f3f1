//! Fencing of copies received from another hub: a delivery this hub serves as its owner is not
//! written by another hub (the sender's view is stale, or ours is): its live copies are
//! refused, so the sender's write fails and is retried at the owner. And what a received
//! copy means for the live core (load, unload, keep).

use super::view::View;
use crate::durable::copies::ReplicaEntry;
use protocol::DeliveryId;

/// Whether this hub serves `id` as its owner: it owns it in its view and holds it live.
pub fn serving(me: &str, view: &dyn View, id: DeliveryId, held: bool) -> bool {
    held && view.owner_of(id).is_none_or(|h| h.id == me)
}

/// Splits received entries into those to store and the deliveries fenced. Only live
/// replication (`Append`) is fenced; hand-offs and full copies are merged monotonically.
/// `held`: whether this hub holds a delivery live.
pub fn fence(
    me: &str,
    view: &dyn View,
    live: bool,
    entries: Vec<ReplicaEntry>,
    held: impl Fn(DeliveryId) -> bool,
) -> (Vec<ReplicaEntry>, Vec<DeliveryId>) {
    if !live {
        return (entries, Vec::new());
    }
    let mut fenced = Vec::new();
    let kept = entries
        .into_iter()
        .filter(|e| {
            let s = serving(me, view, e.delivery_id, held(e.delivery_id));
            if s {
                fenced.push(e.delivery_id);
            }
            !s
        })
        .collect();
    (kept, fenced)
}

/// What a stored copy means for the live core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveCore {
    /// Nothing changes.
    Keep,
    /// (Re)load the delivery from the log.
    Load,
    /// Another hub writes the delivery: forget it here (its consumers reconnect to the
    /// owner) until it is ours again and taken over afresh.
    Unload,
}

/// What a stored copy means for the live core. A delivery held live and owned here is
/// reloaded only when the copy is newer than what it serves (we took over a stale copy); one
/// held live but owned by another hub in our view is unloaded: that hub writes it, and
/// reloading its copies would serve a log with the gaps of every copy that went elsewhere
/// (the successor changes with the view) when the delivery becomes ours again without a
/// rebalancer pass in between; one not held is loaded when this hub owns it (a hand-off to
/// us). A delivery in doubt here (`in_doubt`: a copy this hub sent of it went unanswered,
/// [`super::takeover::InDoubt`]) is never loaded from a copy: the hub in doubt may hold an
/// event under the next seq, so only a takeover that heard from it loads the delivery.
/// `held_last_seq`: the last event seq of the live delivery, if held. `superseded`: the copy
/// replaced events of the local log (strays under a lower write epoch,
/// [`crate::durable::store::Applied::superseded`]): a live core holding them is unloaded,
/// since a later owner wrote the delivery; it is taken over afresh when ours. `live`: the copy
/// is live replication (`Append`): its sender writes the delivery, so one not held here is not
/// loaded from it even when ours in our view (the views disagree; the local log may lack
/// events the sender's successor got meanwhile): the rebalancer's takeover fetches first.
pub fn after_store(
    me: &str,
    view: &dyn View,
    entry: &ReplicaEntry,
    held_last_seq: Option<u64>,
    in_doubt: bool,
    superseded: bool,
    live: bool,
) -> LiveCore {
    let ours = view.owner_of(entry.delivery_id).is_none_or(|h| h.id == me);
    let newest = entry.events.last().map_or(0, |ev| ev.event_seq);
    match held_last_seq {
        Some(_) if !ours || superseded => LiveCore::Unload,
        _ if in_doubt => LiveCore::Keep,
        Some(last) if newest > last => LiveCore::Load,
        None if ours && !live => LiveCore::Load,
        _ => LiveCore::Keep,
    }
}

/// After storing `kept` (with `apply_replica_checked(kept, live)`): live copies that
/// conflicted (the store holds other events under their seqs: another hub wrote them) are
/// fenced too. Returns the entries stored and every fenced delivery.
pub fn with_conflicts(
    kept: Vec<ReplicaEntry>,
    mut fenced: Vec<DeliveryId>,
    conflicts: &[DeliveryId],
    live: bool,
) -> (Vec<ReplicaEntry>, Vec<DeliveryId>) {
    if live {
        fenced.extend(conflicts.iter().copied());
    }
    let stored = kept
        .into_iter()
        .filter(|e| !fenced.contains(&e.delivery_id))
        .collect();
    (stored, fenced)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::StaticView;
    use protocol::consumer::StatusEvent;

    fn copy(id: u64, seq: u64) -> ReplicaEntry {
        ReplicaEntry {
            delivery_id: DeliveryId(id),
            record: None,
            events: vec![StatusEvent {
                delivery_id: DeliveryId(id),
                event_seq: seq,
                status: protocol::status::DeliveryStatus::EnRoute,
                ts_ms: 1,
                source: "test".into(),
                metadata: serde_json::Value::Null,
            }],
            idempotency: Vec::new(),
            proofs: Vec::new(),
            devices: Vec::new(),
            tracking: None,
            plan: None,
            epochs: Vec::new(),
            epoch: 0,
        }
    }

    fn owned_by(view: &StaticView, hub: &str) -> u64 {
        (1..1000)
            .find(|d| view.owner_of(DeliveryId(*d)).is_some_and(|h| h.id == hub))
            .expect("some delivery")
    }

    #[test]
    fn live_copies_of_a_delivery_this_hub_serves_are_fenced() {
        let view = StaticView::of(&["a", "b"]);
        let mine = owned_by(&view, "a");
        let theirs = owned_by(&view, "b");
        let (kept, fenced) = fence(
            "a",
            &view,
            true,
            vec![copy(mine, 3), copy(theirs, 3)],
            |_| true,
        );
        assert_eq!(fenced, vec![DeliveryId(mine)]);
        assert_eq!(kept, vec![copy(theirs, 3)]);
    }

    #[test]
    fn a_delivery_owned_but_not_held_and_hand_offs_are_not_fenced() {
        let view = StaticView::of(&["a", "b"]);
        let mine = owned_by(&view, "a");
        let (kept, fenced) = fence("a", &view, true, vec![copy(mine, 3)], |_| false);
        assert!(fenced.is_empty());
        assert_eq!(kept.len(), 1);
        let (kept, fenced) = fence("a", &view, false, vec![copy(mine, 3)], |_| true);
        assert!(fenced.is_empty(), "a hand-off is merged, never fenced");
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn a_held_delivery_is_reloaded_only_from_a_newer_copy_and_an_unheld_one_only_if_owned() {
        let view = StaticView::of(&["a", "b"]);
        let mine = owned_by(&view, "a");
        let theirs = owned_by(&view, "b");
        assert_eq!(
            after_store("a", &view, &copy(mine, 5), Some(4), false, false, false),
            LiveCore::Load
        );
        assert_eq!(
            after_store("a", &view, &copy(mine, 5), Some(5), false, false, false),
            LiveCore::Keep
        );
        assert_eq!(
            after_store("a", &view, &copy(mine, 5), None, false, false, false),
            LiveCore::Load
        );
        assert_eq!(
            after_store("a", &view, &copy(theirs, 5), None, false, false, false),
            LiveCore::Keep
        );
    }

    #[test]
    fn a_copy_of_a_delivery_held_live_but_owned_elsewhere_unloads_it() {
        // Seeds 5950, 7577, 7847: a hub took a delivery over while partitioned from its owner;
        // after the heal it received the owner's copies as its successor and reloaded them,
        // gap and all (an event acknowledged while another hub was the successor); when the
        // owner went away it served that log without a takeover.
        let view = StaticView::of(&["a", "b"]);
        let theirs = owned_by(&view, "b");
        assert_eq!(
            after_store("a", &view, &copy(theirs, 8), Some(6), false, false, false),
            LiveCore::Unload
        );
        assert_eq!(
            after_store("a", &view, &copy(theirs, 3), Some(6), false, false, false),
            LiveCore::Unload
        );
    }

    #[test]
    fn a_hand_off_of_a_delivery_in_doubt_does_not_load_it() {
        // Seed 1281: a's copy of #4 to c went unanswered (c stored it), a failed the write;
        // another hub handed a the log up to #3, a loaded it and wrote another event as #4
        // without asking c first.
        let view = StaticView::of(&["a", "b"]);
        let mine = owned_by(&view, "a");
        assert_eq!(
            after_store("a", &view, &copy(mine, 3), None, true, false, false),
            LiveCore::Keep
        );
        assert_eq!(
            after_store("a", &view, &copy(mine, 5), Some(3), true, false, false),
            LiveCore::Keep
        );
        let theirs = owned_by(&view, "b");
        assert_eq!(
            after_store("a", &view, &copy(theirs, 5), Some(3), true, false, false),
            LiveCore::Unload
        );
    }

    #[test]
    fn a_live_copy_of_a_delivery_owned_here_but_not_held_does_not_load_it() {
        // Seed 6617: a flap made b believe it owned a delivery a still wrote; a's live copy
        // of #7 loaded b's log, which lacked #6 (copied to another successor meanwhile).
        let view = StaticView::of(&["a", "b"]);
        let mine = owned_by(&view, "a");
        assert_eq!(
            after_store("a", &view, &copy(mine, 7), None, false, false, true),
            LiveCore::Keep
        );
    }

    #[test]
    fn a_held_delivery_whose_events_a_later_epoch_replaced_is_unloaded() {
        // The live core holds the stray the copy replaced: a later owner wrote the delivery.
        let view = StaticView::of(&["a", "b"]);
        let mine = owned_by(&view, "a");
        assert_eq!(
            after_store("a", &view, &copy(mine, 5), Some(5), false, true, false),
            LiveCore::Unload
        );
        assert_eq!(
            after_store("a", &view, &copy(mine, 5), None, false, true, false),
            LiveCore::Load,
            "not held and ours: loaded as before"
        );
    }

    #[test]
    fn a_conflicting_live_copy_is_fenced_and_a_conflicting_hand_off_is_kept() {
        let kept = vec![copy(1, 2), copy(3, 4)];
        let (stored, fenced) = with_conflicts(kept.clone(), vec![], &[DeliveryId(3)], true);
        assert_eq!(stored, vec![copy(1, 2)]);
        assert_eq!(fenced, vec![DeliveryId(3)]);
        let (stored, fenced) = with_conflicts(kept.clone(), vec![], &[DeliveryId(3)], false);
        assert_eq!(stored, kept);
        assert!(fenced.is_empty());
    }
}
