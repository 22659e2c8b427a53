//! Guard: out-of-band changes to guarded groups are reverted exactly and filed as change
//! requests; approvers decide them (the rules are `core::guard::decide`, here for every
//! interface); the guard sweep compares each group with its baseline, so a lost event cannot
//! leave a change in place.
//!
//! Order: a request is stored before its revert touches the firewall, so a crash between the
//! two leaves a request (and the sweep finds the change); a decision is one conditional write,
//! and the firewall is changed only by the write that won.
//!
//! Guard never takes a description's word for it: a rule is ours only when the store backs it
//! (`backing`), and guard knows its own calls' events from the ledger it writes before each
//! call, whatever identity the events name, besides the identities it learns from STS.

mod backing;
mod decide;
mod sweep;
mod timed;

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::guard::{
    self, Approvers, ChangeRequest, Changes, GroupRule, GuardRule, GuardScope, GuardedGroup, Refusal, Steps,
};
use portcullis_core::{Action, PrincipalPattern, Route, TargetId, Timestamp};
use portcullis_store::{Actor, request_event};
use serde::Serialize;

pub use backing::OwnIdentity;
pub use decide::{Apply, DecisionOutcome};
pub use sweep::{BaselineReport, GuardSweepReport};
pub use timed::TimedRuleReport;

use crate::grants::Grants;
use crate::shared::Shared;
use crate::{EngineError, Failure, FailureKind, FirewallError, Subject};
use portcullis_store::GuardStore;
use std::sync::Mutex;

/// Security groups as guard sees them: every rule, any source, by id.
#[async_trait]
pub trait GuardFirewall: Send + Sync {
    /// The groups one scope guards, with every inbound rule and its id.
    async fn guarded(&self, scope: &GuardScope) -> Result<Vec<GuardedGroup>, FirewallError>;
    /// Revokes inbound rules by id and by exact permissions (one call each at most).
    async fn revoke(&self, route: &Route, group_id: &str, ids: &[String], rules: &[GuardRule]) -> Result<(), FirewallError>;
    /// Adds inbound rules exactly as given (descriptions included); returns those it made,
    /// with their new ids (a rule already there is not among them).
    async fn authorize(&self, route: &Route, group_id: &str, rules: &[GuardRule]) -> Result<Vec<GroupRule>, FirewallError>;
    /// Puts a rule back to `rule`, keeping its id.
    async fn modify(&self, route: &Route, group_id: &str, rule_id: &str, rule: &GuardRule) -> Result<(), FirewallError>;
    /// The identity (ARN) this firewall's calls on `route` are made as (`sts:GetCallerIdentity`).
    async fn identity(&self, route: &Route) -> Result<String, FirewallError>;
}

/// What guard is configured with.
#[derive(Debug, Clone)]
pub struct GuardSettings {
    pub scopes: Vec<GuardScope>,
    /// Identities whose events are never reverted, besides the ones learned from STS.
    pub own_principals: Vec<PrincipalPattern>,
    pub approvers: Approvers,
    pub request_ttl: time::Duration,
    /// An older event is left to the guard sweep (the rule may have been decided since).
    pub max_event_age: time::Duration,
    /// What "Approve for …" grants: the term of a timed rule.
    pub temporary_approval: time::Duration,
}

/// Guard: a component of its own over the shared clients, its store's part (`GuardStore`) and
/// its firewall (`GuardFirewall`). It asks the grants controller only which environments'
/// targets a group is (to know what the store backs); the grants controller never asks it.
pub struct Guard {
    shared: Arc<Shared>,
    grants: Arc<Grants>,
    requests: Arc<dyn GuardStore>,
    firewall: Arc<dyn GuardFirewall>,
    settings: GuardSettings,
    /// The identities learned from STS, per route, once each answered.
    learned: tokio::sync::Mutex<Vec<OwnIdentity>>,
    /// The next timed rule's expiry as last read, and when: the sweeper's once-a-second poll
    /// reads the requests at most every [`timed::REREAD`].
    next_expiry: Mutex<Option<(Timestamp, Option<Timestamp>)>>,
}

impl Guard {
    pub(crate) fn new(
        shared: Arc<Shared>,
        grants: Arc<Grants>,
        requests: Arc<dyn GuardStore>,
        settings: GuardSettings,
        firewall: Arc<dyn GuardFirewall>,
    ) -> Guard {
        Guard {
            shared,
            grants,
            requests,
            firewall,
            settings,
            learned: tokio::sync::Mutex::default(),
            next_expiry: Mutex::new(None),
        }
    }

