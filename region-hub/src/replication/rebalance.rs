//! Keeping ownership in step with the view, as a plain state machine: each pass walks the
//! deliveries of the local log and says which to take over (newly ours) and whose whole log
//! to send where (to a new successor as a copy, to a new owner as a hand-off). The async
//! driver (`driver::run_rebalancer`) runs the passes, does the I/O and reports back.

use super::view::View;
use cluster::HubInfo;
use protocol::DeliveryId;
use std::collections::{HashMap, HashSet};

/// One whole-log send a pass asks for.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    pub id: DeliveryId,
    /// Who receives the log.
    pub to: HubInfo,
    /// Whether `to` is the delivery's new owner (a hand-off: our consumers of it are then
    /// redirected there), rather than our successor (a copy).
    pub moving: bool,
}

/// What one pass asks the driver to do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Pass {
    /// Deliveries that became ours and are not held live: fetch the newest copies, merge,
    /// load.
    pub takeovers: Vec<DeliveryId>,
    /// Whole logs to send (not yet sent to that hub in that role).
    pub sends: Vec<Transfer>,
    /// Past `join_grace`: this hub claims what it owns.
    pub settled: bool,
    /// Whether the view already shows this hub draining.
    pub draining_seen: bool,
    /// The first settled pass: the hub has claimed its deliveries and may say it is ready.
    pub announce: bool,
    /// Copies of deliveries another hub owns, not yet brought in step with that owner: fetch
    /// the owner's log and merge it (strays of an earlier write epoch are replaced). A hub
    /// that was away (down, cut off) when the owner took a delivery over may hold an event
    /// that owner never heard of, and may never be its successor again.
    pub syncs: Vec<Transfer>,
}

/// The rebalancer's memory between passes.
#[derive(Clone, Debug)]
pub struct Rebalancer {
    me: String,
    /// Until then (ms on the driver's clock) the view may not show the peers yet: nothing is
    /// claimed.
    settle_at_ms: u64,
    announced: bool,
    /// Deliveries we owned at the last pass (a takeover happens on becoming the owner).
    owned: HashSet<DeliveryId>,
    /// Deliveries of the local log seen at an earlier pass: becoming ours means a takeover
    /// even if we hold them live (another hub may have written while we were not the
    /// owner, e.g. after a hand-off, or while no hub was placeable). Those created here
    /// since the last pass are not fetched.
    known: HashSet<DeliveryId>,
    /// Per delivery: the hub we last sent its whole log to, and whether as its new owner.
    /// A copy sent earlier does not stand for a hand-off to the same hub: the consumers
    /// must still be redirected.
    sent_to: HashMap<DeliveryId, (String, bool)>,
    /// Per delivery owned elsewhere: the owner whose log was last merged here ([`Pass::syncs`]).
    synced: HashMap<DeliveryId, String>,
}

impl Rebalancer {
    /// A rebalancer of hub `me` started at `now_ms` that claims nothing for `join_grace_ms`.
    pub fn new(me: impl Into<String>, now_ms: u64, join_grace_ms: u64) -> Self {
        Self {
            me: me.into(),
            settle_at_ms: now_ms.saturating_add(join_grace_ms),
            announced: false,
            owned: HashSet::new(),
            known: HashSet::new(),
            sent_to: HashMap::new(),
            synced: HashMap::new(),
        }
    }

    /// Deliveries a replica fenced were unloaded: ours again at the next pass means a fresh
    /// takeover (which merges the other hub's newer copy), and their logs are sent afresh.
    pub fn handle_fenced(&mut self, ids: &[DeliveryId]) {
        for id in ids {
            self.owned.remove(id);
            self.sent_to.remove(id);
        }
    }

    /// A live copy of `id` went to `to`: if that is not the hub its whole log was last sent
    /// to, `to` may lack earlier events (the successor changed between two passes), so the
    /// whole log is sent again at the next pass.
    pub fn handle_live_copy(&mut self, id: DeliveryId, to: &str) {
        if self.sent_to.get(&id).is_some_and(|(t, _)| t != to) {
            self.sent_to.remove(&id);
        }
    }

    /// Takeovers the driver could not complete (a hub in doubt did not answer): planned
    /// again at the next pass, even if a stale copy is held live.
    pub fn handle_postponed(&mut self, ids: &[DeliveryId]) {
        for id in ids {
            self.owned.remove(id);
            self.known.insert(*id);
        }
    }

