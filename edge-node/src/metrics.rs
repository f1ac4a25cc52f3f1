//! The edge's Prometheus metrics, registered in the node's registry and readable by tests.

use crate::filter::JsonReject;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use protocol::reject::RejectReason;

/// How a fix reached the edge.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// QUIC datagrams (or the control stream) of a driver session.
    Quic,
    /// HTTP/3 on the QUIC port.
    H3,
    /// HTTPS over TCP.
    Https,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Quic, Transport::H3, Transport::Https];

    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Quic => "quic",
            Transport::H3 => "h3",
            Transport::Https => "https",
        }
    }
}

impl EncodeLabelValue for Transport {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TransportLabel {
    transport: Transport,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HubLabel {
    hub: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// Why a driver session (or an HTTP request's credentials) was refused.
pub const SESSION_REJECT_REASONS: [&str; 7] = [
    "draining",
    "bad_token",
    "expired",
    "wrong_kind",
    "hello_timeout",
    "protocol",
    "missing_token",
];

/// Typed handles to every edge metric (cheap to clone: each is an `Arc` inside).
#[derive(Clone, Debug)]
pub struct EdgeMetrics {
    received: [Counter; 3],
    accepted: Counter,
    rejected: [Counter; RejectReason::ALL.len()],
    rejected_json: [Counter; JsonReject::ALL.len()],
    sessions_active: Gauge,
    sessions_rejected: Family<ReasonLabel, Counter>,
    batches_sent: Counter,
    batch_fixes: Histogram,
    shed: Counter,
    hub_connected: Gauge,
    hub_unacked_batches: Gauge,
    auth_hits: Counter,
    auth_misses: Counter,
    uplinks_active: Gauge,
    routed: Family<HubLabel, Counter>,
    reroutes: Counter,
    draining: Gauge,
}

impl EdgeMetrics {
    /// Creates every metric and registers it in `registry`; every label value that can occur
    /// is created up front so it shows (at 0) before the first event.
    pub fn register(registry: &mut Registry) -> Self {
        let received_family = Family::<TransportLabel, Counter>::default();
        let received = Transport::ALL.map(|t| {
            received_family
                .get_or_create(&TransportLabel { transport: t })
                .clone()
        });
        let rejected_family = Family::<ReasonLabel, Counter>::default();
        let rejected = RejectReason::ALL.map(|r| {
            rejected_family
                .get_or_create(&ReasonLabel { reason: r.as_str() })
                .clone()
        });
        let rejected_json = JsonReject::ALL.map(|r| {
            rejected_family
                .get_or_create(&ReasonLabel { reason: r.as_str() })
                .clone()
        });
        let sessions_rejected = Family::<ReasonLabel, Counter>::default();
        for r in SESSION_REJECT_REASONS {
            let _ = sessions_rejected.get_or_create(&ReasonLabel { reason: r });
        }
        let m = Self {
            received,
            accepted: Counter::default(),
            rejected,
            rejected_json,
            sessions_active: Gauge::default(),
            sessions_rejected,
            batches_sent: Counter::default(),
            batch_fixes: Histogram::new(exponential_buckets(1.0, 4.0, 8)),
            shed: Counter::default(),
            hub_connected: Gauge::default(),
            hub_unacked_batches: Gauge::default(),
            auth_hits: Counter::default(),
            auth_misses: Counter::default(),
            uplinks_active: Gauge::default(),
            routed: Family::default(),
            reroutes: Counter::default(),
            draining: Gauge::default(),
        };
        registry.register(
            "edge_fixes_received",
            "Fixes received, by transport",
            received_family,
        );
        registry.register(
            "edge_fixes_accepted",
            "Fixes that passed the filter",
            m.accepted.clone(),
        );
        registry.register(
            "edge_fixes_rejected",
            "Fixes turned away, by reason",
            rejected_family,
        );
        registry.register(
            "edge_driver_sessions_active",
            "Open QUIC driver sessions",
            m.sessions_active.clone(),
        );
        registry.register(
            "edge_sessions_rejected",
            "Driver sessions and HTTP requests refused for their credentials, by reason",
            m.sessions_rejected.clone(),
        );
        registry.register(
            "edge_batches_sent",
            "Batches written to the hub link",
            m.batches_sent.clone(),
        );
        registry.register(
            "edge_batch_fixes",
            "Fixes per batch sent to the hub",
            m.batch_fixes.clone(),
        );
        registry.register(
            "edge_fixes_shed",
            "Accepted fixes dropped while the hub was unreachable (a newer fix of the driver won)",
            m.shed.clone(),
        );
        registry.register(
            "edge_hub_connected",
            "Hub links currently up (one per live hub in a cluster)",
            m.hub_connected.clone(),
        );
        registry.register(
            "edge_hub_unacked_batches",
            "Batches sent on the current hub links and not yet acknowledged",
            m.hub_unacked_batches.clone(),
        );
        registry.register(
            "edge_auth_cache_hits",
            "Token lookups answered from the cache",
            m.auth_hits.clone(),
        );
        registry.register(
            "edge_auth_cache_misses",
            "Token lookups that needed a signature check",
            m.auth_misses.clone(),
        );
        registry.register(
            "edge_uplinks_active",
            "Hub uplinks running (connected or retrying), one per live hub",
            m.uplinks_active.clone(),
        );
        registry.register(
            "edge_fixes_routed",
            "Accepted fixes handed to a hub's batcher, by hub id",
            m.routed.clone(),
        );
        registry.register(
            "edge_reroutes",
            "Fixes kept for a hub that left (or for no hub) and re-routed to the new owner",
            m.reroutes.clone(),
        );
        registry.register(
            "edge_draining",
            "1 while the edge drains (redirecting drivers, refusing new sessions)",
            m.draining.clone(),
        );
        m
    }

    /// A set of metrics registered in a throw-away registry (unit tests, benches).
    pub fn unregistered() -> Self {
        Self::register(&mut Registry::default())
    }

    pub fn received(&self, t: Transport) -> &Counter {
        &self.received[t as usize]
    }
    pub fn accepted(&self) -> &Counter {
        &self.accepted
    }
    pub fn rejected(&self, reason: RejectReason) -> &Counter {
        let i = RejectReason::ALL
            .iter()
            .position(|r| *r == reason)
            .unwrap_or(0);
        &self.rejected[i]
    }
    /// Counter of JSON fixes refused before conversion (same metric, its own reason).
    pub fn rejected_json(&self, reason: JsonReject) -> &Counter {
        &self.rejected_json[reason as usize]
    }
    pub fn sessions_active(&self) -> &Gauge {
        &self.sessions_active
    }
    /// Counter of refused sessions for one of [`SESSION_REJECT_REASONS`].
    pub fn sessions_rejected(&self, reason: &'static str) -> Counter {
        self.sessions_rejected
            .get_or_create(&ReasonLabel { reason })
            .clone()
    }
    pub fn batches_sent(&self) -> &Counter {
        &self.batches_sent
    }
    pub fn batch_fixes(&self) -> &Histogram {
        &self.batch_fixes
    }
    pub fn shed(&self) -> &Counter {
        &self.shed
    }
    pub fn hub_connected(&self) -> &Gauge {
        &self.hub_connected
    }
    pub fn hub_unacked_batches(&self) -> &Gauge {
        &self.hub_unacked_batches
    }
    pub fn auth_hits(&self) -> &Counter {
        &self.auth_hits
    }
    pub fn auth_misses(&self) -> &Counter {
        &self.auth_misses
    }
    pub fn uplinks_active(&self) -> &Gauge {
        &self.uplinks_active
    }
    /// Counter of fixes routed to `hub` (create once per uplink, not per fix).
    pub fn routed(&self, hub: &str) -> Counter {
        self.routed
            .get_or_create(&HubLabel {
                hub: hub.to_owned(),
            })
            .clone()
    }
    pub fn reroutes(&self) -> &Counter {
        &self.reroutes
    }
    pub fn draining(&self) -> &Gauge {
        &self.draining
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reject_reason_shows_at_zero_in_the_text_output() {
        let mut reg = Registry::default();
        let m = EdgeMetrics::register(&mut reg);
        m.rejected(RejectReason::Speed).inc();
        m.received(Transport::H3).inc_by(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        m.rejected_json(JsonReject::NegativeAccuracy).inc();
        assert!(
            text_contains_after(
                &reg,
                "edge_fixes_rejected_total{reason=\"negative_accuracy\"} 1"
            ),
            "negative_accuracy counted under the same metric"
        );
        for r in RejectReason::ALL {
            assert!(
                text.contains(&format!(
                    "edge_fixes_rejected_total{{reason=\"{}\"}}",
                    r.as_str()
                )),
                "{r:?}\n{text}"
            );
        }
        assert!(
            text.contains("edge_fixes_rejected_total{reason=\"speed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("edge_fixes_received_total{transport=\"h3\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("edge_sessions_rejected_total{reason=\"expired\"} 0"),
            "{text}"
        );
        assert_eq!(m.rejected(RejectReason::Speed).get(), 1);
    }

    fn text_contains_after(reg: &Registry, line: &str) -> bool {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, reg).expect("encode");
        text.contains(line)
    }

    #[test]
    fn routing_and_draining_metrics_render_with_their_names() {
        let mut reg = Registry::default();
        let m = EdgeMetrics::register(&mut reg);
        m.routed("hub-a").inc_by(2);
        m.uplinks_active().set(3);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &reg).expect("encode");
        for line in [
            "edge_fixes_routed_total{hub=\"hub-a\"} 2",
            "edge_uplinks_active 3",
            "edge_reroutes_total 0",
            "edge_draining 0",
            "edge_sessions_rejected_total{reason=\"draining\"} 0",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
