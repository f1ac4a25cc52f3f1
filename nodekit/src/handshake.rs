//! Admission control for handshakes: bounds the handshakes a listener has in flight and the
//! rate of new ones, so a burst of reconnects (every client of a failed node at once) turns
//! into quick, clear refusals and address-validation round trips instead of a storm of
//! half-finished TLS handshakes that starves the sessions already up.
//!
//! [`HandshakeGate`] is the decision, sans-IO: fed `on_incoming(now, address_validated)` and
//! `on_done()`, it answers [`Admission::Admit`], [`Admission::Retry`] or
//! [`Admission::Refuse`]. [`ListenerGate`] wraps it for a listener's tasks: a lock, the
//! Prometheus metrics, and a [`HandshakePermit`] that gives the slot back when dropped.
//!
//! On a QUIC endpoint the decision is taken per `quinn::Incoming`, before any crypto is
//! spent: `accept()`, `retry()` (a stateless Retry packet: the client proves its address
//! with one round trip) or `refuse()` (CONNECTION_REFUSED). On a TCP listener the TCP
//! handshake already validated the address, so it is admit or refuse (the connection is
//! closed before TLS starts).

use parking_lot::Mutex;
use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// Limits of one listener's [`HandshakeGate`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HandshakeGateConfig {
    /// Handshakes in progress at once; a new one beyond this is refused.
    pub max_in_flight: usize,
    /// Above this many handshakes in progress, a QUIC client whose address is not validated
    /// yet is first sent a Retry (one round trip, no crypto spent; a spoofed source never
    /// comes back). 0: always; `max_in_flight` or more: never. TCP listeners ignore it.
    pub retry_above_in_flight: usize,
    /// New handshakes admitted per second, sustained (token bucket).
    pub rate_per_s: f64,
    /// New handshakes admitted at once beyond the sustained rate (the bucket's size).
    pub burst: f64,
}

impl Default for HandshakeGateConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            retry_above_in_flight: 256,
            rate_per_s: 2000.0,
            burst: 2000.0,
        }
    }
}

impl HandshakeGateConfig {
    /// Checks the values; the message names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_in_flight == 0 {
            return Err("max_in_flight must be > 0".into());
        }
        if !(self.rate_per_s.is_finite() && self.rate_per_s > 0.0) {
            return Err(format!("rate_per_s must be > 0, got {}", self.rate_per_s));
        }
        if !(self.burst.is_finite() && self.burst >= 1.0) {
            return Err(format!("burst must be >= 1, got {}", self.burst));
        }
        Ok(())
    }
}

/// Why a handshake was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RefuseReason {
    /// `max_in_flight` handshakes were already in progress.
    InFlight,
    /// New handshakes came faster than `rate_per_s` (beyond `burst`).
    Rate,
}

impl RefuseReason {
    pub const ALL: [RefuseReason; 2] = [RefuseReason::InFlight, RefuseReason::Rate];

    /// The `reason` label of `handshakes_refused_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefuseReason::InFlight => "in_flight",
            RefuseReason::Rate => "rate",
        }
    }
}

impl EncodeLabelValue for RefuseReason {
    fn encode(
        &self,
        encoder: &mut prometheus_client::encoding::LabelValueEncoder,
    ) -> Result<(), std::fmt::Error> {
        EncodeLabelValue::encode(&self.as_str(), encoder)
    }
}

/// What to do with a new handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead; call [`HandshakeGate::on_done`] when it finished (either way).
    Admit,
    /// Ask the client to validate its address first (QUIC Retry); nothing is held.
    Retry,
    /// Turn it away now; nothing is held.
    Refuse(RefuseReason),
}

/// The sans-IO decision (see the module docs). Time comes in as `now`.
#[derive(Debug)]
pub struct HandshakeGate {
    cfg: HandshakeGateConfig,
    in_flight: usize,
    tokens: f64,
    refilled_at: Option<Instant>,
}

impl HandshakeGate {
    /// A gate with a full bucket and nothing in flight.
    pub fn new(cfg: HandshakeGateConfig) -> Self {
        Self {
            tokens: cfg.burst,
            cfg,
            in_flight: 0,
            refilled_at: None,
        }
    }

