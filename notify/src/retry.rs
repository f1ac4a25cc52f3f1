//! Backoff decisions for retryable send failures: sans-IO, the caller sleeps.

use std::time::Duration;

use http::HeaderMap;

use crate::config::RetryConfig;

/// What to do after a retryable failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryDecision {
    /// Wait this long, then try again.
    After(Duration),
    /// Every attempt is used up.
    GiveUp,
    /// The server asked for a pause longer than `max_delay_ms`: stop rather than block.
    TooLong(Duration),
}

/// Exponential backoff per [`RetryConfig`], honouring `retry-after`.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    config: RetryConfig,
}

impl RetryPolicy {
    /// A policy for the given settings.
    pub fn new(config: RetryConfig) -> Self {
        Self { config }
    }

    /// Total attempts allowed.
    pub fn attempts(&self) -> u32 {
        self.config.attempts.max(1)
    }

    /// The decision after attempt number `attempt` (1-based) failed retryably.
    ///
    /// The delay is `base_delay * 2^(attempt-1)` capped at `max_delay` (randomly shortened to
    /// between half and all of it with `jitter`), or `retry_after` when that is longer.
    /// `jitter_unit` is a number in `[0, 1)`; pass `rand::random()` in production.
    pub fn handle_failure(
        &self,
        attempt: u32,
        retry_after: Option<Duration>,
        jitter_unit: f64,
    ) -> RetryDecision {
        if attempt >= self.attempts() {
            return RetryDecision::GiveUp;
        }
        let max = Duration::from_millis(self.config.max_delay_ms);
        if let Some(wait) = retry_after {
            if wait > max {
                return RetryDecision::TooLong(wait);
            }
        }
        let exp = attempt.saturating_sub(1).min(30);
        let backoff_ms = self
            .config
            .base_delay_ms
            .saturating_mul(1u64 << exp)
            .min(self.config.max_delay_ms);
        let mut backoff = Duration::from_millis(backoff_ms);
        if self.config.jitter {
            let unit = jitter_unit.clamp(0.0, 1.0);
            backoff = backoff.mul_f64(0.5 + 0.5 * unit);
        }
        RetryDecision::After(retry_after.map_or(backoff, |wait| wait.max(backoff)))
    }
}

/// The `retry-after` header as a delay, when it is a number of seconds.
///
/// The HTTP-date form is not understood and yields `None` (the computed backoff applies).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(attempts: u32, jitter: bool) -> RetryPolicy {
        RetryPolicy::new(RetryConfig {
            attempts,
            base_delay_ms: 200,
            max_delay_ms: 1000,
            jitter,
        })
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let p = policy(6, false);
        let delays: Vec<_> = (1..6).map(|a| p.handle_failure(a, None, 0.0)).collect();
        let ms = |m| RetryDecision::After(Duration::from_millis(m));
        assert_eq!(delays, vec![ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        assert_eq!(p.handle_failure(6, None, 0.0), RetryDecision::GiveUp);
    }

    #[test]
    fn jitter_keeps_delays_between_half_and_full() {
        let p = policy(4, true);
        assert_eq!(
            p.handle_failure(2, None, 0.0),
            RetryDecision::After(Duration::from_millis(200))
        );
        assert_eq!(
            p.handle_failure(2, None, 0.5),
            RetryDecision::After(Duration::from_millis(300))
        );
    }

    #[test]
    fn retry_after_wins_when_longer_and_is_refused_past_the_cap() {
        let p = policy(4, true);
        assert_eq!(
            p.handle_failure(1, Some(Duration::from_secs(1)), 0.0),
            RetryDecision::After(Duration::from_secs(1))
        );
        assert_eq!(
            p.handle_failure(1, Some(Duration::ZERO), 0.0),
            RetryDecision::After(Duration::from_millis(100))
        );
        assert_eq!(
            p.handle_failure(1, Some(Duration::from_secs(30)), 0.0),
            RetryDecision::TooLong(Duration::from_secs(30))
        );
    }

    #[test]
    fn retry_after_accepts_seconds_only() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static(" 3 "),
        );
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }
}
