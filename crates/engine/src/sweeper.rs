//! The loops a long-running process drives: the sweeper (revoke each grant the instant it
//! expires, then record it) and the periodic reconcile. Both act only while the engine's lease
//! (if it has one) is held.

use std::collections::BTreeSet;

use portcullis_core::Environment;
use tokio::sync::watch;

use portcullis_core::TargetSpec;

use crate::{Cause, Engine, EngineError, ReconcileReport, Scope, SweepReport};

/// The due environments a sweep's reconcile did not settle: a group of theirs failed, or a
/// region where one of their specs lives could not be observed.
fn unsettled(report: &ReconcileReport, due: &BTreeSet<Environment>, specs: &[TargetSpec]) -> BTreeSet<Environment> {
    due.iter()
        .filter(|env| {
            report.outcomes.iter().any(|o| &o.environment == *env && o.error.is_some())
                || report.observe_failures.iter().any(|f| specs.iter().any(|s| &s.environment == *env && s.region == f.region))
        })
        .cloned()
        .collect()
}

/// The pause before the sweeper's retry after `failures` sweeps in a row left a grant
/// unrevoked: 200 ms doubling to 5 s, jittered down by up to half (the first within a second).
fn retry_pause(failures: u32) -> time::Duration {
    let base = (200u64 << failures.min(5)).min(5_000);
    time::Duration::milliseconds(crate::jitter_down(base) as i64)
}

impl Engine {
    /// Revokes the rules of every grant that has expired, then records each as `expired`:
    /// only in environments whose revokes all went through. Where one failed (or a region
    /// could not be observed) the grants stay stored, listed as overdue in `/v1/status`, and
    /// the report says so in `retrying`; the sweeper tries again with a backoff.
    ///
    /// With guard, rule grants (temporary approvals) that have expired are revoked and
    /// recorded the same way, in `rule_grants`.
    pub async fn sweep(&self) -> Result<SweepReport, EngineError> {
        let now = self.clock().now();
        let rule_grants = match (&self.guard, self.next_rule_grant_expiry().await?) {
            (Some(guard), Some(at)) if at <= now => Some(self.rule_grants_of(guard).await?),
            _ => None,
        };
        let due: BTreeSet<Environment> =
            self.store().grants(None).await?.into_iter().filter(|g| !g.is_live(now)).map(|g| g.environment).collect();
        if due.is_empty() {
            return Ok(SweepReport { rule_grants, ..SweepReport::default() });
        }
        let scope = match due.iter().next() {
            Some(env) if due.len() == 1 && self.policy(env).is_ok() => Scope::Environment(env.clone()),
            _ => Scope::All,
        };
        let report = self.reconcile(scope, Cause::Sweep).await?;
        let gone_at = self.clock().now();
        let retrying = unsettled(&report, &due, self.specs());
        let settled: BTreeSet<Environment> = due.difference(&retrying).cloned().collect();
        let expired = if settled.is_empty() { vec![] } else { self.store().expire(now, &settled).await? };
        if !expired.is_empty() {
            self.announce();
        }
        for g in &expired {
            if let Some(at) = g.expires_at {
                self.metrics.expired(gone_at - at);
            }
            tracing::info!(cidr = %g.cidr, environment = %g.environment,
                expires_at = %g.expires_at.map(|t| t.to_string()).unwrap_or_default(), "grant expired");
        }
        if !retrying.is_empty() {
            tracing::warn!(environments = ?retrying, failures = ?report.failure_messages(),
                "expired grants could not be revoked everywhere; they stay overdue and are retried");
        }
        Ok(SweepReport { expired, retrying, reconcile: Some(report), rule_grants })
    }

    /// Sleeps until the earliest expiry and sweeps it, until shut down. Woken at once by this
    /// process's new grants; notices other processes' grants within a second.
    pub async fn run_sweeper(&self, mut shutdown: watch::Receiver<bool>) {
        let poll = time::Duration::seconds(1);
        // Sweeps in a row that left an expired grant unrevoked.
        let mut failures = 0;
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
            let next = match self.next_rule_grant_expiry().await {
                Ok(rule) => next.into_iter().chain(rule).min(),
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper could not read the next rule grant's expiry");
                    next
                }
            };
            if next.is_some_and(|at| at <= now) {
                let retry = match self.sweep().await {
                    Ok(report) => {
                        !report.retrying.is_empty() || report.rule_grants.as_ref().is_some_and(|r| !r.failures.is_empty())
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "sweep failed; retrying");
                        true
                    }
                };
                if retry {
                    let pause = retry_pause(failures);
                    failures += 1;
                    tokio::select! {
                        _ = self.clock().sleep_until(now + pause) => {}
                        _ = shutdown.changed() => return,
                    }
                } else {
                    failures = 0;
                }
                continue;
            }
            failures = 0;
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
            if self.guard.is_some() {
                match self.guard_sweep().await {
                    Ok(report) if !report.failures.is_empty() => {
                        tracing::warn!(failures = ?report.failures, "guard sweep left failures; will retry")
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "guard sweep failed; will retry"),
                }
            }
            let next = self.clock().now() + interval;
            tokio::select! {
                _ = self.clock().sleep_until(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }
}