    /// Handshakes admitted and not done yet.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Decides on a new handshake at `now`. In order: refuse past `max_in_flight`; retry an
    /// unvalidated client past `retry_above_in_flight`; refuse past the rate; else admit
    /// (which takes a slot until [`on_done`](Self::on_done)).
    pub fn on_incoming(&mut self, now: Instant, address_validated: bool) -> Admission {
        if self.in_flight >= self.cfg.max_in_flight {
            return Admission::Refuse(RefuseReason::InFlight);
        }
        if !address_validated && self.in_flight >= self.cfg.retry_above_in_flight {
            return Admission::Retry;
        }
        if let Some(last) = self.refilled_at {
            let elapsed_s = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed_s * self.cfg.rate_per_s).min(self.cfg.burst);
        }
        self.refilled_at = Some(now);
        if self.tokens < 1.0 {
            return Admission::Refuse(RefuseReason::Rate);
        }
        self.tokens -= 1.0;
        self.in_flight += 1;
        Admission::Admit
    }

    /// An admitted handshake finished (completed, failed or timed out): its slot is free.
    pub fn on_done(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ListenerLabel {
    listener: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefusedLabel {
    listener: String,
    reason: RefuseReason,
}

/// The gates' metrics in one registry, labelled by listener (register once per node).
#[derive(Clone, Debug)]
pub struct HandshakeMetrics {
    in_flight: Family<ListenerLabel, Gauge>,
    admitted: Family<ListenerLabel, Counter>,
    retried: Family<ListenerLabel, Counter>,
    refused: Family<RefusedLabel, Counter>,
    duration: Family<ListenerLabel, Histogram>,
}

impl HandshakeMetrics {
    /// Creates the metric families and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            in_flight: Family::default(),
            admitted: Family::default(),
            retried: Family::default(),
            refused: Family::default(),
            // 1 ms .. ~16 s
            duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 2.0, 15))
            }),
        };
        registry.register(
            "handshakes_in_flight",
            "Handshakes admitted and not finished yet, by listener",
            m.in_flight.clone(),
        );
        registry.register(
            "handshakes_admitted",
            "Handshakes admitted, by listener",
            m.admitted.clone(),
        );
        registry.register(
            "handshakes_retried",
            "QUIC handshakes answered with a Retry (address validation first), by listener",
            m.retried.clone(),
        );
        registry.register(
            "handshakes_refused",
            "Handshakes refused before any crypto, by listener and reason (in_flight, rate)",
            m.refused.clone(),
        );
        registry.register(
            "handshake_duration_seconds",
            "Time from admission to the end of the handshake (done or failed), by listener",
            m.duration.clone(),
        );
        m
    }

    /// A gate for the listener named `listener` (e.g. `quic`, `https`) reporting here; its
    /// label values show (at 0) from now on.
    pub fn gate(&self, listener: &str, cfg: HandshakeGateConfig) -> Arc<ListenerGate> {
        let l = ListenerLabel {
            listener: listener.to_owned(),
        };
        let refused = RefuseReason::ALL.map(|reason| {
            self.refused
                .get_or_create(&RefusedLabel {
                    listener: listener.to_owned(),
                    reason,
                })
                .clone()
        });
        Arc::new(ListenerGate {
            gate: Mutex::new(HandshakeGate::new(cfg)),
            in_flight: self.in_flight.get_or_create(&l).clone(),
            admitted: self.admitted.get_or_create(&l).clone(),
            retried: self.retried.get_or_create(&l).clone(),
            refused,
            duration: self.duration.get_or_create(&l).clone(),
        })
    }
}

/// One listener's gate, shared by its accept loop and handshake tasks.
#[derive(Debug)]
pub struct ListenerGate {
    gate: Mutex<HandshakeGate>,
    in_flight: Gauge,
    admitted: Counter,
    retried: Counter,
    refused: [Counter; 2],
    duration: Histogram,
}

/// [`ListenerGate::admit`]'s answer.
#[derive(Debug)]
pub enum Decision {
    /// Go ahead; keep the permit until the handshake is over.
    Admit(HandshakePermit),
    Retry,
    Refuse(RefuseReason),
}

impl ListenerGate {
    /// Decides on a new handshake now and counts the decision.
    pub fn admit(self: &Arc<Self>, address_validated: bool) -> Decision {
        let now = Instant::now();
        let admission = self.gate.lock().on_incoming(now, address_validated);
        match admission {
            Admission::Admit => {
                self.admitted.inc();
                self.in_flight.inc();
                Decision::Admit(HandshakePermit {
                    gate: self.clone(),
                    started: now,
                })
            }
            Admission::Retry => {
                self.retried.inc();
                Decision::Retry
            }
            Admission::Refuse(reason) => {
                self.count_refused(reason);
                Decision::Refuse(reason)
            }
        }
    }

    /// Counts a refusal decided elsewhere (a QUIC client that cannot be retried again).
    pub fn count_refused(&self, reason: RefuseReason) {
        self.refused[reason as usize].inc();
    }

    pub fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }
    pub fn admitted(&self) -> u64 {
        self.admitted.get()
    }
    pub fn retried(&self) -> u64 {
        self.retried.get()
    }
    pub fn refused(&self, reason: RefuseReason) -> u64 {
        self.refused[reason as usize].get()
    }
}

/// An admitted handshake's slot; dropping it (when the handshake is over, however it ended)
/// frees the slot and records the handshake's duration.
#[derive(Debug)]
pub struct HandshakePermit {
    gate: Arc<ListenerGate>,
    started: Instant,
}

