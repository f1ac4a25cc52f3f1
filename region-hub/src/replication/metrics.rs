//! Counters of the cluster work (`hub_events_replicated_total`, ...), registered once per hub.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;

/// Counters of the cluster work (`hub_events_replicated_total`, ...).
#[derive(Clone, Debug, Default)]
pub struct ClusterMetrics {
    /// Status events copied to a replica before being acknowledged.
    pub replicated: Counter,
    /// Status events acknowledged without a replica (none live, or it did not answer).
    pub unreplicated: Counter,
    /// Deliveries loaded from the local copy because this hub became their owner.
    pub takeovers: Counter,
    /// Deliveries whose whole log was sent to a new owner or successor.
    pub handoffs: Counter,
    /// Entries stored on behalf of another hub.
    pub received: Counter,
    /// Log entries of ours a replica refused because another hub serves the delivery.
    pub fenced: Counter,
    /// Copies received holding other events under seqs we hold (two writers for one seq).
    pub conflicts: Counter,
    /// Deliveries whose status changes were refused because no replica stored them
    /// (`min_copies` 2).
    pub no_replica: Counter,
}

impl ClusterMetrics {
    pub(crate) fn register(&self, r: &mut Registry) {
        r.register(
            "hub_events_replicated",
            "Status events copied to the successor before being acknowledged",
            self.replicated.clone(),
        );
        r.register(
            "hub_events_unreplicated",
            "Status events acknowledged without a live replica having stored them",
            self.unreplicated.clone(),
        );
        r.register(
            "hub_takeovers",
            "Deliveries loaded from the local replica copy after becoming their owner",
            self.takeovers.clone(),
        );
        r.register(
            "hub_handoffs",
            "Deliveries whose whole log was sent to a new owner or successor",
            self.handoffs.clone(),
        );
        r.register(
            "hub_replica_entries_received",
            "Log entries stored on behalf of another hub",
            self.received.clone(),
        );
        r.register(
            "hub_replica_fenced",
            "Log entries a replica refused because another hub serves their delivery (not acknowledged; the client retries)",
            self.fenced.clone(),
        );
        r.register(
            "hub_events_refused_no_replica",
            "Deliveries whose status changes were refused (503) because no replica stored them in time (min_copies = 2)",
            self.no_replica.clone(),
        );
        r.register(
            "hub_replica_conflicts",
            "Copies received holding a different event under a seq already stored",
            self.conflicts.clone(),
        );
    }
}