    /// The Slack user groups whose members may approve.
    pub fn approver_groups(&self) -> std::collections::BTreeSet<String> {
        self.settings.approvers.groups.clone()
    }

    /// The term "Approve for …" grants at most.
    pub fn temporary_approval(&self) -> time::Duration {
        self.settings.temporary_approval
    }

    /// The longest a break-glass may last (none with break-glass off).
    pub fn break_glass_ttl(&self) -> Option<time::Duration> {
        self.settings.approvers.break_glass
    }

    /// How long a ledger note of guard's own call counts: as long as its event may still be
    /// handled (`max_event_age`), and five minutes for delivery.
    fn ledger_ttl(&self) -> time::Duration {
        self.settings.max_event_age + time::Duration::minutes(5)
    }
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
    /// The change was filed already (the guard sweep caught it first): this event is added to
    /// that request.
    Reported { request: Box<ChangeRequest> },
    /// Reverted (where `failures` is empty) and filed.
    Reverted { request: Box<ChangeRequest>, failures: Vec<Failure> },
}

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("guard is not configured here: it needs a [guard] section and the aws firewall (firewall = \"aws\")")]
    NotConfigured,
    #[error("no change request {0}")]
    NoSuchRequest(String),
    #[error("the event is dated {at}, more than 5 minutes in the future; refused")]
    FromTheFuture { at: String },
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl From<portcullis_store::StoreError> for GuardError {
    fn from(e: portcullis_store::StoreError) -> Self {
        GuardError::Engine(e.into())
    }
}

/// How far in the future an event may be dated (clocks differ a little, never by this).
const FUTURE_SKEW: time::Duration = time::Duration::minutes(5);

pub(crate) fn guard_actor() -> Actor {
    Actor { name: "guard".into(), interface: portcullis_core::Interface::Reconciler }
}

