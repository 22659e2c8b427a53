//! Applies across processes: several replicas, the CLI beside `serve`, or Lambda invocations
//! on one store take a per-environment lease (`apply:<env>`) around each apply, so at most one
//! of them observes, plans and applies an environment at a time.
//!
//! The lease is the store's conditional write (a row in SQLite, an item in DynamoDB), taken
//! after the in-process gate and given up when the apply ends. A process that cannot have it
//! polls with a jittered backoff for up to [`APPLY_LOCK_WAIT`]; after that (a holder that died
//! mid-apply and whose lease has not lapsed, or a store that cannot be reached) it applies
//! without it, because access must not wait on a stuck peer. Correctness never rests on the
//! lease: a batch that loses to a concurrent writer is observed again and planned anew
//! (`coalesce`), so the lease saves EC2 calls and quota errors, and the re-plan keeps the
//! invariants.

use std::sync::Arc;
use std::time::Duration;

use portcullis_core::Environment;
use portcullis_store::{LeaseClaim, Store};

use crate::Grants;

/// How long one apply's lease holds: well past any apply's length (a slow apply that outlives
/// it only loses the serialization, not correctness).
pub const APPLY_LEASE: time::Duration = time::Duration::seconds(10);

/// How long an apply waits for another process's lease before it goes ahead without it.
pub const APPLY_LOCK_WAIT: Duration = Duration::from_secs(10);

/// The first and the longest pause between two attempts to take a held lease.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LONGEST_POLL: Duration = Duration::from_millis(250);

/// The store lease that serializes `env`'s applies across processes.
pub fn apply_lease_name(env: &Environment) -> String {
    format!("apply:{env}")
}

/// The apply leases one run holds. Give them up with [`ApplyLock::release`]; a run cancelled
/// midway gives them up from a spawned task, so no peer waits on a lease nobody uses.
#[must_use = "release the lock when the apply ends"]
pub(crate) struct ApplyLock {
    store: Arc<dyn Store>,
    held: Vec<String>,
}

impl ApplyLock {
    pub(crate) async fn release(mut self) {
        for name in std::mem::take(&mut self.held) {
            if let Err(err) = self.store.release_lease(&name, self.store.instance()).await {
                tracing::warn!(lease = %name, error = %err, "could not give up an apply lease; it lapses on its own");
            }
        }
    }
}

impl Drop for ApplyLock {
    fn drop(&mut self) {
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let store = self.store.clone();
            runtime.spawn(async move { ApplyLock { store, held }.release().await });
        }
    }
}

/// The pause before attempt `n` (from 0): doubling from [`FIRST_POLL`] up to [`LONGEST_POLL`],
/// jittered down by up to half, so peers that wait together do not poll together.
fn poll_pause(n: u32) -> Duration {
    let base = FIRST_POLL.saturating_mul(1 << n.min(8)).min(LONGEST_POLL);
    Duration::from_micros(crate::jitter_down(base.as_micros() as u64))
}

impl Grants {
    /// Takes the apply lease of each environment, in order (so two runs over several cannot
    /// deadlock), waiting for a peer's apply to end up to [`APPLY_LOCK_WAIT`] in all.
    pub(crate) async fn lock_applies<'a>(&self, envs: impl IntoIterator<Item = &'a Environment>) -> ApplyLock {
        let store = self.store().clone();
        let mut lock = ApplyLock { store: store.clone(), held: Vec::new() };
        let deadline = tokio::time::Instant::now() + APPLY_LOCK_WAIT;
        for env in envs {
            let name = apply_lease_name(env);
            let mut attempt = 0;
            loop {
                let claim = LeaseClaim { name: &name, holder: store.instance(), now: self.clock().now(), duration: APPLY_LEASE };
                match store.acquire_lease(claim).await {
                    Ok(true) => {
                        lock.held.push(name);
                        break;
                    }
                    Ok(false) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(poll_pause(attempt)).await;
                        attempt += 1;
                    }
                    Ok(false) => {
                        tracing::warn!(environment = %env, waited = ?APPLY_LOCK_WAIT,
                            "another process has held this environment's apply lease too long; applying without it");
                        break;
                    }
                    Err(err) => {
                        tracing::warn!(environment = %env, error = %err, "could not take the apply lease; applying without it");
                        break;
                    }
                }
            }
        }
        lock
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_back_off_to_a_ceiling_with_jitter() {
        for n in 0..20 {
            let pause = poll_pause(n);
            let base = FIRST_POLL.saturating_mul(1 << n.min(8)).min(LONGEST_POLL);
            assert!(pause <= base && pause >= base / 2, "attempt {n}: {pause:?} outside [{:?}, {base:?}]", base / 2);
        }
        assert!(poll_pause(30) <= LONGEST_POLL);
        // Jittered: peers waiting together draw different pauses (a constant pause, even one
        // inside the bounds above, fails here).
        let drawn: std::collections::BTreeSet<Duration> = (0..200).map(|_| poll_pause(8)).collect();
        assert!(drawn.len() > 50, "200 draws gave only {} distinct pauses", drawn.len());
        let spread = *drawn.last().unwrap() - *drawn.first().unwrap();
        assert!(spread > LONGEST_POLL / 4, "the pauses span only {spread:?} of the allowed {:?}", LONGEST_POLL / 2);
    }
}
