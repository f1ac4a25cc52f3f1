//! What the cluster code needs of the running hub, as a trait the hub implements: so
//! `replication` does not depend on `hub` (which depends on it), and its drivers can be run
//! against something else than a whole hub.

use super::node::HubCluster;
use crate::durable::store::Store;
use crate::metrics::HubMetrics;
use crate::tracking::deliveries::RecoveredDelivery;
use protocol::DeliveryId;
use std::sync::Arc;

/// The hub as the replication drivers see it.
pub trait Host: Send + Sync + 'static {
    /// The hub's event log.
    fn store(&self) -> &Store;
    /// The hub's counters.
    fn metrics(&self) -> &HubMetrics;
    /// The cluster, when the hub is in one.
    fn cluster(&self) -> Option<&Arc<HubCluster>>;
    /// The last event seq of `id` when the live core holds it.
    fn held(&self, id: DeliveryId) -> Option<u64>;
    /// Loads a delivery read from the log into the live core (replacing what it held).
    fn restore(&self, rec: RecoveredDelivery);
    /// Sends every consumer of `id` a redirect to the URL `url` gives for its transport.
    fn redirect_consumers(&self, id: DeliveryId, url: &dyn Fn(&'static str) -> String);
    /// Another hub writes `id`: forgets it in the live core (its consumers are cut off and
    /// reconnect to the owner) and reports it with the fenced ones, so the rebalancer takes
    /// it over afresh when it is ours again.
    fn unload(&self, id: DeliveryId);
    /// Deliveries a replica fenced (or [`Host::unload`] forgot) since the last call.
    fn take_fenced(&self) -> Vec<DeliveryId>;
    /// How many deliveries the live core holds (the load published to the cluster).
    fn deliveries_held(&self) -> usize;
    /// Whether the hub drains.
    fn draining(&self) -> bool;
}
