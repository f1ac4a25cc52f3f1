//! Sans-IO pacing of many senders: `n` senders, one message each per `interval`, spread evenly
//! over the interval (round robin), so the offered rate is smooth rather than bursty.

use std::time::Duration;

/// Which sends are due: sender `k % n` makes the `k`-th send; send `k` is due at
/// `k * interval / n` after the start.
#[derive(Clone, Debug)]
pub struct Pacer {
    n: u64,
    interval_ns: u128,
    sent: u64,
}

impl Pacer {
    /// `n` senders (at least 1), each sending once per `interval` (at least 1 ns).
    pub fn new(n: usize, interval: Duration) -> Self {
        Self {
            n: (n as u64).max(1),
            interval_ns: interval.as_nanos().max(1),
            sent: 0,
        }
    }

    /// Sends made so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// The senders due by `elapsed` since the start, in order (indices `0..n`, repeating),
    /// at most `max` of them (the caller comes back for the rest: a stalled sender does not
    /// turn into a burst larger than `max`). Marks them as sent.
    pub fn due(&mut self, elapsed: Duration, max: usize) -> impl Iterator<Item = usize> {
        let total = (elapsed.as_nanos() * u128::from(self.n) / self.interval_ns) as u64;
        let from = self.sent;
        let to = total.min(from.saturating_add(max as u64)).max(from);
        self.sent = to;
        let n = self.n;
        (from..to).map(move |k| (k % n) as usize)
    }

    /// Time (since the start) at which the next send is due.
    pub fn next_due(&self) -> Duration {
        let ns = u128::from(self.sent) * self.interval_ns / u128::from(self.n);
        Duration::from_nanos(ns.min(u128::from(u64::MAX)) as u64)
    }

    /// Skips the sends due by `elapsed` without making them (a run that starts late, or a
    /// generator that fell behind and would rather drop than burst). Returns how many.
    pub fn skip_to(&mut self, elapsed: Duration) -> u64 {
        let total = (elapsed.as_nanos() * u128::from(self.n) / self.interval_ns) as u64;
        let skipped = total.saturating_sub(self.sent);
        self.sent = self.sent.max(total);
        skipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_sender_sends_once_per_interval_in_round_robin() {
        let mut p = Pacer::new(4, Duration::from_millis(100));
        assert_eq!(p.due(Duration::ZERO, 100).count(), 0);
        assert_eq!(
            p.due(Duration::from_millis(25), 100).collect::<Vec<_>>(),
            vec![0]
        );
        assert_eq!(p.next_due(), Duration::from_millis(25));
        assert_eq!(
            p.due(Duration::from_millis(100), 100).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert_eq!(
            p.due(Duration::from_millis(300), 100).collect::<Vec<_>>(),
            vec![0, 1, 2, 3, 0, 1, 2, 3]
        );
        assert_eq!(p.sent(), 12);
    }

    #[test]
    fn a_late_caller_gets_at_most_max_and_the_rest_next_time() {
        let mut p = Pacer::new(1000, Duration::from_secs(1));
        assert_eq!(p.due(Duration::from_secs(1), 300).count(), 300);
        assert_eq!(p.due(Duration::from_secs(1), 1000).count(), 700);
        assert_eq!(p.due(Duration::from_secs(1), 1000).count(), 0);
    }

    #[test]
    fn skipping_drops_what_was_due_without_sending_it() {
        let mut p = Pacer::new(10, Duration::from_secs(1));
        assert_eq!(p.skip_to(Duration::from_millis(550)), 5);
        assert_eq!(
            p.due(Duration::from_millis(700), 100).collect::<Vec<_>>(),
            vec![5, 6]
        );
    }
}
