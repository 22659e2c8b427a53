//! The loops a long-running process drives: the sweeper (revoke each grant the instant it
//! expires, then record it) and the periodic reconcile. Both act only while the engine's lease
//! (if it has one) is held.

use std::collections::BTreeSet;

use portcullis_core::Environment;
use tokio::sync::watch;

use crate::{Cause, Engine, EngineError, Scope, SweepReport};

impl Engine {
    /// Revokes the rules of every grant that has expired, then records each as `expired`.
    pub async fn sweep(&self) -> Result<SweepReport, EngineError> {
        let now = self.clock().now();
        let due: BTreeSet<Environment> =
            self.store().grants(None).await?.into_iter().filter(|g| !g.is_live(now)).map(|g| g.environment).collect();
        if due.is_empty() {
            return Ok(SweepReport { expired: vec![], reconcile: None });
        }
        let scope = match due.iter().next() {
            Some(env) if due.len() == 1 && self.policy(env).is_ok() => Scope::Environment(env.clone()),
            _ => Scope::All,
        };
        let report = self.reconcile(scope, Cause::Sweep).await?;
        let expired = self.store().expire(now).await?;
        if !expired.is_empty() {
            self.announce();
        }
        for g in &expired {
            tracing::info!(cidr = %g.cidr, environment = %g.environment,
                expires_at = %g.expires_at.map(|t| t.to_string()).unwrap_or_default(), "grant expired");
        }
        Ok(SweepReport { expired, reconcile: Some(report) })
    }

    /// Sleeps until the earliest expiry and sweeps it, until shut down. Woken at once by this
    /// process's new grants; notices other processes' grants within a second.
    pub async fn run_sweeper(&self, mut shutdown: watch::Receiver<bool>) {
        let poll = time::Duration::seconds(1);
        loop {
            if !self.lead(&mut shutdown).await {
                return;
            }
            let now = self.clock().now();
            let next = match self.store().next_expiry().await {
                Ok(next) => next,
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper could not read the next expiry");
                    None
                }
            };
            if next.is_some_and(|at| at <= now) {
                if let Err(err) = self.sweep().await {
                    tracing::warn!(error = %err, "sweep failed; retrying");
                    tokio::select! {
                        _ = self.clock().sleep_until(now + poll) => {}
                        _ = shutdown.changed() => return,
                    }
                }
                continue;
            }
            let deadline = next.map_or(now + poll, |at| at.min(now + poll));
            tokio::select! {
                _ = self.clock().sleep_until(deadline) => {}
                _ = self.wake_sweeper.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reconciles every environment now and then every `interval`, until shut down.
    pub async fn run_reconciler(&self, interval: time::Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            if !self.lead(&mut shutdown).await {
                return;
            }
            match self.reconcile(Scope::All, Cause::Periodic).await {
                Ok(report) if report.failed() => {
                    tracing::warn!(failures = ?report.failure_messages(), "periodic reconcile left failures; will retry")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "periodic reconcile failed; will retry"),
            }
            let next = self.clock().now() + interval;
            tokio::select! {
                _ = self.clock().sleep_until(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