    /// Plans one pass over `ids` (every delivery of the local log). `held`: whether this hub
    /// holds a delivery live.
    pub fn plan(
        &mut self,
        now_ms: u64,
        view: &dyn View,
        ids: &[DeliveryId],
        held: impl Fn(DeliveryId) -> bool,
    ) -> Pass {
        let settled = now_ms >= self.settle_at_ms;
        let mut pass = Pass {
            settled,
            draining_seen: view
                .live_hubs()
                .iter()
                .any(|h| h.id == self.me && h.draining),
            ..Pass::default()
        };
        let mut now_owned = HashSet::new();
        for &id in ids {
            let owners = view.owners_of(id, 2);
            let Some(owner) = owners.first() else {
                continue;
            };
            let live = held(id);
            if owner.id == self.me {
                if !settled {
                    continue;
                }
                now_owned.insert(id);
                let newly = !self.owned.contains(&id);
                if newly && (!live || self.known.contains(&id)) {
                    pass.takeovers.push(id);
                    // The takeover may merge events the successor's copy lacks.
                    self.sent_to.remove(&id);
                }
                if let Some(succ) = owners.get(1) {
                    self.push_send(&mut pass, id, succ, false);
                }
            } else if live {
                self.push_send(&mut pass, id, owner, true);
            } else if settled && self.synced.get(&id) != Some(&owner.id) {
                pass.syncs.push(Transfer {
                    id,
                    to: owner.clone(),
                    moving: false,
                });
            }
        }
        if settled {
            self.known.extend(ids.iter().copied());
        }
        self.owned = now_owned;
        if settled && !self.announced {
            self.announced = true;
            pass.announce = true;
        }
        pass
    }

    fn push_send(&self, pass: &mut Pass, id: DeliveryId, to: &HubInfo, moving: bool) {
        if self.sent_to.get(&id) != Some(&(to.id.clone(), moving)) {
            pass.sends.push(Transfer {
                id,
                to: to.clone(),
                moving,
            });
        }
    }

    /// A send of the pass arrived: not repeated until the target or role changes.
    pub fn handle_sent(&mut self, send: &Transfer) {
        self.sent_to
            .insert(send.id, (send.to.id.clone(), send.moving));
    }

    /// A sync of the pass was answered and merged: not repeated until the owner changes.
    pub fn handle_synced(&mut self, sync: &Transfer) {
        self.synced.insert(sync.id, sync.to.id.clone());
    }