/// A fresh request id: `r-` and 16 hex digits from the OS's randomness.
fn request_id() -> String {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("the OS has randomness");
    format!("r-{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// What carrying out firewall steps did: what failed, and the rules an authorize made (with
/// their new ids).
#[derive(Debug, Default)]
pub(crate) struct Carried {
    pub(crate) failures: Vec<Failure>,
    pub(crate) created: Vec<GroupRule>,
}

impl Guard {
    /// Handles one CloudTrail rule-change event: ignored, a redelivery, another report of a
    /// change filed already, or reverted and filed.
    pub async fn event(&self, event: GuardEvent) -> Result<GuardOutcome, GuardError> {
        let now = self.shared.clock.now();
        let ignored = |reason: String| {
            tracing::info!(event = %event.event_id, group = %event.group_id, %reason, "guard: event ignored");
            Ok(GuardOutcome::Ignored { reason })
        };
        if event.at - now > FUTURE_SKEW {
            return Err(GuardError::FromTheFuture { at: portcullis_core::format_utc(event.at) });
        }
        if let Some(code) = &event.error_code {
            return ignored(format!("the call failed ({code}); nothing changed"));
        }
        if let Some(own) = self.own_principal(&event.principal).await {
            return ignored(format!("{} is portcullis's own identity ({own})", event.principal));
        }
        let group = TargetId { region: event.region.clone(), group_id: event.group_id.clone() };
        let keys = guard::change_keys(&group, &event.changes);
        let noted = self.requests.noted_own_changes(&keys, now).await?;
        let changes = guard::unnoted(&group, &event.changes, &noted);
        if changes.is_empty() {
            return ignored("it is portcullis's own change (noted in guard's ledger before the call)".into());
        }
        if now - event.at > self.settings.max_event_age {
            return ignored(format!(
                "it is older than max_event_age ({}); the guard sweep compares the group with its baseline",
                self.settings.max_event_age
            ));
        }
        let Some(scope) = self.settings.scopes.iter().find(|s| s.covers(&event.account, &event.region)) else {
            return ignored(format!("account {} in {} is not guarded", event.account, event.region));
        };
        let not_guarded = || ignored(format!("{} is not a guarded group", event.group_id));
        let Some(one) = scope.only(&event.group_id) else { return not_guarded() };
        let groups = self.firewall.guarded(&one).await.map_err(EngineError::Firewall)?;
        let Some(observed) = groups.into_iter().find(|g| g.id.group_id == event.group_id) else { return not_guarded() };
        let rules: Vec<GuardRule> = changes.rules().cloned().collect();
        let backing = self.backing(&observed.id, &rules).await?;
        if changes.only_ours(self.shared.marker(), &backing) {
            return ignored("it touched only rules the store backs (the reconcile's)".into());
        }
        let baseline = self.requests.baseline(&observed.id).await?;
        let revert = guard::revert(&changes, baseline.as_deref(), self.shared.marker(), &backing);
        for id in &revert.unchanged_edits {
            tracing::info!(event = %event.event_id, group = %event.group_id, rule = %id, "guard: an edit left the rule as it was; nothing to do");
        }
        if revert.is_empty() {
            return ignored("nothing to undo".into());
        }
        if let Some((outcome, _)) = self.another_report(&observed.id, &revert, Some(&event.event_id), now).await? {
            return Ok(outcome);
        }
        let requester_user = self.settings.approvers.user_of(&event.principal).map(str::to_string);
        let request = self.new_request(&event.event_id, &event.principal, requester_user, &observed, &revert, now);
        self.file_and_revert(scope, request, revert, baseline, now).await
    }

    /// A live request for this same change (filed by the sweep, or by an event before): an
    /// event (`event_id`) is added to it instead of filing another; the sweep (`None`) files
    /// nothing. A pending one's revert is carried out again (it is idempotent), in case the
    /// first did not go through; what failed in it is returned beside the outcome.
    async fn another_report(
        &self,
        group: &TargetId,
        revert: &Steps,
        event_id: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<(GuardOutcome, Vec<Failure>)>, GuardError> {
        let requests = self.requests.requests(None).await?;
        let Some(existing) = requests.into_iter().find(|r| now < r.expires_at && r.is_change(group, &revert.add, &revert.remove))
        else {
            return Ok(None);
        };
        let mut next = existing.clone();
        if let Some(event_id) = event_id {
            if existing.event_id == event_id || existing.reported_by.iter().any(|e| e == event_id) {
                return Ok(Some((GuardOutcome::Duplicate { event_id: event_id.to_string() }, vec![])));
            }
            next.reported_by.push(event_id.to_string());
            next.version += 1;
            let detail = format!("event {event_id} reports the same change");
            let event = request_event(now, &guard_actor(), Action::ChangeReported, &next, &detail);
            if !self.requests.update_request(&next, vec![event]).await? {
                // Decided meanwhile: that decision stands; the event is a late report of it.
                return Ok(Some((GuardOutcome::Duplicate { event_id: event_id.to_string() }, vec![])));
            }
            tracing::info!(request = %next.id, event = %event_id, "guard: a later report of a change already filed");
        }
        let mut failures = vec![];
        if existing.status == portcullis_core::guard::RequestStatus::Pending
            && revert.has_steps()
            && let Some(scope) = self.settings.scopes.iter().find(|s| s.covers(&existing.account, &existing.region))
        {
            failures = self.carry_out(&scope.route, group, revert).await.failures;
            if !failures.is_empty() {
                tracing::warn!(request = %next.id, failures = %Failure::joined(&failures), "guard: the revert failed again; the sweep retries");
            }
        }
        Ok(Some((GuardOutcome::Reported { request: Box::new(next) }, failures)))
    }

    fn new_request(
        &self,
        event_id: &str,
        requester: &str,
        requester_user: Option<String>,
        group: &GuardedGroup,
        revert: &Steps,
        now: Timestamp,
    ) -> ChangeRequest {
        let mut request = ChangeRequest::pending(&request_id(), event_id, requester, group, now, self.settings.request_ttl);
        request.requester_user = requester_user;
        request.add = revert.add.clone();
        request.remove = revert.remove.clone();
        request.notes = revert.notes.clone();
        request
    }

    /// Stores the request, then undoes the change, then audits the revert (announced). Where
    /// the revert restored rules under new ids, the baseline takes them in the same write.
    async fn file_and_revert(
        &self,
        scope: &GuardScope,
        request: ChangeRequest,
        revert: Steps,
        baseline: Option<Vec<GroupRule>>,
        now: Timestamp,
    ) -> Result<GuardOutcome, GuardError> {
        let actor = guard_actor();
        let filed = request_event(now, &actor, Action::ChangeRequested, &request, "pending approval");
        if !self.requests.file_request(&request, vec![filed]).await? {
            return Ok(GuardOutcome::Duplicate { event_id: request.event_id });
        }
        let group = request.group();
        let carried = self.carry_out(&scope.route, &group, &revert).await;
        let failures = carried.failures;
        let detail = match (failures.is_empty(), revert.notes.is_empty(), revert.has_steps()) {
            (true, true, _) => "reverted, pending approval".to_string(),
            (true, false, true) => format!("reverted, pending approval; {}", revert.notes.join("; ")),
            (true, false, false) => format!("nothing reverted, pending approval; {}", revert.notes.join("; ")),
            (false, _, _) => format!("revert FAILED ({}); the guard sweep will try again", Failure::joined(&failures)),
        };
        let event = request_event(self.shared.clock.now(), &actor, Action::ChangeReverted, &request, &detail);
        match baseline.as_deref().and_then(|b| guard::renumber(b, &carried.created)) {
            Some(renumbered) => self.requests.set_baseline(&group, &renumbered, vec![event]).await?,
            None => self.shared.store.record(event).await?,
        }
        self.shared.announce();
        Ok(GuardOutcome::Reverted { request: Box::new(request), failures })
    }

    /// Carries out firewall steps on one group, in order: revoke (by id, then by content),
    /// authorize, modify; each failure named. Each step is noted in the ledger first, so the
    /// events it causes are known as guard's own. An authorized rule whose new id the call did
    /// not name (it was there already) is read back from the group.
    pub(crate) async fn carry_out(&self, route: &Route, group: &TargetId, steps: &Steps) -> Carried {
        let mut carried = Carried::default();
        let failed = |kind: FailureKind, e: &FirewallError| Failure::call(Subject::Group(group.clone()), kind, e);
        let keys = guard::step_keys(group, steps);
        if keys.is_empty() {
            return carried;
        }
        let until = self.shared.clock.now() + self.ledger_ttl();
        if let Err(e) = self.requests.note_own_changes(&keys, until).await {
            // Unnoted, guard's own calls would come back as someone else's changes.
            carried.failures.push(Failure::new(Subject::Group(group.clone()), FailureKind::Ledger, e.to_string()));
            return carried;
        }
        let fw = &self.firewall;
        let group_id = group.group_id.as_str();
        if (!steps.revoke_ids.is_empty() || !steps.revoke.is_empty())
            && let Err(e) = fw.revoke(route, group_id, &steps.revoke_ids, &steps.revoke).await
        {
            carried.failures.push(failed(FailureKind::Revoke, &e));
        }
        if !steps.authorize.is_empty() {
            match fw.authorize(route, group_id, &steps.authorize).await {
                Ok(created) => carried.created = created,
                Err(e) => carried.failures.push(failed(FailureKind::Authorize, &e)),
            }
            let unnamed = steps.authorize.iter().any(|r| !carried.created.iter().any(|c| c.rule.same_access(r)));
            if carried.failures.is_empty() && unnamed {
                self.read_back(route, group, &steps.authorize, &mut carried).await;
            }
        }
        for (id, rule) in &steps.restore {
            if let Err(e) = fw.modify(route, group_id, id, rule).await {
                let e = FirewallError { message: format!("{id}: {}", e.message), ..e };
                carried.failures.push(failed(FailureKind::Restore, &e));
            }
        }
        carried
    }

    /// The ids of authorized rules the call did not name, read from the group.
    async fn read_back(&self, route: &Route, group: &TargetId, rules: &[GuardRule], carried: &mut Carried) {
        let scope = GuardScope {
            route: route.clone(),
            selection: portcullis_core::guard::GroupSelection::Ids([group.group_id.clone()].into()),
        };
        match self.firewall.guarded(&scope).await {
            Ok(groups) => {
                let observed = groups.into_iter().find(|g| g.id == *group).map(|g| g.rules).unwrap_or_default();
                let unnamed: Vec<&GuardRule> =
                    rules.iter().filter(|r| !carried.created.iter().any(|c| c.rule.same_access(r))).collect();
                for rule in unnamed {
                    if let Some(found) = observed.iter().find(|o| o.rule.same_access(rule)) {
                        carried.created.push(found.clone());
                    }
                }
            }
            Err(e) => tracing::warn!(group = %group, error = %e, "guard: could not read back the ids of rules it authorized"),
        }
    }

    /// The refusal as the engine reports it, audited.
    pub(crate) async fn refuse_decision(
        &self,
        request: &ChangeRequest,
        refusal: &Refusal,
        by: &crate::Requester,
    ) -> Result<DecisionOutcome, GuardError> {
        let event = request_event(self.shared.clock.now(), &by.refused_actor(), Action::Refused, request, &refusal.to_string());
        self.shared.store.record(event).await?;
        Ok(DecisionOutcome::Refused(refusal.clone()))
    }
}
