//! The combined view edges and hubs route by: live hubs (foca says alive AND chitchat has
//! their info) of one region, and the owner of each delivery among those not draining.

use protocol::DeliveryId;
use tokio::sync::watch;

use crate::control::{ControlHandle, HubInfo};
use crate::driver::MembershipHandle;
use crate::membership::{NodeIdentity, Role};
use crate::placement;

/// Pure combination of the two views; [`ClusterView`] feeds it the current state.
///
/// A hub counts as live when chitchat has its info for `region` and foca lists a hub member
/// with the same id, gossip address and generation (or it is `me`). Matching the generation
/// keeps a restarted hub's previous incarnation out while chitchat still remembers it. foca decides liveness (fast, SWIM);
/// chitchat only says where a hub listens and whether it drains.
pub fn live_hubs(
    me: &NodeIdentity,
    members: &[NodeIdentity],
    hubs: &[HubInfo],
    region: &str,
) -> Vec<HubInfo> {
    hubs.iter()
        .filter(|h| h.region == region)
        .filter(|h| {
            let same = |n: &NodeIdentity| {
                n.id == h.id && n.addr == h.gossip_addr && n.generation == h.generation
            };
            same(me) || members.iter().any(|m| m.role == Role::Hub && same(m))
        })
        .cloned()
        .collect()
}

/// The owner of `delivery` among `live` hubs that are not draining.
pub fn owner_among(delivery: DeliveryId, live: &[HubInfo]) -> Option<HubInfo> {
    let placeable: Vec<&HubInfo> = live.iter().filter(|h| !h.draining).collect();
    placement::owner(delivery, &placeable).map(|h| (*h).clone())
}

/// Membership + control plane of one node, scoped to a region.
#[derive(Clone, Debug)]
pub struct ClusterView {
    membership: MembershipHandle,
    control: ControlHandle,
    region: String,
    members_rx: watch::Receiver<Vec<NodeIdentity>>,
    hubs_rx: watch::Receiver<Vec<HubInfo>>,
}

impl ClusterView {
    /// A view of `region` over both layers.
    pub fn new(
        membership: MembershipHandle,
        control: ControlHandle,
        region: impl Into<String>,
    ) -> Self {
        Self {
            members_rx: membership.watch_members(),
            hubs_rx: control.watch_hubs(),
            membership,
            control,
            region: region.into(),
        }
    }

    /// Live hubs of the region (draining ones included), sorted by id.
    pub fn live_hubs(&self) -> Vec<HubInfo> {
        live_hubs(
            &self.membership.identity(),
            &self.membership.members(),
            &self.control.hubs(),
            &self.region,
        )
    }

    /// The hub that owns `delivery`: rendezvous hashing over live, non-draining hubs.
    pub fn owner_of(&self, delivery: DeliveryId) -> Option<HubInfo> {
        owner_among(delivery, &self.live_hubs())
    }

    /// The first `n` live, non-draining hubs for `delivery` in rendezvous order (replicas).
    pub fn owners_of(&self, delivery: DeliveryId, n: usize) -> Vec<HubInfo> {
        let live: Vec<HubInfo> = self
            .live_hubs()
            .into_iter()
            .filter(|h| !h.draining)
            .collect();
        placement::owners(delivery, &live, n)
            .into_iter()
            .cloned()
            .collect()
    }

    /// Waits until membership or control-plane state changes (ownership may have moved).
    /// Returns `false` when both sources have shut down.
    pub async fn changed(&mut self) -> bool {
        tokio::select! {
            r = self.members_rx.changed() => r.is_ok() || self.hubs_rx.changed().await.is_ok(),
            r = self.hubs_rx.changed() => r.is_ok() || self.members_rx.changed().await.is_ok(),
        }
    }

    /// The membership layer.
    pub fn membership(&self) -> &MembershipHandle {
        &self.membership
    }

    /// The control plane.
    pub fn control(&self) -> &ControlHandle {
        &self.control
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: &str, port: u16, role: Role) -> NodeIdentity {
        NodeIdentity {
            id: id.into(),
            addr: ([127, 0, 0, 1], port).into(),
            role,
            region: "eu".into(),
            generation: 1,
            bump: 1,
        }
    }

    fn hub(id: &str, port: u16, region: &str) -> HubInfo {
        HubInfo {
            id: id.into(),
            region: region.into(),
            gossip_addr: ([127, 0, 0, 1], port).into(),
            generation: 1,
            link_addr: String::new(),
            wt_addr: String::new(),
            https_addr: String::new(),
            load: 0,
            draining: false,
        }
    }

    #[test]
    fn a_hub_is_live_only_when_both_foca_and_chitchat_know_it() {
        let me = node("edge-1", 1, Role::Edge);
        let members = [node("hub-a", 2, Role::Hub), node("hub-b", 3, Role::Hub)];
        let hubs = [
            hub("hub-a", 2, "eu"), // both: live
            hub("hub-c", 4, "eu"), // chitchat only (foca says down): not live
            hub("hub-b", 9, "eu"), // same id, other address (stale incarnation): not live
            hub("hub-d", 5, "us"), // other region
        ];
        let live: Vec<String> = live_hubs(&me, &members, &hubs, "eu")
            .into_iter()
            .map(|h| h.id)
            .collect();
        assert_eq!(live, ["hub-a"]);
        assert_eq!(live_hubs(&me, &members, &hubs, "eu")[0].link_addr, "");
    }

    #[test]
    fn a_hub_counts_itself_as_live() {
        let me = node("hub-a", 2, Role::Hub);
        let live = live_hubs(&me, &[], &[hub("hub-a", 2, "eu")], "eu");
        assert_eq!(live.len(), 1);
    }

    #[test]
    fn draining_hubs_own_nothing_new() {
        let mut hubs = vec![hub("hub-a", 2, "eu"), hub("hub-b", 3, "eu")];
        hubs[0].draining = true;
        for d in 0..200 {
            let owner = owner_among(DeliveryId(d), &hubs).expect("owner");
            assert_eq!(owner.id, "hub-b");
        }
        hubs[1].draining = true;
        assert_eq!(owner_among(DeliveryId(1), &hubs), None);
    }
}
