//! The one source of "now": uploads, retention, GC, archival, the MySQL mirror
//! and URL signing all read time through a [`Clock`], so tests move time
//! instead of sleeping and every module agrees on what "now" is.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

/// Where "now" comes from.
pub trait Clock: Send + Sync {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> i64;

    /// Whole seconds since the Unix epoch (signed URLs count in seconds).
    fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// A shared clock handle, cheap to clone.
pub type SharedClock = Arc<dyn Clock>;

/// The system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        let now = time::OffsetDateTime::now_utc();
        (now.unix_timestamp_nanos() / 1_000_000) as i64
    }
}

/// The system clock as a [`SharedClock`].
pub fn system() -> SharedClock {
    Arc::new(SystemClock)
}

/// A clock that moves only when told to (tests and simulations).
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    /// Starts at `now_ms` (Unix milliseconds).
    pub fn at_ms(now_ms: i64) -> Self {
        ManualClock(AtomicI64::new(now_ms))
    }

    /// Starts at `now` (Unix seconds).
    pub fn new(now_secs: i64) -> Self {
        Self::at_ms(now_secs * 1000)
    }

    pub fn advance(&self, secs: i64) {
        self.advance_ms(secs * 1000);
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }

    pub fn set_ms(&self, now_ms: i64) {
        self.0.store(now_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let c = ManualClock::new(100);
        assert_eq!((c.now_secs(), c.now_ms()), (100, 100_000));
        c.advance(5);
        c.advance_ms(999);
        assert_eq!((c.now_secs(), c.now_ms()), (105, 105_999));
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }
}