    /// Deliveries this hub owned at the last pass.
    pub fn owned(&self) -> usize {
        self.owned.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::view::StaticView;

    fn owned_by(view: &StaticView, hub: &str, skip: usize) -> DeliveryId {
        (1..10_000)
            .map(DeliveryId)
            .filter(|d| view.owner_of(*d).is_some_and(|h| h.id == hub))
            .nth(skip)
            .expect("some delivery")
    }

    #[test]
    fn nothing_is_claimed_before_join_grace() {
        let view = StaticView::of(&["a", "b"]);
        let mut r = Rebalancer::new("a", 0, 1_000);
        let mine = owned_by(&view, "a", 0);
        let pass = r.plan(999, &view, &[mine], |_| false);
        assert!(!pass.settled && !pass.announce);
        assert!(pass.takeovers.is_empty() && pass.sends.is_empty());
        let pass = r.plan(1_000, &view, &[mine], |_| false);
        assert!(pass.settled && pass.announce);
        assert_eq!(pass.takeovers, vec![mine]);
        let again = r.plan(2_000, &view, &[mine], |_| true);
        assert!(!again.announce, "announced once");
    }

    #[test]
    fn a_delivery_becoming_ours_is_taken_over_once_and_copied_to_the_successor() {
        let three = StaticView::of(&["a", "b", "c"]);
        let of_c = owned_by(&three, "c", 0);
        let two = StaticView::of(&["a", "b"]);
        let mut r = Rebalancer::new("a", 0, 0);
        let pass = r.plan(0, &three, &[of_c], |_| false);
        assert!(pass.takeovers.is_empty(), "c still owns it");
        let pass = r.plan(1, &two, &[of_c], |_| false);
        let ours = two.owner_of(of_c).is_some_and(|h| h.id == "a");
        if ours {
            assert_eq!(pass.takeovers, vec![of_c]);
            assert_eq!(pass.sends.len(), 1);
            assert_eq!(pass.sends[0].to.id, "b");
            assert!(!pass.sends[0].moving);
            r.handle_sent(&pass.sends[0]);
            let next = r.plan(2, &two, &[of_c], |_| true);
            assert!(
                next.takeovers.is_empty(),
                "held and owned: no second takeover"
            );
            assert!(next.sends.is_empty(), "already copied to b");
        } else {
            assert!(pass.takeovers.is_empty());
        }
    }

    #[test]
    fn a_held_delivery_owned_elsewhere_is_handed_off_until_it_arrives() {
        let view = StaticView::of(&["a", "b"]).draining("a");
        let mut r = Rebalancer::new("a", 0, 0);
        let d = DeliveryId(42);
        let pass = r.plan(0, &view, &[d], |_| true);
        assert!(pass.draining_seen);
        assert_eq!(
            pass.sends,
            vec![Transfer {
                id: d,
                to: crate::replication::view::hub_info("b"),
                moving: true
            }]
        );
        // Not reported as sent (it failed): asked again.
        assert_eq!(r.plan(1, &view, &[d], |_| true).sends.len(), 1);
        r.handle_sent(&pass.sends[0]);
        assert!(r.plan(2, &view, &[d], |_| true).sends.is_empty());
        // A copy sent to the same hub as successor does not stand for the hand-off.
        let mut r = Rebalancer::new("a", 0, 0);
        r.handle_sent(&Transfer {
            id: d,
            to: crate::replication::view::hub_info("b"),
            moving: false,
        });
        assert_eq!(r.plan(0, &view, &[d], |_| true).sends.len(), 1);
    }

    #[test]
    fn a_delivery_held_while_another_hub_owned_it_is_taken_over_when_it_comes_back() {
        let with_c = StaticView::of(&["a", "b", "c"]);
        let without_c = StaticView::of(&["a", "b"]);
        // A delivery c owns while it is there, a otherwise.
        let d = (1..10_000)
            .map(DeliveryId)
            .find(|d| {
                with_c.owner_of(*d).is_some_and(|h| h.id == "c")
                    && without_c.owner_of(*d).is_some_and(|h| h.id == "a")
            })
            .expect("some delivery");
        let mut r = Rebalancer::new("a", 0, 0);
        assert!(
            r.plan(0, &without_c, &[d], |_| true).takeovers.is_empty(),
            "held and ours"
        );
        // c joins: a hands it off but still holds it; c writes; c leaves again.
        let pass = r.plan(1, &with_c, &[d], |_| true);
        assert!(pass.sends.iter().any(|s| s.moving && s.to.id == "c"));
        assert_eq!(r.plan(2, &without_c, &[d], |_| true).takeovers, vec![d]);
        // A delivery created here since the last pass is not fetched.
        let mine = owned_by(&without_c, "a", 0);
        assert!(r
            .plan(3, &without_c, &[d, mine], |_| true)
            .takeovers
            .is_empty());
        // One owned, then without any placeable hub, then owned again, is.
        let none = StaticView::of(&["a"]).draining("a");
        assert!(r.plan(4, &none, &[d, mine], |_| true).takeovers.is_empty());
        assert_eq!(
            r.plan(5, &without_c, &[d, mine], |_| true).takeovers,
            vec![d, mine]
        );
    }

    #[test]
    fn a_live_copy_to_another_hub_than_the_last_whole_log_sends_it_again() {
        let view = StaticView::of(&["a", "b", "c"]);
        let mine = owned_by(&view, "a", 0);
        let succ = view.owners_of(mine, 2)[1].id.clone();
        let mut r = Rebalancer::new("a", 0, 0);
        let pass = r.plan(0, &view, &[mine], |_| true);
        r.handle_sent(&pass.sends[0]);
        assert!(r.plan(1, &view, &[mine], |_| true).sends.is_empty());
        r.handle_live_copy(mine, &succ);
        assert!(
            r.plan(2, &view, &[mine], |_| true).sends.is_empty(),
            "same hub"
        );
        // Between two passes the successor was another hub, which got an event.
        r.handle_live_copy(mine, "elsewhere");
        assert_eq!(r.plan(3, &view, &[mine], |_| true).sends.len(), 1);
    }

    #[test]
    fn a_copy_of_a_delivery_owned_elsewhere_is_synced_with_each_new_owner() {
        // Seed 2668 & co.: this hub stored a stray (#2 of a write that failed) and was down
        // while the owner took the delivery over and wrote another #2; it is not the
        // successor, so nothing would ever send it that log.
        let view = StaticView::of(&["a", "b", "c"]);
        let theirs = owned_by(&view, "b", 0);
        let mut r = Rebalancer::new("a", 0, 1_000);
        assert!(
            r.plan(0, &view, &[theirs], |_| false).syncs.is_empty(),
            "not before join grace"
        );
        let pass = r.plan(1_000, &view, &[theirs], |_| false);
        assert_eq!(pass.syncs.len(), 1);
        assert_eq!(pass.syncs[0].to.id, "b");
        // Not answered: asked again.
        assert_eq!(r.plan(1_001, &view, &[theirs], |_| false).syncs.len(), 1);
        r.handle_synced(&pass.syncs[0]);
        assert!(r.plan(1_002, &view, &[theirs], |_| false).syncs.is_empty());
        // Held live: handed off instead; owned here: taken over instead.
        assert!(r.plan(1_003, &view, &[theirs], |_| true).syncs.is_empty());
        // Another owner: synced with it.
        let without_b = StaticView::of(&["a", "c"]);
        let pass = r.plan(1_004, &without_b, &[theirs], |_| false);
        let owner = without_b.owner_of(theirs).expect("owner").id;
        if owner == "a" {
            assert!(pass.syncs.is_empty());
        } else {
            assert_eq!(pass.syncs[0].to.id, owner);
        }
        // A restarted hub (a new rebalancer) syncs everything it holds again.
        let mut fresh = Rebalancer::new("a", 0, 0);
        assert_eq!(fresh.plan(0, &view, &[theirs], |_| false).syncs.len(), 1);
    }

    #[test]
    fn a_fenced_delivery_is_taken_over_afresh() {
        let view = StaticView::of(&["a", "b"]);
        let mine = owned_by(&view, "a", 0);
        let mut r = Rebalancer::new("a", 0, 0);
        assert_eq!(r.plan(0, &view, &[mine], |_| false).takeovers, vec![mine]);
        assert!(r.plan(1, &view, &[mine], |_| false).takeovers.is_empty());
        r.handle_fenced(&[mine]);
        assert_eq!(r.plan(2, &view, &[mine], |_| false).takeovers, vec![mine]);
    }
}
