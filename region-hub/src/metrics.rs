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

/// Label naming an anomaly kind (`stationary`, `moving_away`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

/// Every metric the hub exports.
#[derive(Debug)]
pub struct HubMetrics {
    pub fixes_received: Counter,
    pub fixes_unmatched: Counter,
    pub positions_pushed: Family<TransportLabel, Counter>,
    /// `positions_pushed{transport="websocket"}`, looked up once.
    pushed_websocket: Counter,
    /// `positions_pushed{transport="webtransport"}`, looked up once.
    pushed_webtransport: Counter,
    pub consumers_active: Family<TransportLabel, Gauge>,
    pub status_events: Family<SourceLabel, Counter>,
    pub event_commit_seconds: Histogram,
    pub event_commit_batch: Histogram,
    pub edge_links_active: Gauge,
    pub consumer_rejected: Family<ReasonLabel, Counter>,
    pub anomalies: Family<KindLabel, Counter>,
    pub breadcrumbs_stored: Counter,
    pub breadcrumbs_dropped: Counter,
    /// Cluster mode: breadcrumbs copied to the delivery's successor (or owner).
    pub breadcrumbs_replicated: Counter,
    /// Cluster mode: breadcrumbs stored here but not copied (queue full, no peer, no answer).
    pub breadcrumbs_unreplicated: Counter,
    /// Cluster mode: breadcrumbs stored on behalf of another hub.
    pub breadcrumbs_received: Counter,
    /// Cluster mode: breadcrumbs from a peer not stored (implausible coordinates).
    pub breadcrumbs_received_rejected: Counter,
    pub breadcrumbs_purged: Counter,
    pub breadcrumb_commit_seconds: Histogram,
    /// Routes planned at dispatch (first fix after assignment).
    pub routes_planned: Counter,
    /// Re-routes after a driver left its route by more than 500 m.
    pub reroutes: Counter,
    /// Plans or re-routes that found no route (straight-line ETA used).
    pub route_failures: Counter,
    /// Time to plan or re-route one delivery (routing + ETA engine set-up).
    pub route_seconds: Histogram,
}

