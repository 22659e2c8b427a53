#[cfg(feature = "test-support")]
use std::sync::Mutex;

use async_trait::async_trait;
use portcullis_core::Timestamp;
#[cfg(feature = "test-support")]
use tokio::sync::watch;

/// Where time comes from: the system in production, virtual time in tests.
#[async_trait]
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
    /// Returns once `now() >= at`.
    async fn sleep_until(&self, at: Timestamp);
}

/// The wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

#[async_trait]
impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now_utc()
    }

    async fn sleep_until(&self, at: Timestamp) {
        loop {
            let left = at - self.now();
            if left <= time::Duration::ZERO {
                return;
            }
            // Re-check after waking: the wall clock may have been stepped meanwhile.
            tokio::time::sleep(left.try_into().unwrap_or_default()).await;
        }
    }
}

/// Virtual time that moves only when a test advances it (the `test-support` feature).
#[cfg(feature = "test-support")]
pub struct ManualClock {
    now: Mutex<Timestamp>,
    changed: watch::Sender<Timestamp>,
}

#[cfg(feature = "test-support")]
impl ManualClock {
    pub fn new(start: Timestamp) -> ManualClock {
        ManualClock { now: Mutex::new(start), changed: watch::channel(start).0 }
    }

    /// Moves time forward, waking every sleeper whose deadline has come.
    pub fn advance(&self, by: time::Duration) {
        let mut now = self.now.lock().expect("clock mutex poisoned");
        *now += by;
        self.changed.send_replace(*now);
    }
}

#[cfg(feature = "test-support")]
#[async_trait]
impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.now.lock().expect("clock mutex poisoned")
    }

    async fn sleep_until(&self, at: Timestamp) {
        let mut rx = self.changed.subscribe();
        let _ = rx.wait_for(|now| *now >= at).await;
    }
}

/// Virtual time that follows tokio's clock (the `test-support` feature): on a paused runtime
/// (`start_paused`) it moves only when every task waits, by exactly as much as the next timer
/// needs, so a test runs the real loops (sweeper, retries) over hours in milliseconds.
#[cfg(feature = "test-support")]
pub struct TokioClock {
    start: Timestamp,
    base: tokio::time::Instant,
}

#[cfg(feature = "test-support")]
impl TokioClock {
    /// A clock that reads `start` now.
    pub fn new(start: Timestamp) -> TokioClock {
        TokioClock { start, base: tokio::time::Instant::now() }
    }
}

#[cfg(feature = "test-support")]
#[async_trait]
impl Clock for TokioClock {
    fn now(&self) -> Timestamp {
        self.start + self.base.elapsed()
    }

    async fn sleep_until(&self, at: Timestamp) {
        let left = at - self.now();
        if left > time::Duration::ZERO {
            tokio::time::sleep(left.try_into().unwrap_or_default()).await;
        }
    }
}
