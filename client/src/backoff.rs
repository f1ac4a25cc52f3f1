//! Reconnect timing: exponential backoff with jitter, `Retry-After` honoured, reset after a
//! connection stayed up long enough to count as healthy.
//!
//! Sans-IO: the caller passes `now` and the random source; nothing here reads a clock.

use rand::Rng;
use std::time::{Duration, Instant};

/// How a session waits between connection attempts.
#[derive(Clone, Debug, PartialEq)]
pub struct BackoffConfig {
    /// Ceiling of the first retry's delay (the delay is drawn from `[ceiling/2, ceiling]`).
    pub initial: Duration,
    /// Largest ceiling, whatever the number of failures.
    pub max: Duration,
    /// Growth of the ceiling per consecutive failure.
    pub multiplier: f64,
    /// A connection that stayed up at least this long resets the failure count; a shorter one
    /// (accepted, then closed at once) counts as a failure, so a flapping server is not
    /// hammered at the initial delay.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_millis(500),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            stable_after: Duration::from_secs(10),
        }
    }
}

/// Consecutive failures and the delay they call for.
#[derive(Clone, Debug)]
pub struct Backoff {
    config: BackoffConfig,
    failures: u32,
    connected_at: Option<Instant>,
}

impl Backoff {
    pub fn new(config: BackoffConfig) -> Self {
        Self {
            config,
            failures: 0,
            connected_at: None,
        }
    }

    pub fn config(&self) -> &BackoffConfig {
        &self.config
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// The ceiling of the delay after `failures` consecutive failures (before jitter).
    pub fn ceiling(&self, failures: u32) -> Duration {
        let exp = self
            .config
            .multiplier
            .max(1.0)
            .powi(failures.saturating_sub(1).min(64) as i32);
        let secs = self.config.initial.as_secs_f64() * exp;
        Duration::from_secs_f64(secs.min(self.config.max.as_secs_f64()))
    }

    /// A connection is up (from `now`).
    pub fn on_connected(&mut self, now: Instant) {
        self.connected_at = Some(now);
    }

    /// A connection attempt failed or a connection ended at `now`: returns how long to wait
    /// before the next attempt. `retry_after` (a server's `Retry-After`) is a floor; jitter is
    /// added on top of it so that every refused client does not come back at the same moment.
    pub fn on_failure(
        &mut self,
        now: Instant,
        retry_after: Option<Duration>,
        rng: &mut impl Rng,
    ) -> Duration {
        let stable = self
            .connected_at
            .take()
            .is_some_and(|t| now.saturating_duration_since(t) >= self.config.stable_after);
        self.failures = if stable {
            1
        } else {
            self.failures.saturating_add(1)
        };
        let ceiling = self.ceiling(self.failures);
        // Equal jitter: never sooner than half the ceiling, spread over the other half.
        let jittered = jitter(ceiling / 2, ceiling, rng);
        match retry_after {
            Some(floor) => {
                let spread = (floor / 2).min(self.config.max).max(ceiling / 2);
                jitter(floor, floor + spread, rng)
            }
            None => jittered,
        }
    }

    /// Forgets past failures (e.g. after a redirect, which is not a failure).
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

/// A uniform delay in `[lo, hi]`.
fn jitter(lo: Duration, hi: Duration, rng: &mut impl Rng) -> Duration {
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo).as_nanos().min(u128::from(u64::MAX)) as u64;
    lo + Duration::from_nanos(rng.random_range(0..=span))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rng() -> rand::rngs::SmallRng {
        rand::rngs::SmallRng::seed_from_u64(7)
    }

    #[test]
    fn delays_grow_exponentially_within_half_to_full_ceiling_and_stop_at_max() {
        let cfg = BackoffConfig {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2),
            ..Default::default()
        };
        let mut b = Backoff::new(cfg);
        let mut r = rng();
        let t = Instant::now();
        let expected_ceilings = [100u64, 200, 400, 800, 1600, 2000, 2000];
        for ceiling_ms in expected_ceilings {
            let d = b.on_failure(t, None, &mut r);
            let c = Duration::from_millis(ceiling_ms);
            assert!(d >= c / 2 && d <= c, "{d:?} outside [{:?}, {c:?}]", c / 2);
        }
    }

    #[test]
    fn jitter_spreads_clients_that_failed_together() {
        let mut delays = std::collections::BTreeSet::new();
        let t = Instant::now();
        for seed in 0..50 {
            let mut b = Backoff::new(BackoffConfig::default());
            let mut r = rand::rngs::SmallRng::seed_from_u64(seed);
            b.on_failure(t, None, &mut r);
            delays.insert(b.on_failure(t, None, &mut r).as_millis());
        }
        // 50 clients, second failure: delays drawn over [500, 1000] ms are mostly distinct.
        assert!(delays.len() > 40, "{}", delays.len());
        assert!(delays.iter().all(|&d| (500..=1000).contains(&d)));
    }

    #[test]
    fn retry_after_is_a_floor() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut r = rng();
        let t = Instant::now();
        for _ in 0..20 {
            let d = b.on_failure(t, Some(Duration::from_secs(3)), &mut r);
            assert!(d >= Duration::from_secs(3), "{d:?}");
            assert!(
                d <= Duration::from_secs(3) + Duration::from_secs(30),
                "{d:?}"
            );
        }
    }

    #[test]
    fn only_a_connection_that_stayed_up_resets_the_failure_count() {
        let mut b = Backoff::new(BackoffConfig::default());
        let mut r = rng();
        let t0 = Instant::now();
        b.on_failure(t0, None, &mut r);
        b.on_failure(t0, None, &mut r);
        assert_eq!(b.failures(), 2);
        // Up for one second, then closed: a flap, counted as a third failure.
        b.on_connected(t0);
        b.on_failure(t0 + Duration::from_secs(1), None, &mut r);
        assert_eq!(b.failures(), 3);
        // Up for a minute: healthy, the next failure is the first again.
        b.on_connected(t0 + Duration::from_secs(2));
        b.on_failure(t0 + Duration::from_secs(62), None, &mut r);
        assert_eq!(b.failures(), 1);
    }
}
