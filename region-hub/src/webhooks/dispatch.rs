//! The sans-IO webhook dispatcher: fed the outbox rows, the result of every send and `now`, it
//! says what to send, when to wake, and what to acknowledge or dead-letter.
//!
//! Rows queue per (subscription, delivery) in outbox order; only a queue's head is ever in
//! flight, so a receiver sees each delivery's events in order, and one subscription's retries
//! never hold up another's. A failed send is retried after an exponential backoff with jitter
//! (or the receiver's `Retry-After`, when longer); `410 Gone` dead-letters the row at once,
//! any other failure once the row is older than `dead_letter_after_ms`.

use crate::webhooks::subscription::EventKind;
use protocol::DeliveryId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

/// Longest `Retry-After` honoured, seconds (a longer one is cut to this).
pub const MAX_RETRY_AFTER_S: u64 = 3_600;

/// Key of one outbox row: subscription, delivery, position in the hub's outbox.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RowKey {
    pub subscription: String,
    pub delivery: DeliveryId,
    /// Outbox sequence number (monotone per hub, so per-queue order is commit order).
    pub oseq: u64,
}

impl RowKey {
    pub fn queue(&self) -> QueueKey {
        (self.subscription.clone(), self.delivery)
    }
}

/// One queue: a subscription's rows about one delivery.
pub type QueueKey = (String, DeliveryId);

/// A row waiting to be delivered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pending {
    pub key: RowKey,
    /// When the row was committed (unix ms); its dead-letter clock starts here.
    pub created_ms: u64,
    pub kind: EventKind,
    /// `Trackline-Idempotency-Key`: the same on every attempt and on every hub.
    pub idempotency_key: String,
    /// The JSON body, byte-identical on every attempt.
    pub body: Arc<[u8]>,
}

/// How one attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx answer.
    Delivered,
    /// Any other status; `retry_after_s` from the `Retry-After` header.
    Status {
        code: u16,
        retry_after_s: Option<u64>,
    },
    /// No answer within the request timeout.
    Timeout,
    /// The connection could not be made (refused, TLS, DNS).
    Connect,
    /// The connection broke before an answer (reset, closed).
    Reset,
}

impl Outcome {
    /// Label of `hub_webhook_failed_total{reason}`.
    pub fn reason(&self) -> &'static str {
        match self {
            Outcome::Delivered => "none",
            Outcome::Status { code, .. } => match code {
                300..=399 => "3xx",
                400..=499 => "4xx",
                500..=599 => "5xx",
                _ => "other_status",
            },
            Outcome::Timeout => "timeout",
            Outcome::Connect => "connect",
            Outcome::Reset => "reset",
        }
    }
}

/// What the async side must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this row now and report with [`Dispatcher::handle_result`].
    Send(Pending),
    /// The row was delivered: delete it from the outbox.
    Ack(RowKey),
    /// The attempt failed; the row is tried again at `at_ms`.
    Retry { key: RowKey, at_ms: u64 },
    /// The row is given up: move it to the dead letters with `reason`.
    DeadLetter { row: Pending, reason: String },
    /// Another hub owns the delivery and the row outlived `dead_letter_after_ms` here: delete
    /// it (the owner delivers or dead-letters its own copy).
    Drop(RowKey),
}

/// Retry tuning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DispatcherConfig {
    /// First retry delay; doubled on every further failure.
    pub backoff_base_ms: u64,
    /// Longest delay between two attempts (before jitter).
    pub backoff_max_ms: u64,
    /// A row still failing this long after its commit is dead-lettered.
    pub dead_letter_after_ms: u64,
}

#[derive(Debug, Default)]
struct Queue {
    rows: VecDeque<Pending>,
    /// Failed attempts of the head row.
    attempts: u32,
    /// The head row is not sent before this (unix ms).
    next_at_ms: u64,
    in_flight: bool,
}

