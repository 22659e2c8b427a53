//! Decisions on change requests, and applying what was approved: the rules are
//! `core::guard::decide`; the write is conditional on the version read. A request's status
//! tells the truth: `approved` once decided, then `applied` once the change is on the group, or
//! `failed` with the reason (the guard sweep retries).
//!
//! Who may see and decide a request follows the credential's environments: a request on a
//! group that is one of an environment's targets needs a credential for that environment; one
//! on any other group needs a credential for every environment.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_core::guard::{self, ChangeRequest, Decider, GroupRule, Refusal, RequestStatus, Steps, Verdict};
use portcullis_core::{Action, Environment, TargetId};
use portcullis_store::request_event;

use super::{Guard, GuardError, guard_actor};
use crate::{EngineError, Failure, FailureKind, Requester, Scope, Subject};

/// Whether a decision's change is applied before the decision returns, or left for
/// [`Engine::apply_request`] (Lambda answers Slack within 3 s and applies in a second
/// invocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Apply {
    Now,
    Later,
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq)]
pub enum DecisionOutcome {
    /// Written; `failures` names what could not be applied yet (the guard sweep retries).
    Decided { request: Box<ChangeRequest>, failures: Vec<Failure> },
    /// Refused, and why (told to the decider, audited).
    Refused(Refusal),
}

impl Guard {
    /// A decision on a request, by whoever `by` is, through any interface: the rules are
    /// `core::guard::decide`; the write is conditional on the version read, so of two
    /// concurrent deciders exactly one lands and the other is told what happened. A request
    /// `by`'s credentials may not see is answered as if there were none.
    pub async fn decide(&self, id: &str, verdict: Verdict, by: &Requester, apply: Apply) -> Result<DecisionOutcome, GuardError> {
        if let Verdict::Deny { reason: Some(reason) } | Verdict::BreakGlass { reason, .. } = &verdict {
            guard::check_reason(reason).map_err(EngineError::from)?;
        }
        let decider = Decider { name: by.owner.id.clone(), groups: by.groups.iter().cloned().collect() };
        loop {
            let now = self.shared.clock.now();
            let request = self.requests.request(id).await?.ok_or_else(|| GuardError::NoSuchRequest(id.to_string()))?;
            if !self.may_see(std::slice::from_ref(&request), by).await?[0] {
                return Err(GuardError::NoSuchRequest(id.to_string()));
            }
            let next = match guard::decide(&request, &decider, &verdict, &self.settings.approvers, now) {
                Ok(next) => next,
                Err(refusal) => return self.refuse_decision(&request, &refusal, by).await,
            };
            let actor = by.actor();
            let term = next.term_in_words().map(|t| format!(", as {t}")).unwrap_or_default();
            let (action, detail) = match next.status {
                _ if next.break_glass.is_some() => (
                    Action::BreakGlass,
                    format!("break-glass by {}{term}: {}", decider.name, next.break_glass.as_deref().unwrap_or_default()),
                ),
                RequestStatus::Approved => (Action::ChangeApproved, format!("approved by {}{term}", next.approvals.join(", "))),
                RequestStatus::Denied => (
                    Action::ChangeDenied,
                    format!("denied by {}{}", decider.name, next.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()),
                ),
                _ => (
                    Action::Approved,
                    format!(
                        "approval {} of {} by {}",
                        next.approvals.len(),
                        self.settings.approvers.min_approvals.max(1),
                        decider.name
                    ),
                ),
            };
            if !self.requests.update_request(&next, vec![request_event(now, &actor, action, &next, &detail)]).await? {
                continue;
            }
            if action == Action::BreakGlass {
                self.shared.metrics.break_glass.inc();
            }
            if next.temporary.is_some() {
                self.timed_rules_changed();
            }
            self.shared.announce();
            let (request, failures) = match (next.status, apply) {
                (RequestStatus::Approved, Apply::Now) => self.apply_request(next).await?,
                _ => (next, vec![]),
            };
            return Ok(DecisionOutcome::Decided { request: Box::new(request), failures });
        }
    }

    /// Applies an approved request (or retries a failed one) by id; what it did. Idempotent:
    /// an applied request is returned as it is.
    pub async fn apply_by_id(&self, id: &str) -> Result<(ChangeRequest, Vec<Failure>), GuardError> {
        let request = self.requests.request(id).await?.ok_or_else(|| GuardError::NoSuchRequest(id.to_string()))?;
        self.apply_request(request).await
    }

