//! Guard (seed 003): out-of-band changes to guarded groups are reverted exactly and filed as
//! change requests; approvers decide them (the rules are `core::guard::decide`, here for every
//! interface); the guard sweep compares each group with its baseline, so a lost event cannot
//! leave a change in place.
//!
//! Order: a request is stored before its revert touches the firewall, so a crash between the
//! two leaves a request (and the sweep finds the change); a decision is one conditional write,
//! and the firewall is changed only by the write that won.

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::guard::{
    self, Approvers, ChangeRequest, Changes, Decider, GroupRule, GuardRule, GuardScope, GuardedGroup, Refusal, RequestStatus,
    Revert, UNKNOWN_REQUESTER, Verdict,
};
use portcullis_core::{Action, PrincipalPattern, Route, TargetId, Timestamp};
use portcullis_store::{Actor, baseline_event, request_event};
use serde::Serialize;

use crate::{Engine, EngineError, FirewallError, Requester};

/// Security groups as guard sees them: every rule, any source, by id.
#[async_trait]
pub trait GuardFirewall: Send + Sync {
    /// The groups one scope guards, with every inbound rule and its id.
    async fn guarded(&self, scope: &GuardScope) -> Result<Vec<GuardedGroup>, FirewallError>;
    /// Revokes inbound rules by id and by exact permissions (one call each at most).
    async fn revoke(&self, route: &Route, group_id: &str, ids: &[String], rules: &[GuardRule]) -> Result<(), FirewallError>;
    /// Adds inbound rules exactly as given (descriptions included).
    async fn authorize(&self, route: &Route, group_id: &str, rules: &[GuardRule]) -> Result<(), FirewallError>;
    /// Puts a rule back to `rule`, keeping its id.
    async fn modify(&self, route: &Route, group_id: &str, rule_id: &str, rule: &GuardRule) -> Result<(), FirewallError>;
}

/// Guard's configuration and its firewall.
pub struct Guard {
    pub scopes: Vec<GuardScope>,
    /// portcullis's own identities: their events are never reverted.
    pub own_principals: Vec<PrincipalPattern>,
    pub approvers: Approvers,
    pub request_ttl: time::Duration,
    /// An older event is left to the guard sweep (the rule may have been decided since).
    pub max_event_age: time::Duration,
    /// What "Approve for …" grants: the term of a rule grant.
    pub temporary_approval: time::Duration,
    pub firewall: Arc<dyn GuardFirewall>,
}

/// One CloudTrail record of a rule change, as read from the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardEvent {
    pub event_id: String,
    pub event_name: String,
    pub account: String,
    pub region: String,
    pub group_id: String,
    pub principal: String,
    pub error_code: Option<String>,
    pub at: Timestamp,
    pub changes: Changes,
}

/// What handling an event did.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum GuardOutcome {
    /// Nothing to do, and why.
    Ignored { reason: String },
    /// This event filed a request already (a redelivery).
    Duplicate { event_id: String },
    /// Reverted (where `failures` is empty) and filed.
    Reverted { request: Box<ChangeRequest>, failures: Vec<String> },
}

/// What a decision did.
#[derive(Debug, Clone, PartialEq)]
pub enum DecisionOutcome {
    /// Written; `failures` names what could not be applied yet (the guard sweep retries).
    Decided { request: Box<ChangeRequest>, failures: Vec<String> },
    /// Refused, and why (told to the decider, audited).
    Refused(Refusal),
}

/// What a guard sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GuardSweepReport {
    pub groups: usize,
    /// Requests filed for differences no event reported.
    pub reverted: Vec<ChangeRequest>,
    /// Guarded groups with no baseline yet: only reported.
    pub without_baseline: Vec<TargetId>,
    pub expired: Vec<String>,
    /// Approved changes applied now (an earlier apply failed).
    pub applied: Vec<String>,
    /// Temporary approvals: rule grants put on or, expired, revoked.
    pub rule_grants: crate::RuleGrantReport,
    pub failures: Vec<String>,
}

/// The baseline a `guard baseline` records (or would).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BaselineReport {
    pub groups: Vec<(TargetId, usize)>,
    pub failures: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("guard is not configured here: it needs a [guard] section and the aws firewall (firewall = \"aws\")")]
    NotConfigured,
    #[error("no change request {0}")]
    NoSuchRequest(String),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<portcullis_store::StoreError> for GuardError {
    fn from(e: portcullis_store::StoreError) -> Self {
        GuardError::Engine(e.into())
    }
}

pub(crate) fn guard_actor() -> Actor {
    Actor { name: "guard".into(), interface: portcullis_core::Interface::Reconciler }
}