/// The decision logic of webhook delivery (see the module doc).
#[derive(Debug)]
pub struct Dispatcher {
    config: DispatcherConfig,
    queues: BTreeMap<QueueKey, Queue>,
    rng: StdRng,
    /// Where the next [`Dispatcher::poll`] starts looking (round robin between queues).
    cursor: Option<QueueKey>,
}

impl Dispatcher {
    /// `seed` drives the backoff jitter (tests pass a fixed one).
    pub fn new(config: DispatcherConfig, seed: u64) -> Self {
        Self {
            config,
            queues: BTreeMap::new(),
            rng: StdRng::seed_from_u64(seed),
            cursor: None,
        }
    }

    /// Adds rows read from the outbox (a row already queued is ignored). Rows come from the
    /// scan at start and from each commit after it; the caller hands over the commits' rows
    /// that overlap the scan before anything is sent, so a row done here never comes back.
    pub fn handle_rows(&mut self, rows: impl IntoIterator<Item = Pending>) {
        for row in rows {
            let q = self.queues.entry(row.key.queue()).or_default();
            match q.rows.binary_search_by_key(&row.key.oseq, |r| r.key.oseq) {
                Ok(_) => {}
                // Never in front of a head that is in flight.
                Err(0) if q.in_flight => q.rows.insert(1, row),
                Err(i) => q.rows.insert(i, row),
            }
        }
    }

    /// Forgets the queues of subscriptions not in `keep` (deleted ones).
    pub fn retain_subscriptions(&mut self, keep: &[String]) {
        self.queues.retain(|(sub, _), _| keep.contains(sub));
        if self.cursor.as_ref().is_some_and(|(s, _)| !keep.contains(s)) {
            self.cursor = None;
        }
    }

    /// Rows to send now (at most `max_sends`) for deliveries this hub `owns`, and rows of
    /// other hubs' deliveries to drop.
    pub fn poll(
        &mut self,
        now_ms: u64,
        max_sends: usize,
        owns: impl Fn(DeliveryId) -> bool,
    ) -> Vec<Action> {
        let mut out = Vec::new();
        let mut sends = 0;
        let keys: Vec<QueueKey> = match &self.cursor {
            Some(c) => self
                .queues
                .range(c.clone()..)
                .chain(self.queues.range(..c.clone()))
                .map(|(k, _)| k.clone())
                .collect(),
            None => self.queues.keys().cloned().collect(),
        };
        let dead_after = self.config.dead_letter_after_ms;
        for key in keys {
            if sends >= max_sends {
                self.cursor = Some(key);
                return out;
            }
            let Some(q) = self.queues.get_mut(&key) else {
                continue;
            };
            if q.in_flight || q.next_at_ms > now_ms {
                continue;
            }
            if owns(key.1) {
                if let Some(head) = q.rows.front() {
                    q.in_flight = true;
                    sends += 1;
                    out.push(Action::Send(head.clone()));
                }
            } else {
                while q
                    .rows
                    .front()
                    .is_some_and(|r| now_ms.saturating_sub(r.created_ms) >= dead_after)
                {
                    if let Some(r) = q.rows.pop_front() {
                        q.attempts = 0;
                        out.push(Action::Drop(r.key));
                    }
                }
                if q.rows.is_empty() {
                    self.queues.remove(&key);
                }
            }
        }
        self.cursor = None;
        out
    }