    /// Puts an approved change on the firewall, keeps the baseline current (where there is
    /// one), and records the outcome: `applied`, or `failed` with the reason. A temporary
    /// approval goes on as a timed rule instead (the baseline is left alone: its rules are ours).
    pub(crate) async fn apply_request(&self, request: ChangeRequest) -> Result<(ChangeRequest, Vec<Failure>), GuardError> {
        if !matches!(request.status, RequestStatus::Approved | RequestStatus::Failed) {
            return Ok((request, vec![]));
        }
        if request.temporary.is_some() {
            let report = self.reconcile_timed_rules().await?;
            let failures = report.failures_for(&request.group());
            let now = self.requests.request(&request.id).await?.unwrap_or(request);
            return Ok((now, failures));
        }
        let group = request.group();
        let Some(scope) = self.settings.scopes.iter().find(|s| s.covers(&request.account, &request.region)) else {
            let failures = vec![Failure::new(Subject::Group(group), FailureKind::NotGuarded, "")];
            return Ok((self.record_apply(request, &failures).await?, failures));
        };
        let steps = Steps { revoke: request.remove.clone(), authorize: request.add.clone(), ..Steps::default() };
        let carried = self.carry_out(&scope.route, &group, &steps).await;
        if carried.failures.is_empty()
            && let Some(mut baseline) = self.requests.baseline(&group).await?
        {
            baseline.retain(|b| !request.remove.iter().any(|r| r.same_access(&b.rule)));
            for added in &request.add {
                let id = carried.created.iter().find(|c| c.rule.same_access(added)).and_then(|c| c.rule_id.clone());
                baseline.push(GroupRule { rule_id: id, rule: added.clone() });
            }
            self.requests.set_baseline(&group, &baseline, vec![]).await?;
        }
        let recorded = self.record_apply(request, &carried.failures).await?;
        Ok((recorded, carried.failures))
    }

    /// Records an apply's outcome on the request (`applied`, or `failed` and why) with its
    /// announced audit event. Only one process wins the write; a lost write leaves the request
    /// for the sweep, whose apply is idempotent.
    async fn record_apply(&self, request: ChangeRequest, failures: &[Failure]) -> Result<ChangeRequest, GuardError> {
        let now = self.shared.clock.now();
        let mut next = request.clone();
        next.version += 1;
        let event = if failures.is_empty() {
            next.status = RequestStatus::Applied;
            next.applied_at = Some(now);
            next.failure = None;
            request_event(now, &guard_actor(), Action::ChangeApplied, &next, "the approved change is on the group")
        } else {
            let reason = Failure::joined(failures);
            if request.status == RequestStatus::Failed && request.failure.as_deref() == Some(reason.as_str()) {
                return Ok(request);
            }
            next.status = RequestStatus::Failed;
            next.failure = Some(reason.clone());
            request_event(now, &guard_actor(), Action::ChangeFailed, &next, &format!("applying it failed: {reason}"))
        };
        if self.requests.update_request(&next, vec![event]).await? {
            self.shared.announce();
            Ok(next)
        } else {
            Ok(self.requests.request(&request.id).await?.unwrap_or(request))
        }
    }

    /// How many requests wait for a decision (for the gauges).
    pub(crate) async fn pending(&self) -> Result<usize, EngineError> {
        Ok(self.requests.requests(Some(RequestStatus::Pending)).await?.len())
    }

    /// The requests `by` may see, oldest first (`status` narrows).
    pub async fn requests(&self, status: Option<RequestStatus>, by: &Requester) -> Result<Vec<ChangeRequest>, GuardError> {
        let requests = self.requests.requests(status).await?;
        let visible = self.may_see(&requests, by).await?;
        Ok(requests.into_iter().zip(visible).filter(|(_, v)| *v).map(|(r, _)| r).collect())
    }

    /// Whether `by` may see (and decide) each request: with a credential limited to some
    /// environments, only requests on those environments' groups; a request on a group that
    /// is no environment's target needs a credential for every environment.
    pub(crate) async fn may_see(&self, requests: &[ChangeRequest], by: &Requester) -> Result<Vec<bool>, EngineError> {
        if !by.credential.is_limited() || requests.is_empty() {
            return Ok(vec![true; requests.len()]);
        }
        let visible = self.grants.visible_environments(by);
        let everywhere = self.shared.policies().keys().all(|e| visible.contains(e));
        let owners = self.environments_of_groups(requests.iter().map(ChangeRequest::group).collect()).await;
        Ok(requests
            .iter()
            .map(|r| match owners.get(&r.group()) {
                Some(envs) if !envs.is_empty() => envs.iter().all(|e| visible.contains(e)),
                _ => everywhere,
            })
            .collect())
    }

    /// The environments whose targets each group is, from one observation of every environment.
    async fn environments_of_groups(&self, groups: BTreeSet<TargetId>) -> BTreeMap<TargetId, BTreeSet<Environment>> {
        let observed = self.grants.observe(&Scope::All).await;
        let mut out: BTreeMap<TargetId, BTreeSet<Environment>> = BTreeMap::new();
        for target in observed.targets.into_iter().filter(|t| groups.contains(&t.id)) {
            out.entry(target.id).or_default().insert(target.environment);
        }
        out
    }
}