/// A fresh request id: `r-` and 16 hex digits from the OS's randomness.
fn request_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    format!("r-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

impl Engine {
    pub fn with_guard(mut self, guard: Guard) -> Engine {
        self.guard = Some(Arc::new(guard));
        self
    }

    /// The Slack user groups whose members may approve (none without guard).
    pub fn approver_groups(&self) -> std::collections::BTreeSet<String> {
        self.guard.as_ref().map(|g| g.approvers.groups.clone()).unwrap_or_default()
    }

    /// The term "Approve for …" grants (none without guard).
    pub fn temporary_approval(&self) -> Option<time::Duration> {
        self.guard.as_ref().map(|g| g.temporary_approval)
    }

    /// Whether guard is configured here.
    pub fn guards(&self) -> bool {
        self.guard.is_some()
    }

    pub(crate) fn guard(&self) -> Result<&Arc<Guard>, GuardError> {
        self.guard.as_ref().ok_or(GuardError::NotConfigured)
    }

    /// Handles one CloudTrail rule-change event: ignored, a redelivery, or reverted and filed.
    pub async fn guard_event(&self, event: GuardEvent) -> Result<GuardOutcome, GuardError> {
        let guard = self.guard()?;
        let now = self.clock().now();
        let ignored = |reason: String| {
            tracing::info!(event = %event.event_id, group = %event.group_id, %reason, "guard: event ignored");
            Ok(GuardOutcome::Ignored { reason })
        };
        if let Some(code) = &event.error_code {
            return ignored(format!("the call failed ({code}); nothing changed"));
        }
        if guard.own_principals.iter().any(|p| p.matches(&event.principal)) {
            return ignored(format!("{} is portcullis's own identity", event.principal));
        }
        if event.changes.only_ours(self.marker()) {
            return ignored("it touched only portcullis's own rules (the reconcile's)".into());
        }
        if now - event.at > guard.max_event_age {
            return ignored(format!(
                "it is older than max_event_age ({}); the guard sweep compares the group with its baseline",
                guard.max_event_age
            ));
        }
        let Some(scope) = guard.scopes.iter().find(|s| s.covers(&event.account, &event.region)) else {
            return ignored(format!("account {} in {} is not guarded", event.account, event.region));
        };
        let not_guarded = || ignored(format!("{} is not a guarded group", event.group_id));
        let Some(one) = scope.only(&event.group_id) else { return not_guarded() };
        let groups = guard.firewall.guarded(&one).await.map_err(EngineError::Firewall)?;
        let Some(group) = groups.into_iter().find(|g| g.id.group_id == event.group_id) else { return not_guarded() };
        let baseline = self.store().baseline(&group.id).await?;
        let revert = guard::revert(&event.changes, baseline.as_deref(), self.marker());
        if revert.is_empty() {
            return ignored("nothing to undo".into());
        }
        let requester_user = guard.approvers.user_of(&event.principal).map(str::to_string);
        let request = Self::new_request(guard, &event.event_id, &event.principal, requester_user, &group, &revert, now);
        self.file_and_revert(scope, request, revert, now).await
    }

    fn new_request(
        guard: &Guard,
        event_id: &str,
        requester: &str,
        requester_user: Option<String>,
        group: &GuardedGroup,
        revert: &Revert,
        now: Timestamp,
    ) -> ChangeRequest {
        let mut request = ChangeRequest::pending(&request_id(), event_id, requester, group, now, guard.request_ttl);
        request.requester_user = requester_user;
        request.add = revert.add.clone();
        request.remove = revert.remove.clone();
        request.notes = revert.notes.clone();
        request
    }

    /// Stores the request, then undoes the change, then audits the revert (announced).
    async fn file_and_revert(
        &self,
        scope: &GuardScope,
        request: ChangeRequest,
        revert: Revert,
        now: Timestamp,
    ) -> Result<GuardOutcome, GuardError> {
        let actor = guard_actor();
        let filed = request_event(now, &actor, Action::ChangeRequested, &request, "pending approval");
        if !self.store().file_request(&request, vec![filed]).await? {
            return Ok(GuardOutcome::Duplicate { event_id: request.event_id });
        }
        let failures = self.carry_out(&scope.route, &request.group_id, &revert).await;
        let detail = match (failures.is_empty(), revert.notes.is_empty()) {
            (true, true) => "reverted, pending approval".to_string(),
            (true, false) => format!("reverted, pending approval; {}", revert.notes.join("; ")),
            (false, _) => format!("revert FAILED ({}); the guard sweep will try again", failures.join("; ")),
        };
        self.store().record(request_event(self.clock().now(), &actor, Action::ChangeReverted, &request, &detail)).await?;
        self.announce();
        Ok(GuardOutcome::Reverted { request: Box::new(request), failures })
    }

    /// Carries out firewall steps on one group, in order: revoke (by id, then by content),
    /// authorize, modify; each failure named.
    pub(crate) async fn carry_out(&self, route: &Route, group_id: &str, steps: &Revert) -> Vec<String> {
        let Ok(guard) = self.guard() else { return vec![] };
        let fw = &guard.firewall;
        let mut failures = Vec::new();
        if (!steps.revoke_ids.is_empty() || !steps.revoke.is_empty())
            && let Err(e) = fw.revoke(route, group_id, &steps.revoke_ids, &steps.revoke).await
        {
            failures.push(format!("revoke: {e}"));
        }
        if !steps.authorize.is_empty()
            && let Err(e) = fw.authorize(route, group_id, &steps.authorize).await
        {
            failures.push(format!("authorize: {e}"));
        }
        for (id, rule) in &steps.restore {
            if let Err(e) = fw.modify(route, group_id, id, rule).await {
                failures.push(format!("restore {id}: {e}"));
            }
        }
        failures
    }

    /// A decision on a request, by whoever `by` is, through any interface: the rules are
    /// `core::guard::decide`; the write is conditional on the version read, so of two
    /// concurrent deciders exactly one lands and the other is told what happened.
    pub async fn decide(&self, id: &str, verdict: Verdict, by: &Requester) -> Result<DecisionOutcome, GuardError> {
        let guard = self.guard()?;
        let decider = Decider { name: by.owner.id.clone(), groups: by.groups.iter().cloned().collect() };
        loop {
            let now = self.clock().now();
            let request = self.store().request(id).await?.ok_or_else(|| GuardError::NoSuchRequest(id.to_string()))?;
            let next = match guard::decide(&request, &decider, &verdict, &guard.approvers, now) {
                Ok(next) => next,
                Err(refusal) => return self.refuse_decision(&request, &refusal, by).await,
            };
            let actor = by.actor();
            let (action, detail) = match next.status {
                RequestStatus::Approved => {
                    let term = next.term_in_words().map(|t| format!(", as {t}")).unwrap_or_default();
                    (Action::ChangeApproved, format!("approved by {}{term}", next.approvals.join(", ")))
                }
                RequestStatus::Denied => (
                    Action::ChangeDenied,
                    format!("denied by {}{}", decider.name, next.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()),
                ),
                _ => (
                    Action::Approved,
                    format!("approval {} of {} by {}", next.approvals.len(), guard.approvers.min_approvals.max(1), decider.name),
                ),
            };
            if !self.store().update_request(&next, vec![request_event(now, &actor, action, &next, &detail)]).await? {
                continue;
            }
            if next.temporary.is_some() {
                self.rule_grants_changed();
            }
            self.announce();
            let (request, failures) =
                if next.status == RequestStatus::Approved { self.apply_approved(next).await? } else { (next, vec![]) };
            return Ok(DecisionOutcome::Decided { request: Box::new(request), failures });
        }
    }

    async fn refuse_decision(
        &self,
        request: &ChangeRequest,
        refusal: &Refusal,
        by: &Requester,
    ) -> Result<DecisionOutcome, GuardError> {
        let event = request_event(self.clock().now(), &by.refused_actor(), Action::Refused, request, &refusal.to_string());
        self.store().record(event).await?;
        Ok(DecisionOutcome::Refused(refusal.clone()))
    }

    /// Puts an approved change on the firewall, keeps the baseline current, and records when.
    /// A temporary approval goes on as a rule grant instead (the baseline is left alone: its
    /// rules are ours).
    async fn apply_approved(&self, request: ChangeRequest) -> Result<(ChangeRequest, Vec<String>), GuardError> {
        if request.temporary.is_some() {
            let report = self.reconcile_rule_grants().await?;
            let failures = report.failures_for(&request.group());
            let now = self.store().request(&request.id).await?.unwrap_or(request);
            return Ok((now, failures));
        }
        let guard = self.guard()?;
        let group = TargetId { region: request.region.clone(), group_id: request.group_id.clone() };
        let Some(scope) = guard.scopes.iter().find(|s| s.covers(&request.account, &request.region)) else {
            return Ok((request, vec!["its region is no longer guarded".into()]));
        };
        let steps = Revert { revoke: request.remove.clone(), authorize: request.add.clone(), ..Revert::default() };
        let failures = self.carry_out(&scope.route, &request.group_id, &steps).await;
        if !failures.is_empty() {
            return Ok((request, failures));
        }
        // The added rules' ids, for the baseline: this group's rules only.
        let one = scope.only(&request.group_id).unwrap_or_else(|| scope.clone());
        let observed = guard.firewall.guarded(&one).await.map_err(EngineError::Firewall)?;
        let now_rules = observed.into_iter().find(|g| g.id == group).map(|g| g.rules).unwrap_or_default();
        let mut baseline = self.store().baseline(&group).await?.unwrap_or_default();
        baseline.retain(|b| !request.remove.iter().any(|r| r.same_access(&b.rule)));
        for added in &request.add {
            let id = now_rules.iter().find(|o| o.rule == *added).and_then(|o| o.rule_id.clone());
            baseline.push(GroupRule { rule_id: id, rule: added.clone() });
        }
        self.store().set_baseline(&group, &baseline, vec![]).await?;
        let mut applied = request.clone();
        applied.applied_at = Some(self.clock().now());
        applied.version += 1;
        // Only this process applies it (its decision won); a lost write just leaves applied_at unset,
        // and the sweep's apply is idempotent.
        self.store().update_request(&applied, vec![]).await?;
        Ok((applied, failures))
    }

    /// Every scope's guarded groups; a scope that cannot be read is a failure, and skipped.
    async fn observe_guarded<'a>(guard: &'a Guard, failures: &mut Vec<String>) -> Vec<(&'a GuardScope, Vec<GuardedGroup>)> {
        let mut out = Vec::new();
        for scope in &guard.scopes {
            match guard.firewall.guarded(scope).await {
                Ok(groups) => out.push((scope, groups)),
                Err(e) => failures.push(format!("{}: {e}", scope.route.region)),
            }
        }
        out
    }

    /// The requests, oldest first (`status` narrows).
    pub async fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<ChangeRequest>, GuardError> {
        Ok(self.store().requests(status).await?)
    }

    /// Records the current rules of every guarded group as approved (`dry_run`: only says).
    pub async fn record_baseline(&self, dry_run: bool, by: &Requester) -> Result<BaselineReport, GuardError> {
        let guard = self.guard()?;
        let mut report = BaselineReport { groups: vec![], failures: vec![] };
        let observed = Self::observe_guarded(guard, &mut report.failures).await;
        let total = observed.iter().map(|(_, groups)| groups.len()).sum();
        for (_, groups) in observed {
            for group in groups {
                let theirs: Vec<GroupRule> = group.rules.into_iter().filter(|r| !r.rule.is_ours(self.marker())).collect();
                report.groups.push((group.id.clone(), theirs.len()));
                self.progress("groups' baselines recorded", report.groups.len(), total);
                if dry_run {
                    continue;
                }
                let event = baseline_event(self.clock().now(), &by.actor(), &group.id, theirs.len());
                self.store().set_baseline(&group.id, &theirs, vec![event]).await?;
            }
        }
        self.progress_done();
        Ok(report)
    }

    /// Expires undecided requests, applies approved ones an earlier apply missed, and compares
    /// every guarded group with its baseline: what differs is reverted and filed (requester
    /// unknown); a group with no baseline is only reported.
    pub async fn guard_sweep(&self) -> Result<GuardSweepReport, GuardError> {
        let guard = self.guard()?;
        let mut report = GuardSweepReport::default();
        let now = self.clock().now();
        for request in self.store().requests(Some(RequestStatus::Pending)).await? {
            if let Some(expired) = guard::expire(&request, now) {
                let event =
                    request_event(now, &guard_actor(), Action::ChangeExpired, &expired, "expired undecided; the revert stays");
                if self.store().update_request(&expired, vec![event]).await? {
                    report.expired.push(expired.id);
                }
            }
        }
        for request in self.store().requests(Some(RequestStatus::Approved)).await? {
            // Rule grants (temporary approvals) are reconciled below, all at once.
            if request.applied_at.is_none() && request.temporary.is_none() {
                let (applied, failures) = self.apply_approved(request).await?;
                report.failures.extend(failures.into_iter().map(|f| format!("{}: {f}", applied.id)));
                if applied.applied_at.is_some() {
                    report.applied.push(applied.id);
                }
            }
        }
        report.rule_grants = self.reconcile_rule_grants().await?;
        report.failures.extend(report.rule_grants.failures.iter().cloned());
        for (scope, groups) in Self::observe_guarded(guard, &mut report.failures).await {
            for group in groups {
                report.groups += 1;
                let Some(baseline) = self.store().baseline(&group.id).await? else {
                    report.without_baseline.push(group.id);
                    continue;
                };
                let changes = guard::drift(&baseline, &group.rules, self.marker());
                let revert = guard::revert(&changes, Some(&baseline), self.marker());
                if changes.is_empty() || revert.is_empty() {
                    continue;
                }
                let event_id = format!("sweep:{}", request_id());
                let request = Self::new_request(guard, &event_id, UNKNOWN_REQUESTER, None, &group, &revert, now);
                match self.file_and_revert(scope, request, revert, now).await? {
                    GuardOutcome::Reverted { request, failures } => {
                        report.failures.extend(failures);
                        report.reverted.push(*request);
                    }
                    GuardOutcome::Ignored { .. } | GuardOutcome::Duplicate { .. } => {}
                }
            }
        }
        self.announce();
        Ok(report)
    }
}