    /// The result of sending `key` (an [`Action::Send`] of this dispatcher).
    pub fn handle_result(&mut self, now_ms: u64, key: &RowKey, outcome: Outcome) -> Vec<Action> {
        let Some(q) = self.queues.get_mut(&key.queue()) else {
            return Vec::new(); // the subscription was deleted meanwhile
        };
        if q.rows.front().is_none_or(|r| r.key != *key) {
            return Vec::new();
        }
        q.in_flight = false;
        let dead = |q: &mut Queue, reason: String| {
            let row = q.rows.pop_front().expect("head checked above");
            q.attempts = 0;
            q.next_at_ms = 0;
            vec![Action::DeadLetter { row, reason }]
        };
        let actions = match outcome {
            Outcome::Delivered => {
                q.rows.pop_front();
                q.attempts = 0;
                q.next_at_ms = 0;
                vec![Action::Ack(key.clone())]
            }
            Outcome::Status { code: 410, .. } => dead(q, "410 Gone".into()),
            _ => {
                q.attempts = q.attempts.saturating_add(1);
                let created = q.rows.front().map_or(now_ms, |r| r.created_ms);
                if now_ms.saturating_sub(created) >= self.config.dead_letter_after_ms {
                    let reason = match outcome {
                        Outcome::Status { code, .. } => format!("HTTP {code}"),
                        other => other.reason().to_owned(),
                    };
                    let reason = format!("{reason} after {} attempts", q.attempts);
                    dead(q, reason)
                } else {
                    let backoff = backoff_ms(&self.config, q.attempts, &mut self.rng);
                    let retry_after = match outcome {
                        Outcome::Status {
                            retry_after_s: Some(s),
                            ..
                        } => s.min(MAX_RETRY_AFTER_S) * 1000,
                        _ => 0,
                    };
                    q.next_at_ms = now_ms + backoff.max(retry_after);
                    vec![Action::Retry {
                        key: key.clone(),
                        at_ms: q.next_at_ms,
                    }]
                }
            }
        };
        // An empty queue is forgotten (its next row, if any, starts a new one).
        if q.rows.is_empty() {
            self.queues.remove(&key.queue());
        }
        actions
    }

    /// When [`Dispatcher::poll`] has something to do next (`None`: nothing queued).
    pub fn next_wake_ms(&self, owns: impl Fn(DeliveryId) -> bool) -> Option<u64> {
        self.queues
            .iter()
            .filter(|(_, q)| !q.in_flight)
            .filter_map(|((_, d), q)| {
                let head = q.rows.front()?;
                Some(if owns(*d) {
                    q.next_at_ms
                } else {
                    head.created_ms
                        .saturating_add(self.config.dead_letter_after_ms)
                })
            })
            .min()
    }

    /// Rows waiting for deliveries this hub owns, and the age of the oldest (ms).
    pub fn pending(&self, now_ms: u64, owns: impl Fn(DeliveryId) -> bool) -> (usize, u64) {
        let mut n = 0;
        let mut oldest = 0;
        for ((_, d), q) in &self.queues {
            if !owns(*d) {
                continue;
            }
            n += q.rows.len();
            if let Some(h) = q.rows.front() {
                oldest = oldest.max(now_ms.saturating_sub(h.created_ms));
            }
        }
        (n, oldest)
    }
}

