//! What the load generators count and report: latency percentiles and failures by reason.

use parking_lot::Mutex;
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Latency percentiles, milliseconds.
#[derive(Debug, Default, Serialize, Clone, Copy, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// A thread-safe latency histogram (microsecond resolution, up to an hour).
#[derive(Debug)]
pub struct Histogram(Mutex<hdrhistogram::Histogram<u64>>);

impl Default for Histogram {
    fn default() -> Self {
        // 1 µs .. 1 h with 3 significant figures.
        let h = hdrhistogram::Histogram::new_with_bounds(1, 3_600_000_000, 3)
            .expect("constant, valid histogram bounds");
        Self(Mutex::new(h))
    }
}

impl Histogram {
    pub fn record(&self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 3_600_000_000);
        let _ = self.0.lock().record(us);
    }

    pub fn percentiles(&self) -> Percentiles {
        let h = self.0.lock();
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            max: ms(h.max()),
        }
    }
}

/// Counts by reason (a short label).
#[derive(Debug, Default)]
pub struct ReasonCounts(Mutex<BTreeMap<String, u64>>);

impl ReasonCounts {
    pub fn add(&self, reason: &str) {
        *self.0.lock().entry(reason.to_owned()).or_insert(0) += 1;
    }

    pub fn total(&self) -> u64 {
        self.0.lock().values().sum()
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().clone()
    }
}

/// Writes `value` as JSON to `path` atomically (a temporary file, then a rename), so a
/// harness polling the file never reads half of it.
pub fn write_stats<T: Serialize>(path: &std::path::Path, value: &T) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec(value).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(&tmp, path)
}

/// A short, stable label for why a QUIC connection failed or ended.
pub fn classify(e: &quinn::ConnectionError) -> String {
    use quinn::ConnectionError as E;
    match e {
        E::TimedOut => "timed_out".into(),
        E::ConnectionClosed(c) if c.error_code == quinn::TransportErrorCode::CONNECTION_REFUSED => {
            "refused".into()
        }
        E::ConnectionClosed(c) => format!("transport_close_{}", c.error_code),
        E::ApplicationClosed(c) => format!("app_close_0x{:x}", c.error_code.into_inner()),
        E::Reset => "reset".into(),
        E::LocallyClosed => "locally_closed".into(),
        E::VersionMismatch => "version_mismatch".into(),
        E::TransportError(t) => format!("transport_error_{}", t.code),
        E::CidsExhausted => "cids_exhausted".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_in_milliseconds() {
        let h = Histogram::default();
        for ms in 1..=100 {
            h.record(Duration::from_millis(ms));
        }
        let p = h.percentiles();
        assert_eq!(p.count, 100);
        assert!((p.p50 - 50.0).abs() < 0.1, "{p:?}");
        assert!((p.max - 100.0).abs() < 0.1, "{p:?}");
    }

    #[test]
    fn reasons_are_counted_separately() {
        let c = ReasonCounts::default();
        c.add("refused");
        c.add("refused");
        c.add("timed_out");
        assert_eq!(c.total(), 3);
        assert_eq!(c.snapshot().get("refused"), Some(&2));
        assert_eq!(classify(&quinn::ConnectionError::TimedOut), "timed_out");
    }
}