impl HubMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let positions_pushed: Family<TransportLabel, Counter> = Family::default();
        let pushed_websocket = positions_pushed
            .get_or_create(&TransportLabel {
                transport: "websocket",
            })
            .clone();
        let pushed_webtransport = positions_pushed
            .get_or_create(&TransportLabel {
                transport: "webtransport",
            })
            .clone();
        let m = Self {
            fixes_received: Counter::default(),
            fixes_unmatched: Counter::default(),
            positions_pushed,
            pushed_websocket,
            pushed_webtransport,
            consumers_active: Family::default(),
            status_events: Family::default(),
            event_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            event_commit_batch: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            edge_links_active: Gauge::default(),
            consumer_rejected: Family::default(),
            anomalies: Family::default(),
            breadcrumbs_stored: Counter::default(),
            breadcrumbs_dropped: Counter::default(),
            breadcrumbs_replicated: Counter::default(),
            breadcrumbs_unreplicated: Counter::default(),
            breadcrumbs_received: Counter::default(),
            breadcrumbs_received_rejected: Counter::default(),
            breadcrumbs_purged: Counter::default(),
            breadcrumb_commit_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 16)),
            routes_planned: Counter::default(),
            reroutes: Counter::default(),
            route_failures: Counter::default(),
            route_seconds: Histogram::new(exponential_buckets(0.000_01, 2.0, 16)),
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
        registry.register(
            "hub_anomalies",
            "Durable anomalies by kind",
            m.anomalies.clone(),
        );
        registry.register(
            "hub_breadcrumbs_stored",
            "Breadcrumbs committed to redb",
            m.breadcrumbs_stored.clone(),
        );
        registry.register(
            "hub_breadcrumbs_dropped",
            "Breadcrumbs shed because the breadcrumb queue was full or the commit failed",
            m.breadcrumbs_dropped.clone(),
        );
        registry.register(
            "hub_breadcrumbs_replicated",
            "Breadcrumbs copied to the delivery's successor hub after the local commit",
            m.breadcrumbs_replicated.clone(),
        );
        registry.register(
            "hub_breadcrumbs_unreplicated",
            "Breadcrumbs committed here but not copied to a peer (queue full, no live peer, or no answer in time)",
            m.breadcrumbs_unreplicated.clone(),
        );
        registry.register(
            "hub_breadcrumbs_received",
            "Breadcrumbs stored on behalf of another hub",
            m.breadcrumbs_received.clone(),
        );
        registry.register(
            "hub_breadcrumbs_received_rejected",
            "Breadcrumbs from another hub not stored: non-finite or out-of-range coordinates",
            m.breadcrumbs_received_rejected.clone(),
        );
        registry.register(
            "hub_breadcrumbs_purged",
            "Breadcrumbs deleted by the retention purge",
            m.breadcrumbs_purged.clone(),
        );
        registry.register(
            "hub_breadcrumb_commit_seconds",
            "Duration of one breadcrumb batch commit",
            m.breadcrumb_commit_seconds.clone(),
        );
        registry.register(
            "hub_routes_planned",
            "Delivery routes planned at dispatch",
            m.routes_planned.clone(),
        );
        registry.register(
            "hub_reroutes",
            "Re-routes after a driver left its planned route",
            m.reroutes.clone(),
        );
        registry.register(
            "hub_route_failures",
            "Plans or re-routes that found no route",
            m.route_failures.clone(),
        );
        registry.register(
            "hub_route_seconds",
            "Time to plan or re-route one delivery",
            m.route_seconds.clone(),
        );
        m
    }

    /// Counts a durable anomaly of `kind`.
    pub fn anomaly(&self, kind: &'static str) {
        self.anomalies.get_or_create(&KindLabel { kind }).inc();
    }

    /// Reads the anomaly counter of `kind`.
    pub fn anomalies_total(&self, kind: &'static str) -> u64 {
        self.anomalies.get_or_create(&KindLabel { kind }).get()
    }

    /// Counts one position pushed over `transport`.
    pub fn inc_pushed(&self, transport: &'static str) {
        self.add_pushed(transport, 1);
    }

    /// Counts `n` positions pushed over `transport` (the per-push path: no label lookup for
    /// the two consumer transports).
    pub fn add_pushed(&self, transport: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        match transport {
            "websocket" => self.pushed_websocket.inc_by(n),
            "webtransport" => self.pushed_webtransport.inc_by(n),
            _ => self
                .positions_pushed
                .get_or_create(&TransportLabel { transport })
                .inc_by(n),
        };
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

/// Metrics of webhook delivery (`serve::webhook_sender`).
#[derive(Debug, Default)]
pub struct WebhookMetrics {
    /// Webhooks answered with a 2xx.
    pub sent: Counter,
    /// Failed attempts, by `reason`: `4xx`, `5xx`, `3xx`, `timeout`, `connect`, `reset`.
    pub failed: Family<ReasonLabel, Counter>,
    /// Attempts scheduled again after a failure.
    pub retried: Counter,
    /// Rows given up on (`GET /api/v1/webhooks/dead-letters`).
    pub dead_letters: Counter,
    /// Rows waiting to be delivered (deliveries this hub owns).
    pub pending: Gauge,
    /// Age of the oldest row waiting, seconds (0 when none).
    pub oldest_pending_age_seconds: Gauge,
}

impl WebhookMetrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn new(registry: &mut Registry) -> Self {
        let m = Self::default();
        registry.register(
            "hub_webhook_sent",
            "Webhooks delivered (2xx answer)",
            m.sent.clone(),
        );
        registry.register(
            "hub_webhook_failed",
            "Failed webhook attempts by reason (4xx, 5xx, timeout, connect, reset)",
            m.failed.clone(),
        );
        registry.register(
            "hub_webhook_retried",
            "Webhook attempts scheduled again after a failure",
            m.retried.clone(),
        );
        registry.register(
            "hub_webhook_dead_letters",
            "Webhooks given up on and moved to the dead letters",
            m.dead_letters.clone(),
        );
        registry.register(
            "hub_webhook_pending",
            "Webhooks waiting to be delivered",
            m.pending.clone(),
        );
        registry.register(
            "hub_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook waiting to be delivered",
            m.oldest_pending_age_seconds.clone(),
        );
        // Every reason is exported from the start, so alerts and dashboards see zeros.
        for reason in ["3xx", "4xx", "5xx", "timeout", "connect", "reset"] {
            let _ = m.failed.get_or_create(&ReasonLabel { reason });
        }
        m
    }
}