/// Delay before attempt `attempts + 1`: `base * 2^(attempts-1)` capped at `max`, then a random
/// point in its upper half (jitter, so receivers that came back are not hit in lockstep).
pub fn backoff_ms(config: &DispatcherConfig, attempts: u32, rng: &mut impl Rng) -> u64 {
    let exp = attempts.saturating_sub(1).min(32);
    let d = config
        .backoff_base_ms
        .saturating_mul(1u64 << exp)
        .min(config.backoff_max_ms)
        .max(1);
    d / 2 + rng.random_range(0..=d - d / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: DispatcherConfig = DispatcherConfig {
        backoff_base_ms: 100,
        backoff_max_ms: 1_000,
        dead_letter_after_ms: 60_000,
    };

    fn row(sub: &str, delivery: u64, oseq: u64, created_ms: u64) -> Pending {
        Pending {
            key: RowKey {
                subscription: sub.into(),
                delivery: DeliveryId(delivery),
                oseq,
            },
            created_ms,
            kind: EventKind::Status,
            idempotency_key: format!("status:{delivery}:{oseq}"),
            body: Arc::from(&b"{}"[..]),
        }
    }

    fn sends(actions: &[Action]) -> Vec<(String, u64, u64)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Send(p) => Some((p.key.subscription.clone(), p.key.delivery.0, p.key.oseq)),
                _ => None,
            })
            .collect()
    }

    const ALL: fn(DeliveryId) -> bool = |_| true;

    #[test]
    fn sends_one_row_per_queue_at_a_time_in_outbox_order() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows([row("a", 1, 2, 0), row("a", 1, 1, 0), row("a", 2, 3, 0)]);
        let first = d.poll(0, 10, ALL);
        assert_eq!(sends(&first), vec![("a".into(), 1, 1), ("a".into(), 2, 3)]);
        // Nothing more while the heads are in flight.
        assert!(d.poll(0, 10, ALL).is_empty());
        let k = row("a", 1, 1, 0).key;
        assert_eq!(
            d.handle_result(5, &k, Outcome::Delivered),
            vec![Action::Ack(k)]
        );
        assert_eq!(sends(&d.poll(5, 10, ALL)), vec![("a".into(), 1, 2)]);
    }

    #[test]
    fn one_subscriptions_failures_do_not_hold_up_another() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows([
            row("a", 1, 1, 0),
            row("a", 1, 2, 0),
            row("b", 1, 1, 0),
            row("b", 1, 2, 0),
        ]);
        assert_eq!(sends(&d.poll(0, 10, ALL)).len(), 2);
        let fail = Outcome::Status {
            code: 503,
            retry_after_s: None,
        };
        assert!(matches!(
            d.handle_result(1, &row("a", 1, 1, 0).key, fail)[..],
            [Action::Retry { .. }]
        ));
        d.handle_result(1, &row("b", 1, 1, 0).key, Outcome::Delivered);
        assert_eq!(sends(&d.poll(1, 10, ALL)), vec![("b".into(), 1, 2)]);
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let mut rng = StdRng::seed_from_u64(7);
        for (attempts, full) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1_000),
            (30, 1_000),
        ] {
            for _ in 0..50 {
                let b = backoff_ms(&CONFIG, attempts, &mut rng);
                assert!((full / 2..=full).contains(&b), "attempt {attempts}: {b}");
            }
        }
    }

    #[test]
    fn retry_after_is_honoured_when_longer_than_the_backoff() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows([row("a", 1, 1, 0)]);
        d.poll(0, 10, ALL);
        let k = row("a", 1, 1, 0).key;
        let r = d.handle_result(
            10,
            &k,
            Outcome::Status {
                code: 429,
                retry_after_s: Some(30),
            },
        );
        assert_eq!(
            r,
            vec![Action::Retry {
                key: k.clone(),
                at_ms: 30_010
            }]
        );
        assert!(d.poll(30_009, 10, ALL).is_empty());
        assert_eq!(d.next_wake_ms(ALL), Some(30_010));
        assert_eq!(sends(&d.poll(30_010, 10, ALL)).len(), 1);
        // A short Retry-After does not shorten the backoff.
        let r = d.handle_result(
            30_020,
            &k,
            Outcome::Status {
                code: 503,
                retry_after_s: Some(0),
            },
        );
        let [Action::Retry { at_ms, .. }] = &r[..] else {
            panic!("{r:?}")
        };
        assert!(*at_ms >= 30_020 + 100, "{at_ms}");
    }

    #[test]
    fn gone_dead_letters_at_once_and_the_queue_moves_on() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows([row("a", 1, 1, 0), row("a", 1, 2, 0)]);
        d.poll(0, 10, ALL);
        let r = d.handle_result(
            1,
            &row("a", 1, 1, 0).key,
            Outcome::Status {
                code: 410,
                retry_after_s: None,
            },
        );
        assert!(matches!(&r[..], [Action::DeadLetter { reason, .. }] if reason == "410 Gone"));
        assert_eq!(sends(&d.poll(1, 10, ALL)), vec![("a".into(), 1, 2)]);
    }

    #[test]
    fn other_failures_dead_letter_only_after_dead_letter_after() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows([row("a", 1, 1, 1_000)]);
        let k = row("a", 1, 1, 1_000).key;
        let mut now = 1_000;
        let mut attempts = 0;
        loop {
            assert_eq!(sends(&d.poll(now, 10, ALL)).len(), 1, "at {now}");
            attempts += 1;
            match &d.handle_result(now, &k, Outcome::Timeout)[..] {
                [Action::Retry { at_ms, .. }] => {
                    assert!(now - 1_000 < CONFIG.dead_letter_after_ms);
                    now = *at_ms;
                }
                [Action::DeadLetter { reason, .. }] => {
                    assert!(now - 1_000 >= CONFIG.dead_letter_after_ms);
                    assert_eq!(reason, &format!("timeout after {attempts} attempts"));
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(attempts > 5, "{attempts}");
        assert_eq!(d.pending(now, ALL), (0, 0));
    }

    #[test]
    fn a_row_handed_over_twice_is_queued_once_and_empty_queues_are_forgotten() {
        let mut d = Dispatcher::new(CONFIG, 1);
        // The scan at start and the commits' rows overlap.
        d.handle_rows([row("a", 1, 4, 0), row("a", 1, 5, 0)]);
        d.handle_rows([row("a", 1, 5, 0)]);
        assert_eq!(d.pending(0, ALL), (2, 0));
        for oseq in [4, 5] {
            assert_eq!(sends(&d.poll(1, 10, ALL)), vec![("a".into(), 1, oseq)]);
            d.handle_result(2, &row("a", 1, oseq, 0).key, Outcome::Delivered);
        }
        assert!(d.poll(3, 10, ALL).is_empty());
        assert_eq!(d.pending(3, ALL), (0, 0));
        assert!(d.queues.is_empty());
    }

    #[test]
    fn other_hubs_deliveries_are_not_sent_and_dropped_once_expired() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows([row("a", 1, 1, 0), row("a", 2, 2, 0)]);
        let mine = |id: DeliveryId| id == DeliveryId(1);
        assert_eq!(sends(&d.poll(0, 10, mine)), vec![("a".into(), 1, 1)]);
        assert_eq!(d.pending(10, mine), (1, 10));
        assert_eq!(d.next_wake_ms(mine), Some(60_000));
        let later = d.poll(60_000, 10, mine);
        assert_eq!(later, vec![Action::Drop(row("a", 2, 2, 0).key)]);
        // It becomes ours (a takeover): now it is sent.
        d.handle_rows([row("a", 2, 3, 60_000)]);
        assert_eq!(sends(&d.poll(60_001, 10, ALL)), vec![("a".into(), 2, 3)]);
    }

    #[test]
    fn poll_respects_the_send_budget_and_rotates_between_queues() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows((1..=4).map(|i| row("a", i, i, 0)));
        let first = sends(&d.poll(0, 2, ALL));
        assert_eq!(first, vec![("a".into(), 1, 1), ("a".into(), 2, 2)]);
        let second = sends(&d.poll(0, 2, ALL));
        assert_eq!(second, vec![("a".into(), 3, 3), ("a".into(), 4, 4)]);
    }

    #[test]
    fn deleted_subscriptions_are_forgotten_and_late_results_ignored() {
        let mut d = Dispatcher::new(CONFIG, 1);
        d.handle_rows([row("a", 1, 1, 0), row("b", 1, 2, 0)]);
        d.poll(0, 10, ALL);
        d.retain_subscriptions(&["b".to_owned()]);
        assert!(d
            .handle_result(1, &row("a", 1, 1, 0).key, Outcome::Delivered)
            .is_empty());
        assert_eq!(d.pending(1, ALL).0, 1);
    }
}
