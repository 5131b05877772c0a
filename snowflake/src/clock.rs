//! Wall clocks for the id worker: the system clock (with an optional offset, the hook tests use
//! to set a daemon's clock back) and a manual clock that unit tests drive by hand.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

/// A source of wall-clock time in milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Returns the current time in milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;

    /// Returns once [`Clock::now_ms`] reads at least `target_ms`. Called with the worker's lock
    /// held, for waits of at most the backward-step tolerance or one millisecond.
    fn wait_until(&self, target_ms: u64);
}

/// The system clock, shifted by a fixed offset (zero outside fault-injection tests).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock {
    offset_ms: i64,
}

impl SystemClock {
    /// Returns a clock that reads `offset_ms` away from the system's.
    pub fn with_offset(offset_ms: i64) -> Self {
        Self { offset_ms }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        (since_epoch.as_millis() as u64).saturating_add_signed(self.offset_ms)
    }

    fn wait_until(&self, target_ms: u64) {
        loop {
            let now = self.now_ms();
            if now >= target_ms {
                return;
            }
            // Sleep through whole milliseconds; spin through the last one, because a sleep
            // overshoots by tens of microseconds and sequence exhaustion waits at most 1 ms.
            if target_ms - now > 1 {
                std::thread::sleep(Duration::from_millis(target_ms - now - 1));
            } else {
                std::hint::spin_loop();
            }
        }
    }
}

/// A clock that moves only when told to; waiting on it advances it to the target, so tests
/// see exactly which waits the worker made.
#[derive(Debug)]
pub struct ManualClock {
    now_ms: AtomicU64,
    waited_ms: AtomicU64,
}

impl ManualClock {
    /// Returns a clock that reads `now_ms`.
    pub fn new(now_ms: u64) -> Self {
        Self {
            now_ms: AtomicU64::new(now_ms),
            waited_ms: AtomicU64::new(0),
        }
    }

    /// Sets the time, forwards or backwards.
    pub fn set(&self, now_ms: u64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    /// Returns the total milliseconds the worker has waited on this clock.
    pub fn waited_ms(&self) -> u64 {
        self.waited_ms.load(Ordering::SeqCst)
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now_ms.load(Ordering::SeqCst)
    }

    fn wait_until(&self, target_ms: u64) {
        let before = self.now_ms.fetch_max(target_ms, Ordering::SeqCst);
        self.waited_ms
            .fetch_add(target_ms.saturating_sub(before), Ordering::SeqCst);
    }
}
