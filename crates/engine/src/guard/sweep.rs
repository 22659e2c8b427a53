//! The guard sweep (every guarded group against its baseline; undecided requests expired;
//! approved changes whose apply failed retried; timed rules reconciled) and `guard baseline`.

use portcullis_core::guard::{
    self, ChangeRequest, GroupRule, GuardRule, GuardScope, GuardedGroup, RequestStatus, UNKNOWN_REQUESTER,
};
use portcullis_core::{Action, TargetId};
use portcullis_store::{baseline_event, request_event};
use serde::Serialize;

use super::{Guard, GuardError, GuardOutcome, guard_actor, request_id};
use crate::{Failure, FailureKind, Requester, Subject};

/// What a guard sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GuardSweepReport {
    pub groups: usize,
    /// Requests filed for differences no event reported.
    pub reverted: Vec<ChangeRequest>,
    /// Guarded groups with no baseline yet: only reported.
    pub without_baseline: Vec<TargetId>,
    pub expired: Vec<String>,
    /// Approved changes applied now (an earlier apply failed or was not made).
    pub applied: Vec<String>,
    /// Temporary approvals: timed rules put on or, expired, revoked.
    pub timed_rules: super::TimedRuleReport,
    pub failures: Vec<Failure>,
}

/// The baseline a `guard baseline` records (or would).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineReport {
    pub groups: Vec<(TargetId, usize)>,
    pub failures: Vec<Failure>,
}

impl Guard {
    /// Every scope's guarded groups; a scope that cannot be read is a failure, and skipped.
    async fn observe_guarded(&self, failures: &mut Vec<Failure>) -> Vec<(&GuardScope, Vec<GuardedGroup>)> {
        let mut out = Vec::new();
        for scope in &self.settings.scopes {
            match self.firewall.guarded(scope).await {
                Ok(groups) => out.push((scope, groups)),
                Err(e) => failures.push(Failure::call(Subject::Region(scope.route.region.clone()), FailureKind::Describe, &e)),
            }
        }
        out
    }

    /// Records the current rules of every guarded group as approved (`dry_run`: only says).
    /// Rules carrying our marker are left out: they are the reconcile's, or, where nothing
    /// stored backs them, the sweep's to revoke.
    pub async fn record_baseline(&self, dry_run: bool, by: &Requester) -> Result<BaselineReport, GuardError> {
        let mut report = BaselineReport { groups: vec![], failures: vec![] };
        let observed = self.observe_guarded(&mut report.failures).await;
        let total = observed.iter().map(|(_, groups)| groups.len()).sum();
        for (_, groups) in observed {
            for group in groups {
                let theirs: Vec<GroupRule> =
                    group.rules.into_iter().filter(|r| !r.rule.carries_marker(self.shared.marker())).collect();
                report.groups.push((group.id.clone(), theirs.len()));
                self.shared.progress("groups' baselines recorded", report.groups.len(), total);
                if dry_run {
                    continue;
                }
                let event = baseline_event(self.shared.clock.now(), &by.actor(), &group.id, theirs.len());
                self.requests.set_baseline(&group.id, &theirs, vec![event]).await?;
            }
        }
        self.shared.progress_done();
        Ok(report)
    }

    /// Expires undecided requests, applies approved ones an earlier apply missed or failed,
    /// and compares every guarded group with its baseline: what differs is reverted and filed
    /// (requester unknown), unless a live request for that change exists already; a group with
    /// no baseline is only reported.
    pub async fn sweep(&self) -> Result<GuardSweepReport, GuardError> {
        let mut report = GuardSweepReport::default();
        let now = self.shared.clock.now();
        let requests = self.requests.requests(None).await?;
        for request in requests.iter().filter(|r| r.status == RequestStatus::Pending) {
            if let Some(expired) = guard::expire(request, now) {
                let event =
                    request_event(now, &guard_actor(), Action::ChangeExpired, &expired, "expired undecided; the revert stays");
                if self.requests.update_request(&expired, vec![event]).await? {
                    report.expired.push(expired.id);
                }
            }
        }
        // Timed rules (temporary approvals) are reconciled below, all at once.
        let unapplied = requests.into_iter().filter(|r| {
            r.temporary.is_none() && matches!(r.status, RequestStatus::Approved | RequestStatus::Failed) && r.applied_at.is_none()
        });
        for request in unapplied {
            let (applied, failures) = self.apply_request(request).await?;
            report.failures.extend(failures);
            if applied.status == RequestStatus::Applied {
                report.applied.push(applied.id);
            }
        }
        report.timed_rules = self.reconcile_timed_rules().await?;
        report.failures.extend(report.timed_rules.failures.iter().cloned());
        for (scope, groups) in self.observe_guarded(&mut report.failures).await {
            for group in groups {
                report.groups += 1;
                let Some(baseline) = self.requests.baseline(&group.id).await? else {
                    report.without_baseline.push(group.id);
                    continue;
                };
                let rules: Vec<GuardRule> = group.rules.iter().map(|r| r.rule.clone()).collect();
                let backing = self.backing(&group.id, &rules).await?;
                let changes = guard::drift(&baseline, &group.rules, self.shared.marker(), &backing);
                let revert = guard::revert(&changes, Some(&baseline), self.shared.marker(), &backing);
                if changes.is_empty() || revert.is_empty() {
                    continue;
                }
                if let Some((_, failures)) = self.another_report(&group.id, &revert, None, now).await? {
                    tracing::info!(group = %group.id, "guard sweep: the change is filed already; its revert was tried again");
                    report.failures.extend(failures);
                    continue;
                }
                let event_id = format!("sweep:{}", request_id());
                let request = self.new_request(&event_id, UNKNOWN_REQUESTER, None, &group, &revert, now);
                match self.file_and_revert(scope, request, revert, Some(baseline), now).await? {
                    GuardOutcome::Reverted { request, failures } => {
                        report.failures.extend(failures);
                        report.reverted.push(*request);
                    }
                    GuardOutcome::Ignored { .. } | GuardOutcome::Duplicate { .. } | GuardOutcome::Reported { .. } => {}
                }
            }
        }
        self.shared.announce();
        Ok(report)
    }
}
