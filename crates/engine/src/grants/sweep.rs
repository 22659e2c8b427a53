//! The grants' sweep: revoke each expired grant's rules, then record it `expired` (the engine's
//! sweeper loop calls it the instant a grant expires).

use std::collections::BTreeSet;

use portcullis_core::Environment;

use portcullis_core::TargetSpec;

use crate::{Cause, EngineError, Grants, ReconcileReport, Scope, SweepReport};

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

impl Grants {
    /// Revokes the rules of every grant that has expired, then records each as `expired`:
    /// only in environments whose revokes all went through. Where one failed (or a region
    /// could not be observed) the grants stay stored, listed as overdue in `/v1/status`, and
    /// the report says so in `retrying`; the sweeper tries again with a backoff.
    pub(crate) async fn sweep_grants(&self) -> Result<SweepReport, EngineError> {
        let now = self.clock().now();
        let due: BTreeSet<Environment> =
            self.store().grants(None).await?.into_iter().filter(|g| !g.is_live(now)).map(|g| g.environment).collect();
        if due.is_empty() {
            return Ok(SweepReport::default());
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
                self.shared.metrics.expired(gone_at - at);
            }
            tracing::info!(cidr = %g.cidr, environment = %g.environment,
                expires_at = %g.expires_at.map(|t| t.to_string()).unwrap_or_default(), "grant expired");
        }
        if !retrying.is_empty() {
            tracing::warn!(environments = ?retrying, failures = %crate::Failure::joined(&report.failures()),
                "expired grants could not be revoked everywhere; they stay overdue and are retried");
        }
        Ok(SweepReport { expired, retrying, reconcile: Some(report), timed_rules: None })
    }

    /// The earliest expiry of any stored grant.
    pub(crate) async fn next_expiry(&self) -> Result<Option<portcullis_core::Timestamp>, EngineError> {
        Ok(self.store().next_expiry().await?)
    }
}
