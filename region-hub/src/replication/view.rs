//! What the cluster decisions need to know of the membership: the live hubs of the region
//! (draining ones included). Ownership follows from it by rendezvous hashing. The gossip view
//! ([`cluster::ClusterView`]) implements it; [`StaticView`] is a fixed list for tests and the
//! simulation.

use cluster::HubInfo;
use protocol::DeliveryId;

/// A hub's current view of the cluster.
pub trait View: Send + Sync {
    /// Live hubs of the region (draining ones included), sorted by id.
    fn live_hubs(&self) -> Vec<HubInfo>;

    /// The first `n` live, non-draining hubs for `delivery` in rendezvous order: the owner,
    /// then its successor, and so on.
    fn owners_of(&self, delivery: DeliveryId, n: usize) -> Vec<HubInfo> {
        let live: Vec<HubInfo> = self
            .live_hubs()
            .into_iter()
            .filter(|h| !h.draining)
            .collect();
        cluster::placement::owners(delivery, &live, n)
            .into_iter()
            .cloned()
            .collect()
    }

    /// The owner of `delivery` among live, non-draining hubs; `None` before any is known.
    fn owner_of(&self, delivery: DeliveryId) -> Option<HubInfo> {
        self.owners_of(delivery, 1).into_iter().next()
    }
}

impl View for cluster::ClusterView {
    fn live_hubs(&self) -> Vec<HubInfo> {
        cluster::ClusterView::live_hubs(self)
    }
    fn owners_of(&self, delivery: DeliveryId, n: usize) -> Vec<HubInfo> {
        cluster::ClusterView::owners_of(self, delivery, n)
    }
    fn owner_of(&self, delivery: DeliveryId) -> Option<HubInfo> {
        cluster::ClusterView::owner_of(self, delivery)
    }
}

/// A fixed view: exactly these hubs are live.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StaticView(pub Vec<HubInfo>);

impl StaticView {
    /// Live hubs named `ids` (addresses derived from the names), none draining.
    pub fn of(ids: &[&str]) -> Self {
        Self(ids.iter().map(|id| hub_info(id)).collect())
    }

    /// The same view with hub `id` draining.
    pub fn draining(mut self, id: &str) -> Self {
        for h in &mut self.0 {
            if h.id == id {
                h.draining = true;
            }
        }
        self
    }
}

impl View for StaticView {
    fn live_hubs(&self) -> Vec<HubInfo> {
        let mut hubs = self.0.clone();
        hubs.sort_by(|a, b| a.id.cmp(&b.id));
        hubs
    }
}

/// A hub description for tests and the simulation: addresses derived from `id`.
pub fn hub_info(id: &str) -> HubInfo {
    HubInfo {
        id: id.to_owned(),
        region: "sim".into(),
        gossip_addr: ([127, 0, 0, 1], 7946).into(),
        generation: 1,
        link_addr: format!("{id}.link:7443"),
        wt_addr: format!("{id}.wt:4434"),
        https_addr: format!("{id}.https:9443"),
        load: 0,
        draining: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_static_view_places_on_non_draining_hubs_only() {
        let view = StaticView::of(&["a", "b", "c"]);
        for d in 0..200 {
            let owners = view.owners_of(DeliveryId(d), 3);
            assert_eq!(owners.len(), 3);
            assert_eq!(view.owner_of(DeliveryId(d)), owners.first().cloned());
        }
        let drained = view.clone().draining("a");
        assert_eq!(drained.live_hubs().len(), 3, "a draining hub is still live");
        for d in 0..200 {
            let owners = drained.owners_of(DeliveryId(d), 3);
            assert_eq!(owners.len(), 2);
            assert!(owners.iter().all(|h| h.id != "a"));
        }
    }

    #[test]
    fn ownership_moves_only_for_deliveries_of_a_hub_that_left() {
        let all = StaticView::of(&["a", "b", "c"]);
        let without_c = StaticView::of(&["a", "b"]);
        for d in 0..500 {
            let before = all.owner_of(DeliveryId(d)).expect("owner");
            let after = without_c.owner_of(DeliveryId(d)).expect("owner");
            if before.id != "c" {
                assert_eq!(
                    before, after,
                    "delivery {d} moved although its owner stayed"
                );
            }
        }
    }
}
