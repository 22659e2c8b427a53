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

use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::guard::{
    self, Approvers, ChangeRequest, Changes, GroupRule, GuardRule, GuardScope, GuardedGroup, Refusal, Revert,
};
use portcullis_core::{Action, PrincipalPattern, Route, TargetId, Timestamp};
use portcullis_store::{Actor, request_event};
use serde::Serialize;

pub use backing::OwnIdentity;
pub use decide::{Apply, DecisionOutcome};
pub use sweep::{BaselineReport, GuardSweepReport};

use crate::{Engine, EngineError, FirewallError};

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
    /// What "Approve for …" grants: the term of a rule grant.
    pub temporary_approval: time::Duration,
}

/// Guard's configuration, its firewall, and the identities it learned.
pub struct Guard {
    pub scopes: Vec<GuardScope>,
    pub own_principals: Vec<PrincipalPattern>,
    pub approvers: Approvers,
    pub request_ttl: time::Duration,
    pub max_event_age: time::Duration,
    pub temporary_approval: time::Duration,
    pub firewall: Arc<dyn GuardFirewall>,
    /// The identities learned from STS, per route, once each answered.
    learned: tokio::sync::Mutex<Vec<OwnIdentity>>,
}

impl Guard {
    pub fn new(settings: GuardSettings, firewall: Arc<dyn GuardFirewall>) -> Guard {
        let GuardSettings { scopes, own_principals, approvers, request_ttl, max_event_age, temporary_approval } = settings;
        Guard {
            scopes,
            own_principals,
            approvers,
            request_ttl,
            max_event_age,
            temporary_approval,
            firewall,
            learned: tokio::sync::Mutex::default(),
        }
    }

