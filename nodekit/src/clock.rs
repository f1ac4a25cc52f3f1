//! The nodes' notion of "now": the wall clock, or a scaled clock that runs `speedup` times
//! faster from an epoch, so that time-compressed simulations agree on one simulated time.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// Clock settings of a node. For simulations only: production nodes keep the defaults (the
/// wall clock).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClockConfig {
    /// How many times faster than real time the node's clock runs (1.0 = the wall clock). Fix
    /// timestamps, the edge's filter and the hub's ETA all read this clock; network timeouts
    /// stay in real time. Every node and the simulator of one run must use the same value.
    pub speedup: f64,
    /// Unix milliseconds at which simulated and real time coincide (the scaled clock is
    /// `epoch + (real - epoch) * speedup`); the node's start time when absent. Give every node
    /// of a run the same epoch.
    pub epoch_ms: Option<u64>,
}

impl Default for ClockConfig {
    fn default() -> Self {
        Self {
            speedup: 1.0,
            epoch_ms: None,
        }
    }
}

impl ClockConfig {
    /// Checks the speedup is a finite number of at least 1e-3.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.speedup.is_finite() && self.speedup >= 1e-3) {
            return Err(format!(
                "clock.speedup must be a finite number >= 0.001, got {}",
                self.speedup
            ));
        }
        Ok(())
    }

    /// The clock these settings describe (epoch = now when not given).
    pub fn clock(&self) -> Clock {
        if self.speedup == 1.0 {
            Clock::real()
        } else {
            Clock::scaled(self.epoch_ms.unwrap_or_else(crate::unix_ms), self.speedup)
        }
    }
}

/// A cheap, copyable clock: real or scaled.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Clock {
    epoch_ms: u64,
    speedup: f64,
}

impl Default for Clock {
    fn default() -> Self {
        Self::real()
    }
}

impl Clock {
    /// The wall clock.
    pub fn real() -> Self {
        Self {
            epoch_ms: 0,
            speedup: 1.0,
        }
    }

    /// `now = epoch_ms + (real_now - epoch_ms) * speedup`.
    pub fn scaled(epoch_ms: u64, speedup: f64) -> Self {
        Self { epoch_ms, speedup }
    }

    /// The speedup factor (1.0 for the wall clock).
    pub fn speedup(&self) -> f64 {
        self.speedup
    }

    /// The epoch (0 for the wall clock).
    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    /// This clock's time at a given wall-clock time, in Unix milliseconds.
    pub fn at_real_ms(&self, real_ms: f64) -> f64 {
        if self.speedup == 1.0 {
            return real_ms;
        }
        let e = self.epoch_ms as f64;
        e + (real_ms - e) * self.speedup
    }

    /// Now, in Unix milliseconds of this clock.
    pub fn now_ms(&self) -> u64 {
        self.now_ms_f64().max(0.0) as u64
    }

    /// Now, in Unix milliseconds (fractional).
    pub fn now_ms_f64(&self) -> f64 {
        let real = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0);
        self.at_real_ms(real)
    }

    /// Now, in Unix seconds of this clock.
    pub fn now_s(&self) -> u64 {
        self.now_ms() / 1000
    }

    /// Now, in Unix seconds (fractional), as the ETA model takes it.
    pub fn now_s_f64(&self) -> f64 {
        self.now_ms_f64() / 1000.0
    }

    /// A simulated duration in real time (what to sleep for), e.g. 20 s at speedup 20 -> 1 s.
    pub fn to_real(&self, sim: std::time::Duration) -> std::time::Duration {
        sim.div_f64(self.speedup.max(1e-3))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaled_clock_runs_speedup_times_faster_from_its_epoch() {
        let c = Clock::scaled(1_000_000, 20.0);
        assert_eq!(c.at_real_ms(1_000_000.0), 1_000_000.0);
        assert_eq!(c.at_real_ms(1_001_000.0), 1_020_000.0);
        let r = Clock::real();
        assert_eq!(r.at_real_ms(5.0), 5.0);
        let now = crate::unix_ms();
        assert!(r.now_ms() >= now && r.now_ms() < now + 10_000);
        let started_now = ClockConfig {
            speedup: 10.0,
            epoch_ms: None,
        }
        .clock();
        assert!(started_now.now_ms() >= now);
        assert_eq!(
            c.to_real(std::time::Duration::from_secs(20)),
            std::time::Duration::from_secs(1)
        );
        assert!(ClockConfig {
            speedup: 0.0,
            epoch_ms: None
        }
        .validate()
        .is_err());
    }
}
