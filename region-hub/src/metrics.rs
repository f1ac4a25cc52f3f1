//! Prometheus metrics of the hub, registered in the node's registry and readable by tests.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Label naming a consumer transport (`webtransport`, `websocket`, `rest`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TransportLabel {
    pub transport: &'static str,
}

/// Label naming where a status event came from (`api`, `geofence`, `driver`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: String,
}

/// Label naming why a consumer was refused or cut off.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every metric the hub exports.
#[derive(Debug)]
pub struct HubMetrics {
    pub fixes_received: Counter,
    pub fixes_unmatched: Counter,
    pub positions_pushed: Family<TransportLabel, Counter>,
    pub consumers_active: Family<TransportLabel, Gauge>,
    pub status_events: Family<SourceLabel, Counter>,
    pub event_commit_seconds: Histogram,
    pub event_commit_batch: Histogram,
    pub edge_links_active: Gauge,
    pub consumer_rejected: Family<ReasonLabel, Counter>,
}

impl HubMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self {
            fixes_received: Counter::default(),
            fixes_unmatched: Counter::default(),
            positions_pushed: Family::default(),
            consumers_active: Family::default(),
            status_events: Family::default(),
            event_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            event_commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            edge_links_active: Gauge::default(),
            consumer_rejected: Family::default(),
        };
        registry.register(
            "hub_fixes_received",
            "Fixes received from edges",
            m.fixes_received.clone(),
        );
        registry.register(
            "hub_fixes_unmatched",
            "Fixes whose driver has no active delivery",
            m.fixes_unmatched.clone(),
        );
        registry.register(
            "hub_positions_pushed",
            "Positions handed to consumers",
            m.positions_pushed.clone(),
        );
        registry.register(
            "hub_consumers_active",
            "Connected consumers",
            m.consumers_active.clone(),
        );
        registry.register(
            "hub_status_events",
            "Durable status events",
            m.status_events.clone(),
        );
        registry.register(
            "hub_event_commit_seconds",
            "Duration of one redb group commit",
            m.event_commit_seconds.clone(),
        );
        registry.register(
            "hub_event_commit_batch",
            "Append requests per group commit",
            m.event_commit_batch.clone(),
        );
        registry.register(
            "hub_edge_links_active",
            "Connected edges",
            m.edge_links_active.clone(),
        );
        registry.register(
            "hub_consumer_rejected",
            "Consumers refused (token) or cut off (overflow)",
            m.consumer_rejected.clone(),
        );
        m
    }

    /// Counts one position pushed over `transport`.
    pub fn inc_pushed(&self, transport: &'static str) {
        self.positions_pushed
            .get_or_create(&TransportLabel { transport })
            .inc();
    }

    /// Reads the pushed-positions counter of `transport`.
    pub fn pushed_total(&self, transport: &'static str) -> u64 {
        self.positions_pushed
            .get_or_create(&TransportLabel { transport })
            .get()
    }

    /// Current number of consumers on `transport`.
    pub fn consumers(&self, transport: &'static str) -> i64 {
        self.consumers_active
            .get_or_create(&TransportLabel { transport })
            .get()
    }

    /// Counts a refused consumer.
    pub fn reject(&self, reason: &'static str) {
        self.consumer_rejected
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Reads the refused-consumer counter for `reason`.
    pub fn rejected_total(&self, reason: &'static str) -> u64 {
        self.consumer_rejected
            .get_or_create(&ReasonLabel { reason })
            .get()
    }

    /// Counts a durable status event from `source`.
    pub fn status_event(&self, source: &str) {
        self.status_events
            .get_or_create(&SourceLabel {
                source: source.to_owned(),
            })
            .inc();
    }
}

/// Keeps a consumer counted in `hub_consumers_active{transport}` while alive.
#[derive(Debug)]
pub struct ConsumerGauge {
    gauge: Gauge,
}

impl ConsumerGauge {
    pub fn new(metrics: &HubMetrics, transport: &'static str) -> Self {
        let gauge = metrics
            .consumers_active
            .get_or_create(&TransportLabel { transport })
            .clone();
        gauge.inc();
        Self { gauge }
    }
}

impl Drop for ConsumerGauge {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}
