//! Wall-clock seconds, injectable so token lifetimes can be tested without waiting.

use std::sync::atomic::{AtomicU64, Ordering};

/// A source of Unix time in seconds (JWT `iat`, token expiry, `apns-expiration`).
pub trait Clock: Send + Sync {
    /// Seconds since the Unix epoch.
    fn unix_s(&self) -> u64;
}

/// The system clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn unix_s(&self) -> u64 {
        nodekit::unix_s()
    }
}

/// A clock that moves only when told to (tests, simulations).
#[derive(Debug, Default)]
pub struct ManualClock(AtomicU64);

impl ManualClock {
    /// A clock showing `unix_s`.
    pub fn new(unix_s: u64) -> Self {
        Self(AtomicU64::new(unix_s))
    }

    /// Moves the clock forward by `secs`.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }

    /// Sets the clock to `unix_s`.
    pub fn set(&self, unix_s: u64) {
        self.0.store(unix_s, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn unix_s(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}