impl Drop for HandshakePermit {
    fn drop(&mut self) {
        self.gate.gate.lock().on_done();
        self.gate.in_flight.dec();
        self.gate
            .duration
            .observe(self.started.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(max_in_flight: usize, retry_above: usize, rate: f64, burst: f64) -> HandshakeGateConfig {
        HandshakeGateConfig {
            max_in_flight,
            retry_above_in_flight: retry_above,
            rate_per_s: rate,
            burst,
        }
    }

    #[test]
    fn refuses_past_the_in_flight_limit_until_a_handshake_is_done() {
        let t = Instant::now();
        let mut g = HandshakeGate::new(cfg(2, 2, 1000.0, 1000.0));
        assert_eq!(g.on_incoming(t, true), Admission::Admit);
        assert_eq!(g.on_incoming(t, true), Admission::Admit);
        assert_eq!(
            g.on_incoming(t, true),
            Admission::Refuse(RefuseReason::InFlight)
        );
        assert_eq!(g.in_flight(), 2);
        g.on_done();
        assert_eq!(g.on_incoming(t, true), Admission::Admit);
    }

    #[test]
    fn asks_unvalidated_clients_to_retry_once_busy_but_admits_validated_ones() {
        let t = Instant::now();
        let mut g = HandshakeGate::new(cfg(10, 1, 1000.0, 1000.0));
        assert_eq!(g.on_incoming(t, false), Admission::Admit, "not busy yet");
        assert_eq!(g.on_incoming(t, false), Admission::Retry);
        assert_eq!(g.in_flight(), 1, "a retry holds nothing");
        assert_eq!(
            g.on_incoming(t, true),
            Admission::Admit,
            "came back validated"
        );
        let mut always = HandshakeGate::new(cfg(10, 0, 1000.0, 1000.0));
        assert_eq!(always.on_incoming(t, false), Admission::Retry);
    }

    #[test]
    fn a_burst_beyond_the_rate_is_refused_and_the_bucket_refills_with_time() {
        let t = Instant::now();
        let mut g = HandshakeGate::new(cfg(100, 100, 10.0, 3.0));
        for _ in 0..3 {
            assert_eq!(g.on_incoming(t, true), Admission::Admit);
            g.on_done();
        }
        assert_eq!(
            g.on_incoming(t, true),
            Admission::Refuse(RefuseReason::Rate)
        );
        // 10 per second: one more after 100 ms, not before.
        assert_eq!(
            g.on_incoming(t + Duration::from_millis(50), true),
            Admission::Refuse(RefuseReason::Rate)
        );
        assert_eq!(
            g.on_incoming(t + Duration::from_millis(150), true),
            Admission::Admit
        );
        // Refilling never goes past the burst.
        g.on_done();
        let later = t + Duration::from_secs(60);
        for _ in 0..3 {
            assert_eq!(g.on_incoming(later, true), Admission::Admit);
        }
        assert_eq!(
            g.on_incoming(later, true),
            Admission::Refuse(RefuseReason::Rate)
        );
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(HandshakeGateConfig::default().validate().is_ok());
        let e = cfg(0, 0, 1.0, 1.0).validate().expect_err("zero");
        assert!(e.contains("max_in_flight"), "{e}");
        let e = cfg(1, 0, 0.0, 1.0).validate().expect_err("rate");
        assert!(e.contains("rate_per_s"), "{e}");
    }

    #[test]
    fn permits_free_their_slot_and_the_metrics_say_so() {
        let mut registry = Registry::default();
        let metrics = HandshakeMetrics::register(&mut registry);
        let gate = metrics.gate("quic", cfg(1, 1, 1000.0, 1000.0));
        let permit = match gate.admit(true) {
            Decision::Admit(p) => p,
            other => panic!("expected admit, got {other:?}"),
        };
        assert!(matches!(
            gate.admit(true),
            Decision::Refuse(RefuseReason::InFlight)
        ));
        assert!(matches!(gate.admit(false), Decision::Refuse(_)));
        assert_eq!(gate.in_flight(), 1);
        drop(permit);
        assert_eq!(gate.in_flight(), 0);
        assert!(matches!(gate.admit(false), Decision::Admit(_)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).expect("encode");
        for line in [
            "handshakes_in_flight{listener=\"quic\"} 0",
            "handshakes_admitted_total{listener=\"quic\"} 2",
            "handshakes_refused_total{listener=\"quic\",reason=\"in_flight\"} 2",
            "handshakes_refused_total{listener=\"quic\",reason=\"rate\"} 0",
            "handshakes_retried_total{listener=\"quic\"} 0",
            "handshake_duration_seconds_count{listener=\"quic\"} 2",
        ] {
            assert!(text.contains(line), "{line}\n{text}");
        }
    }
}