    /// How long a ledger note of guard's own call counts: as long as its event may still be
    /// handled (`max_event_age`), and five minutes for delivery.
    fn ledger_ttl(&self) -> time::Duration {
        self.max_event_age + time::Duration::minutes(5)
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
    Reverted { request: Box<ChangeRequest>, failures: Vec<String> },
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
    pub(crate) failures: Vec<String>,
    pub(crate) created: Vec<GroupRule>,
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

    /// The longest a break-glass may last (none without guard, or with break-glass off).
    pub fn break_glass_ttl(&self) -> Option<time::Duration> {
        self.guard.as_ref().and_then(|g| g.approvers.break_glass)
    }

    /// Whether guard is configured here.
    pub fn guards(&self) -> bool {
        self.guard.is_some()
    }

    pub(crate) fn guard(&self) -> Result<&Arc<Guard>, GuardError> {
        self.guard.as_ref().ok_or(GuardError::NotConfigured)
    }

    /// Handles one CloudTrail rule-change event: ignored, a redelivery, another report of a
    /// change filed already, or reverted and filed.
    pub async fn guard_event(&self, event: GuardEvent) -> Result<GuardOutcome, GuardError> {
        let guard = self.guard()?;
        let now = self.clock().now();
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
        if let Some(own) = self.own_principal(guard, &event.principal).await {
            return ignored(format!("{} is portcullis's own identity ({own})", event.principal));
        }
        let group = TargetId { region: event.region.clone(), group_id: event.group_id.clone() };
        let keys = guard::change_keys(&group, &event.changes);
        let noted = self.store().noted_own_changes(&keys, now).await?;
        let changes = guard::unnoted(&group, &event.changes, &noted);
        if changes.is_empty() {
            return ignored("it is portcullis's own change (noted in guard's ledger before the call)".into());
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
        let Some(observed) = groups.into_iter().find(|g| g.id.group_id == event.group_id) else { return not_guarded() };
        let rules: Vec<GuardRule> = changes.rules().cloned().collect();
        let backing = self.backing(&observed.id, &rules).await?;
        if changes.only_ours(self.marker(), &backing) {
            return ignored("it touched only rules the store backs (the reconcile's)".into());
        }
        let baseline = self.store().baseline(&observed.id).await?;
        let revert = guard::revert(&changes, baseline.as_deref(), self.marker(), &backing);
        for id in &revert.unchanged_edits {
            tracing::info!(event = %event.event_id, group = %event.group_id, rule = %id, "guard: an edit left the rule as it was; nothing to do");
        }
        if revert.is_empty() {
            return ignored("nothing to undo".into());
        }
        if let Some(outcome) = self.another_report(&observed.id, &revert, Some(&event.event_id), now).await? {
            return Ok(outcome);
        }
        let requester_user = guard.approvers.user_of(&event.principal).map(str::to_string);
        let request = Self::new_request(guard, &event.event_id, &event.principal, requester_user, &observed, &revert, now);
        self.file_and_revert(scope, request, revert, baseline, now).await
    }

    /// A live request for this same change (filed by the sweep, or by an event before): an
    /// event (`event_id`) is added to it instead of filing another; the sweep (`None`) files
    /// nothing. A pending one's revert is carried out again (it is idempotent), in case the
    /// first did not go through.
    async fn another_report(
        &self,
        group: &TargetId,
        revert: &Revert,
        event_id: Option<&str>,
        now: Timestamp,
    ) -> Result<Option<GuardOutcome>, GuardError> {
        let requests = self.store().requests(None).await?;
        let Some(existing) = requests.into_iter().find(|r| now < r.expires_at && r.is_change(group, &revert.add, &revert.remove))
        else {
            return Ok(None);
        };
        let mut next = existing.clone();
        if let Some(event_id) = event_id {
            if existing.event_id == event_id || existing.reported_by.iter().any(|e| e == event_id) {
                return Ok(Some(GuardOutcome::Duplicate { event_id: event_id.to_string() }));
            }
            next.reported_by.push(event_id.to_string());
            next.version += 1;
            let detail = format!("event {event_id} reports the same change");
            let event = request_event(now, &guard_actor(), Action::ChangeReported, &next, &detail);
            if !self.store().update_request(&next, vec![event]).await? {
                // Decided meanwhile: that decision stands; the event is a late report of it.
                return Ok(Some(GuardOutcome::Duplicate { event_id: event_id.to_string() }));
            }
            tracing::info!(request = %next.id, event = %event_id, "guard: a later report of a change already filed");
        }
        if existing.status == portcullis_core::guard::RequestStatus::Pending && revert.has_steps() {
            let guard = self.guard()?;
            if let Some(scope) = guard.scopes.iter().find(|s| s.covers(&existing.account, &existing.region)) {
                let carried = self.carry_out(&scope.route, group, revert).await;
                if !carried.failures.is_empty() {
                    tracing::warn!(request = %next.id, failures = ?carried.failures, "guard: the revert failed again; the sweep retries");
                }
            }
        }
        Ok(Some(GuardOutcome::Reported { request: Box::new(next) }))
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

    /// Stores the request, then undoes the change, then audits the revert (announced). Where
    /// the revert restored rules under new ids, the baseline takes them in the same write.
    async fn file_and_revert(
        &self,
        scope: &GuardScope,
        request: ChangeRequest,
        revert: Revert,
        baseline: Option<Vec<GroupRule>>,
        now: Timestamp,
    ) -> Result<GuardOutcome, GuardError> {
        let actor = guard_actor();
        let filed = request_event(now, &actor, Action::ChangeRequested, &request, "pending approval");
        if !self.store().file_request(&request, vec![filed]).await? {
            return Ok(GuardOutcome::Duplicate { event_id: request.event_id });
        }
        let group = request.group();
        let carried = self.carry_out(&scope.route, &group, &revert).await;
        let failures = carried.failures;
        let detail = match (failures.is_empty(), revert.notes.is_empty(), revert.has_steps()) {
            (true, true, _) => "reverted, pending approval".to_string(),
            (true, false, true) => format!("reverted, pending approval; {}", revert.notes.join("; ")),
            (true, false, false) => format!("nothing reverted, pending approval; {}", revert.notes.join("; ")),
            (false, _, _) => format!("revert FAILED ({}); the guard sweep will try again", failures.join("; ")),
        };
        let event = request_event(self.clock().now(), &actor, Action::ChangeReverted, &request, &detail);
        match baseline.as_deref().and_then(|b| guard::renumber(b, &carried.created)) {
            Some(renumbered) => self.store().set_baseline(&group, &renumbered, vec![event]).await?,
            None => self.store().record(event).await?,
        }
        self.announce();
        Ok(GuardOutcome::Reverted { request: Box::new(request), failures })
    }

    /// Carries out firewall steps on one group, in order: revoke (by id, then by content),
    /// authorize, modify; each failure named. Each step is noted in the ledger first, so the
    /// events it causes are known as guard's own. An authorized rule whose new id the call did
    /// not name (it was there already) is read back from the group.
    pub(crate) async fn carry_out(&self, route: &Route, group: &TargetId, steps: &Revert) -> Carried {
        let Ok(guard) = self.guard() else { return Carried::default() };
        let mut carried = Carried::default();
        let keys = guard::step_keys(group, steps);
        if keys.is_empty() {
            return carried;
        }
        let until = self.clock().now() + guard.ledger_ttl();
        if let Err(e) = self.store().note_own_changes(&keys, until).await {
            // Unnoted, guard's own calls would come back as someone else's changes.
            carried.failures.push(format!("could not note the change in guard's ledger, so it was not made: {e}"));
            return carried;
        }
        let fw = &guard.firewall;
        let group_id = group.group_id.as_str();
        if (!steps.revoke_ids.is_empty() || !steps.revoke.is_empty())
            && let Err(e) = fw.revoke(route, group_id, &steps.revoke_ids, &steps.revoke).await
        {
            carried.failures.push(format!("revoke: {e}"));
        }
        if !steps.authorize.is_empty() {
            match fw.authorize(route, group_id, &steps.authorize).await {
                Ok(created) => carried.created = created,
                Err(e) => carried.failures.push(format!("authorize: {e}")),
            }
            let unnamed = steps.authorize.iter().any(|r| !carried.created.iter().any(|c| c.rule.same_access(r)));
            if carried.failures.is_empty() && unnamed {
                self.read_back(guard, route, group, &steps.authorize, &mut carried).await;
            }
        }
        for (id, rule) in &steps.restore {
            if let Err(e) = fw.modify(route, group_id, id, rule).await {
                carried.failures.push(format!("restore {id}: {e}"));
            }
        }
        carried
    }

    /// The ids of authorized rules the call did not name, read from the group.
    async fn read_back(&self, guard: &Guard, route: &Route, group: &TargetId, rules: &[GuardRule], carried: &mut Carried) {
        let scope = GuardScope {
            route: route.clone(),
            selection: portcullis_core::guard::GroupSelection::Ids([group.group_id.clone()].into()),
        };
        match guard.firewall.guarded(&scope).await {
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
        let event = request_event(self.clock().now(), &by.refused_actor(), Action::Refused, request, &refusal.to_string());
        self.store().record(event).await?;
        Ok(DecisionOutcome::Refused(refusal.clone()))
    }
}
