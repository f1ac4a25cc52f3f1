//! What a `scale` worker process reports to its coordinator, one JSON line per interval:
//! gauges of sessions held, cumulative counters, and latency samples since the last line.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Sessions of one kind: how many should be up (alive and not given up) and how many are.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Held {
    pub wanted: u64,
    pub connected: u64,
}

impl Held {
    pub fn add(&mut self, o: &Held) {
        self.wanted += o.wanted;
        self.connected += o.connected;
    }
}

/// One worker's state at `unix_ms`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WorkerSnapshot {
    pub unix_ms: u64,
    /// The worker has stopped starting deliveries and judged every one: its last line.
    pub last: bool,
    pub slots_started: u64,
    /// Sessions held by kind: `driver/quic`, `driver/https`, `consumer/webtransport`,
    /// `consumer/websocket`.
    pub held: BTreeMap<String, Held>,
    /// Handshake latencies (ms) since the previous line, by kind: (value, count) pairs.
    pub handshakes_ms: BTreeMap<String, Vec<(u64, u64)>>,
    /// Failed attempts by `kind/reason`, cumulative.
    pub failures: BTreeMap<String, u64>,
    /// Connections that were up and broke, by kind, cumulative.
    pub drops: BTreeMap<String, u64>,
    /// Successful reconnects (sessions connecting again after a drop or a failure), cumulative.
    pub reconnects: BTreeMap<String, u64>,
    /// Consumer sessions started for new deliveries, cumulative.
    pub new_consumers: u64,
    pub redirects: u64,
    /// Driver -> consumer latency samples (ms) since the previous line.
    pub latency_ms: Vec<(u64, u64)>,
    pub fixes_sent: u64,
    pub positions_received: u64,
    pub deliveries_created: u64,
    pub deliveries_completed: u64,
    /// Status events of judged deliveries: acknowledged by the hub, seen by the consumer.
    pub acknowledged: u64,
    pub seen: u64,
    pub lost: u64,
    /// `delivery/event_seq` of lost events (at most 50 per worker).
    pub lost_events: Vec<String>,
    /// Status changes the hub had made already from its geofences (409), replayed answers
    /// (idempotency key), and changes no retry got through.
    pub conflicts: u64,
    pub replayed: u64,
    pub failed_changes: u64,
    /// Event numbers a consumer saw skipped over (a gap in the delivery's log as pushed).
    pub event_gaps: u64,
    pub errors: u64,
    pub first_errors: Vec<String>,
}

/// A latency histogram in milliseconds (1 ms .. 1 h, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000, 3)
        .unwrap_or_else(|_| Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits is valid")))
}

/// The recorded values of `h` as (value, count) pairs.
pub fn pairs(h: &Histogram<u64>) -> Vec<(u64, u64)> {
    h.iter_recorded()
        .map(|v| (v.value_iterated_to(), v.count_at_value()))
        .collect()
}

/// Adds (value, count) pairs to `h`.
pub fn merge(h: &mut Histogram<u64>, pairs: &[(u64, u64)]) {
    for &(v, n) in pairs {
        let _ = h.record_n(v.max(1), n);
    }
}

/// p50 / p99 / max of a histogram, in the report's shape.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            p50: h.value_at_quantile(0.5) as f64,
            p99: h.value_at_quantile(0.99) as f64,
            max: h.max() as f64,
            samples: h.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_the_trip_through_pairs() {
        let mut a = new_histogram();
        for ms in 1..=1000u64 {
            a.record(ms).expect("in range");
        }
        let mut b = new_histogram();
        merge(&mut b, &pairs(&a));
        merge(&mut b, &pairs(&a));
        let p = Percentiles::of(&b);
        assert_eq!(p.samples, 2000);
        assert!((p.p50 - 500.0).abs() <= 1.0, "{p:?}");
        assert!((p.p99 - 990.0).abs() <= 1.0, "{p:?}");
    }
}
