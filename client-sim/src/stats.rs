//! Counters and the latency histogram that simulated drivers and consumers write into.

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};

/// Shared measurements of one run.
#[derive(Debug)]
pub struct SimStats {
    pub fixes_sent: AtomicU64,
    pub fixes_sent_https: AtomicU64,
    /// Fixes made bad on purpose (accuracy beyond the limit), to exercise the filter.
    pub fixes_sent_bad: AtomicU64,
    pub datagram_send_errors: AtomicU64,
    pub positions_received: AtomicU64,
    /// Positions that arrived with a lower seq than one already seen (must stay 0).
    pub positions_out_of_order: AtomicU64,
    pub consumer_reconnects: AtomicU64,
    /// ETA frames received by consumers.
    pub etas_received: AtomicU64,
    latency_us: Mutex<Histogram<u64>>,
    errors: Mutex<BTreeMap<String, u64>>,
    events: Mutex<EventBook>,
}

/// Which status events were acknowledged by the hub and which each consumer saw.
#[derive(Debug, Default)]
struct EventBook {
    acked: HashMap<u64, BTreeSet<u64>>,
    /// consumer index -> (delivery, events seen)
    seen: HashMap<usize, (u64, BTreeSet<u64>)>,
}

/// Percentiles of the driver-to-consumer latency.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct LatencySummary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
    pub samples: u64,
}

/// Totals of status events: acknowledged by the hub, received by consumers, missing.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct EventSummary {
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
}

impl Default for SimStats {
    fn default() -> Self {
        Self::new()
    }
}

impl SimStats {
    pub fn new() -> Self {
        Self {
            fixes_sent: AtomicU64::new(0),
            fixes_sent_https: AtomicU64::new(0),
            fixes_sent_bad: AtomicU64::new(0),
            datagram_send_errors: AtomicU64::new(0),
            positions_received: AtomicU64::new(0),
            positions_out_of_order: AtomicU64::new(0),
            consumer_reconnects: AtomicU64::new(0),
            etas_received: AtomicU64::new(0),
            // 1 us .. 10 min, 3 significant digits.
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| {
                    Histogram::new(3)
                        .unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
                }),
            ),
            errors: Mutex::new(BTreeMap::new()),
            events: Mutex::new(EventBook::default()),
        }
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// Records a position's latency from the driver's timestamp to receipt, in microseconds.
    pub fn record_latency_us(&self, us: u64) {
        let _ = self.latency_us.lock().record(us.max(1));
    }

    pub fn latency(&self) -> LatencySummary {
        let h = self.latency_us.lock();
        let ms = |v: u64| v as f64 / 1000.0;
        LatencySummary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
            samples: h.len(),
        }
    }

    /// Notes an error (deduplicated by message, counted).
    pub fn error(&self, msg: impl Into<String>) {
        *self.errors.lock().entry(msg.into()).or_insert(0) += 1;
    }

    pub fn errors(&self) -> Vec<String> {
        self.errors
            .lock()
            .iter()
            .map(|(m, n)| {
                if *n > 1 {
                    format!("{m} (x{n})")
                } else {
                    m.clone()
                }
            })
            .collect()
    }

    /// The hub acknowledged (durably) event `seq` of `delivery`.
    pub fn event_acked(&self, delivery: u64, seq: u64) {
        self.events
            .lock()
            .acked
            .entry(delivery)
            .or_default()
            .insert(seq);
    }

    /// Registers consumer `idx` watching `delivery`.
    pub fn consumer_watches(&self, idx: usize, delivery: u64) {
        self.events
            .lock()
            .seen
            .entry(idx)
            .or_insert_with(|| (delivery, BTreeSet::new()));
    }

    /// Consumer `idx` received event `seq`.
    pub fn event_seen(&self, idx: usize, delivery: u64, seq: u64) {
        self.events
            .lock()
            .seen
            .entry(idx)
            .or_insert_with(|| (delivery, BTreeSet::new()))
            .1
            .insert(seq);
    }

    /// Acknowledged events, events received by consumers, and acknowledged events some
    /// consumer of that delivery never received.
    pub fn events(&self) -> EventSummary {
        let book = self.events.lock();
        let sent = book.acked.values().map(|s| s.len() as u64).sum();
        let mut received = 0;
        let mut lost = 0;
        for (delivery, seen) in book.seen.values() {
            received += seen.len() as u64;
            if let Some(acked) = book.acked.get(delivery) {
                lost += acked.difference(seen).count() as u64;
            }
        }
        EventSummary {
            sent,
            received,
            lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_acked_event_a_consumer_never_saw_counts_as_lost() {
        let s = SimStats::new();
        s.consumer_watches(0, 7);
        s.consumer_watches(1, 7);
        s.event_acked(7, 1);
        s.event_acked(7, 2);
        s.event_seen(0, 7, 1);
        s.event_seen(0, 7, 2);
        s.event_seen(1, 7, 1);
        let e = s.events();
        assert_eq!((e.sent, e.received, e.lost), (2, 3, 1));
    }

    #[test]
    fn latency_percentiles_come_from_recorded_samples() {
        let s = SimStats::new();
        for ms in 1..=100u64 {
            s.record_latency_us(ms * 1000);
        }
        let l = s.latency();
        assert!((l.p50 - 50.0).abs() < 1.0, "{l:?}");
        assert!((l.p99 - 99.0).abs() < 1.0, "{l:?}");
        assert_eq!(l.samples, 100);
    }
}
