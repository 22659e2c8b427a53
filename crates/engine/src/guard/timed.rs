//! Timed rules (guard's "Approve for 24 h"): the added rules of a change approved for a time,
//! held on their group under our marker and revoked when the term ends. Level-triggered like
//! the reconcile: read the approved requests, observe their groups, `plan_timed_rules`, apply,
//! then record what the firewall now shows: applied (`applied_at`), or expired (`expired`,
//! announced with ⌛) once its rules are gone.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_core::guard::{self, ChangeRequest, GroupSelection, GuardScope, GuardedGroup, RequestStatus, TimedRuleChange};
use portcullis_core::{Action, TargetId, Timestamp};
use portcullis_store::request_event;
use serde::Serialize;

use super::{Guard, GuardError, guard_actor};
use crate::{EngineError, Failure, FailureKind, Subject};

/// How stale the sweeper's knowledge of the next timed rule's expiry may get: a timed rule
/// approved in another process is known within this, and then revoked at its exact time (a
/// term is at least a minute). This process's own approvals and sweeps are known at once.
pub(crate) const REREAD: time::Duration = time::Duration::seconds(30);

/// What one timed-rule reconcile did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TimedRuleReport {
    pub authorized: usize,
    pub revoked: usize,
    /// Requests whose timed rule is on the firewall now, for the first time.
    pub applied: Vec<String>,
    /// Requests whose timed rule expired and whose rules are gone, recorded now.
    pub expired: Vec<String>,
    /// Each names its group or, for a whole region, the region.
    pub failures: Vec<Failure>,
}

impl TimedRuleReport {
    /// The failures that concern `group`: its own, and its region's.
    pub fn failures_for(&self, group: &TargetId) -> Vec<Failure> {
        self.failures.iter().filter(|f| f.concerns(group)).cloned().collect()
    }
}

impl Guard {
    /// When the next timed rule expires (or the earliest overdue one did); none without guard.
    pub async fn next_timed_expiry(&self) -> Result<Option<Timestamp>, EngineError> {
        let now = self.shared.clock.now();
        if let Some((read_at, next)) = *self.next_expiry.lock().expect("expiry cache poisoned")
            && now - read_at < REREAD
        {
            return Ok(next);
        }
        let requests = self.requests.requests(None).await?;
        let next = requests.iter().filter_map(ChangeRequest::timed_until).min();
        *self.next_expiry.lock().expect("expiry cache poisoned") = Some((now, next));
        Ok(next)
    }

    /// Forgets the cached next expiry: a decision or a timed-rule reconcile changed it.
    pub(crate) fn timed_rules_changed(&self) {
        *self.next_expiry.lock().expect("expiry cache poisoned") = None;
        self.shared.wake_sweeper.notify_one();
    }

    /// Brings every timed rule's rules to what its request wants now: live ones authorized
    /// (within the quota), expired ones revoked and recorded `expired`. Only rules carrying
    /// our timed-rule marker are ever revoked. One observe per region (and account) with timed
    /// rules; none at all when there are none.
    pub async fn reconcile_timed_rules(&self) -> Result<TimedRuleReport, GuardError> {
        Ok(self.timed_rules_of().await?)
    }

    pub(crate) async fn timed_rules_of(&self) -> Result<TimedRuleReport, EngineError> {
        let mut report = TimedRuleReport::default();
        let mut requests = self.requests.requests(None).await?;
        requests.retain(|r| r.status.is_approved());
        let mut by_scope: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (account, group) in guard::timed_rule_groups(&requests) {
            match self.settings.scopes.iter().position(|s| s.covers(&account, &group.region)) {
                Some(i) => {
                    by_scope.entry(i).or_default().insert(group.group_id);
                }
                None => report.failures.push(Failure::new(Subject::Group(group), FailureKind::NotGuarded, "")),
            }
        }
        let now = self.shared.clock.now();
        // Groups whose timed rules are settled: observed, and every change to them went through.
        let mut settled: BTreeSet<TargetId> = BTreeSet::new();
        for (i, ids) in by_scope {
            let scope = &self.settings.scopes[i];
            let one = GuardScope { route: scope.route.clone(), selection: GroupSelection::Ids(ids) };
            let groups: Vec<GuardedGroup> = match self.firewall.guarded(&one).await {
                Ok(groups) => groups,
                Err(e) => {
                    let region = Subject::Region(scope.route.region.clone());
                    report.failures.push(Failure::call(region, FailureKind::Describe, &e));
                    continue;
                }
            };
            let plan = guard::plan_timed_rules(&requests, &groups, self.shared.marker(), self.shared.quota(), now);
            let mut failed: BTreeSet<TargetId> = BTreeSet::new();
            for o in &plan.overflows {
                let message = format!(
                    "the timed rules would take it to {} {} rules (quota {}); not authorized",
                    o.would_hold, o.family, o.quota
                );
                report.failures.push(Failure::new(Subject::Group(o.group.clone()), FailureKind::Quota, message));
                failed.insert(o.group.clone());
            }
            for TimedRuleChange { group, steps } in &plan.changes {
                let failures = self.carry_out(&scope.route, group, steps).await.failures;
                if failures.is_empty() {
                    report.authorized += steps.authorize.len();
                    report.revoked += steps.revoke_ids.len() + steps.revoke.len();
                } else {
                    report.failures.extend(failures);
                    failed.insert(group.clone());
                }
            }
            settled.extend(groups.into_iter().map(|g| g.id).filter(|id| !failed.contains(id)));
        }
        for request in requests.iter().filter(|r| r.timed_until().is_some()) {
            let mut next = request.clone();
            next.version += 1;
            let event = if !settled.contains(&request.group()) {
                // Its group failed (or was not observed): the request says so until it holds.
                let failure = Failure::joined(&report.failures_for(&request.group()));
                if failure.is_empty() || (request.status == RequestStatus::Failed && request.failure.as_deref() == Some(&failure))
                {
                    continue;
                }
                next.status = RequestStatus::Failed;
                next.failure = Some(failure.clone());
                vec![request_event(
                    now,
                    &guard_actor(),
                    Action::ChangeFailed,
                    &next,
                    &format!("putting its timed rule on failed: {failure}"),
                )]
            } else if request.timed_live(now) {
                if request.status == RequestStatus::Applied {
                    continue;
                }
                next.status = RequestStatus::Applied;
                next.applied_at.get_or_insert(now);
                next.failure = None;
                let detail = format!("its timed rule is on the group, {}", next.term_in_words().unwrap_or_default());
                vec![request_event(now, &guard_actor(), Action::ChangeApplied, &next, &detail)]
            } else {
                if let Some(t) = &mut next.temporary {
                    t.ended_at = Some(now);
                }
                let detail = "the temporary approval ended: its timed rule's rules were revoked";
                vec![request_event(now, &guard_actor(), Action::Expired, &next, detail)]
            };
            let expired = next.temporary.is_some_and(|t| t.ended_at.is_some());
            if self.requests.update_request(&next, event).await? {
                self.shared.announce();
                if expired {
                    tracing::info!(request = %next.id, group = %next.group_id, "timed rule expired");
                    report.expired.push(next.id);
                } else if next.status == RequestStatus::Applied {
                    report.applied.push(next.id);
                }
            }
        }
        self.timed_rules_changed();
        Ok(report)
    }
}
