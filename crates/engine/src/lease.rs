//! One sweeper at a time: with several replicas (servers, scheduled Lambdas) on one store,
//! expiry, the periodic reconcile and the stream reader run only where the lease is held. The
//! lease is a conditional write in the store, renewed well before it lapses; a replica that dies
//! stops renewing, and another takes over once the lease lapses. Work done twice around a
//! hand-over is harmless (reconciles are idempotent, expiries are conditional writes), and none
//! is lost: whatever the dead holder left is due for the next holder.

use std::sync::{Arc, Mutex};

use portcullis_core::Timestamp;
use portcullis_store::{LeaseClaim, Store};
use tokio::sync::watch;

use crate::Clock;

/// The lease that guards the sweeper, the periodic reconcile and the stream reader.
pub const SWEEPER_LEASE: &str = "sweeper";

pub struct Lease {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    name: String,
    duration: time::Duration,
    held: watch::Sender<bool>,
    /// Until when our last successful claim holds, by our clock.
    until: Mutex<Option<Timestamp>>,
}

impl Lease {
    /// A lease named `name` held for `duration` per claim and renewed every third of it.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, name: &str, duration: time::Duration) -> Lease {
        Lease { store, clock, name: name.into(), duration, held: watch::Sender::new(false), until: Mutex::new(None) }
    }

    pub fn duration(&self) -> time::Duration {
        self.duration
    }

    /// Whether this process holds the lease now.
    pub fn is_held(&self) -> bool {
        let now = self.clock.now();
        let held = self.until.lock().expect("lease mutex poisoned").is_some_and(|until| now < until);
        self.held.send_if_modified(|h| std::mem::replace(h, held) != held);
        held
    }

    /// Changes to whether the lease is held.
    pub fn subscribe(&self) -> watch::Receiver<bool> {
        self.held.subscribe()
    }

    /// Takes or renews the lease once; true when held afterwards.
    pub async fn try_acquire(&self) -> bool {
        let now = self.clock.now();
        let claim = LeaseClaim { name: &self.name, holder: self.store.instance(), now, duration: self.duration };
        match self.store.acquire_lease(claim).await {
            Ok(true) => {
                let was = self.until.lock().expect("lease mutex poisoned").replace(now + self.duration);
                if was.is_none_or(|until| until <= now) {
                    tracing::info!(lease = %self.name, holder = %self.store.instance(), "lease taken");
                }
            }
            Ok(false) => {
                if self.until.lock().expect("lease mutex poisoned").take().is_some_and(|until| now < until) {
                    tracing::warn!(lease = %self.name, "lease lost to another process");
                }
            }
            Err(err) => tracing::warn!(lease = %self.name, error = %err, "could not renew the lease"),
        }
        self.is_held()
    }

    /// Gives the lease up (at shutdown), so another process takes over at once.
    pub async fn release(&self) {
        self.until.lock().expect("lease mutex poisoned").take();
        self.is_held();
        if let Err(err) = self.store.release_lease(&self.name, self.store.instance()).await {
            tracing::warn!(lease = %self.name, error = %err, "could not release the lease");
        }
    }

    /// Keeps trying to take the lease and renews it while held, until shut down; then releases it.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            self.try_acquire().await;
            let next = self.clock.now() + self.duration / 3;
            tokio::select! {
                _ = self.clock.sleep_until(next) => {}
                _ = shutdown.changed() => {}
            }
        }
        self.release().await;
    }

    /// Waits until the lease is held (true) or shutdown (false).
    pub async fn wait_held(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        let mut held = self.subscribe();
        loop {
            if *shutdown.borrow() {
                return false;
            }
            if self.is_held() {
                return true;
            }
            // Re-check when the holder changes, or now and then (our clock decides lapses).
            let recheck = self.clock.now() + time::Duration::seconds(1);
            tokio::select! {
                _ = held.changed() => {}
                _ = self.clock.sleep_until(recheck) => {}
                _ = shutdown.changed() => {}
            }
        }
    }
}
