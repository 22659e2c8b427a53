//! Auto Scaling group members as grants (lifecycle hooks and true-ups, as the AWS Auto Scaling sync did): lifecycle events and true-ups write member
//! grants to the store, and the environment's reconcile applies them, as for every grant.
//! What changes is decided in `core::plan_members`; this module reads, writes and completes
//! lifecycle actions.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use async_trait::async_trait;
use portcullis_core::{
    Action, AuditEvent, AuditScope, Cidr, Environment, Grant, Instance, Interface, MemberPlan, MemberSource, OnFailure, Route,
    member_instance, plan_admission, plan_members,
};
use portcullis_store::{Actor, Upsert};
use serde::Serialize;
use thiserror::Error;

use crate::grants::Grants;
use crate::shared::Shared;
use crate::{Cause, EngineError, Failure, FailureKind, ReconcileReport, Scope, Subject};

/// How long a member grant lives without a true-up confirming it (the backstop expiry).
pub const DEFAULT_MEMBER_TTL: time::Duration = time::Duration::days(1);

/// Auto Scaling groups and their instances, as the engine needs them.
#[async_trait]
pub trait Membership: Send + Sync {
    /// The ASG's instances with their lifecycle states and addresses, `None` when there is no
    /// such ASG. Costs one ASG describe and ⌈N/1000⌉ instance describes.
    async fn instances(&self, route: &Route, asg: &str) -> Result<Option<Vec<Instance>>, MembershipError>;

    /// Instances by id, with their addresses (the lifecycle state is left empty).
    async fn describe(&self, route: &Route, ids: &[String]) -> Result<Vec<Instance>, MembershipError>;

    /// Completes a lifecycle action (`CompleteLifecycleAction`).
    async fn complete(&self, route: &Route, action: &LifecycleAction, result: LifecycleResult) -> Result<(), MembershipError>;
}

/// An Auto Scaling call that failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct MembershipError {
    pub code: Option<String>,
    pub message: String,
}

/// A lifecycle hook's pending action, as its event names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LifecycleAction {
    pub asg: String,
    pub hook: String,
    pub token: String,
    pub instance_id: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LifecycleResult {
    Continue,
    Abandon,
}

impl LifecycleResult {
    pub fn as_str(&self) -> &'static str {
        match self {
            LifecycleResult::Continue => "CONTINUE",
            LifecycleResult::Abandon => "ABANDON",
        }
    }
}

/// What an Auto Scaling event asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// An instance is launching (`EC2 Instance-launch Lifecycle Action`) in `region`.
    Launch { region: String, action: LifecycleAction },
    /// An instance is terminating.
    Terminate { region: String, action: LifecycleAction },
    /// Bring member grants to the ASGs' members: one ASG (by name, and region when given), or
    /// every configured one.
    TrueUp { asg: Option<String>, region: Option<String> },
}

/// Members: a component of its own over the shared clients and Auto Scaling
/// (`Membership`). It writes member grants to the store and asks the grants controller to
/// apply them; the grants controller never asks it.
pub struct Members {
    shared: Arc<Shared>,
    grants: Arc<Grants>,
    sources: Vec<MemberSource>,
    member_ttl: time::Duration,
    membership: Arc<dyn Membership>,
    /// Launches waiting for their instance's describe, per route: a burst is one call.
    describes: std::sync::Mutex<HashMap<Route, Vec<Waiting>>>,
}

/// A launch waiting for its instance's describe.
type Waiting = (String, tokio::sync::oneshot::Sender<Result<Vec<Instance>, MembershipError>>);

/// A burst of launches is gathered until this long passes with no new one…
const DESCRIBE_QUIET: std::time::Duration = std::time::Duration::from_millis(50);
/// …or this long has passed since the first: then one describe names every instance (1,000 a
/// call). A lifecycle hook waits minutes; a launch can spare a moment.
const DESCRIBE_GATHER: std::time::Duration = std::time::Duration::from_secs(2);

impl Members {
    pub(crate) fn new(
        shared: Arc<Shared>,
        grants: Arc<Grants>,
        sources: Vec<MemberSource>,
        member_ttl: time::Duration,
        membership: Arc<dyn Membership>,
    ) -> Members {
        Members { shared, grants, sources, member_ttl, membership, describes: Default::default() }
    }

    /// The Auto Scaling groups whose members are admitted, one source per environment each.
    pub fn sources(&self) -> &[MemberSource] {
        &self.sources
    }

    /// One launching instance, described together with every other launch of the same burst
    /// on `route`: 200 launches within a second cost one `DescribeInstances`, not 200.
    async fn describe_launching(&self, route: &Route, id: &str) -> Result<Option<Instance>, MembershipError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let waiting = |members: &Members| {
            let describes = members.describes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            describes.get(route).map_or(0, Vec::len)
        };
        let lead = {
            let mut describes = self.describes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let list = describes.entry(route.clone()).or_default();
            list.push((id.to_string(), tx));
            list.len() == 1
        };
        if lead {
            // Monotonic pacing of a batch: it decides nothing stored or audited.
            let started = std::time::Instant::now();
            let mut seen = 1;
            loop {
                tokio::time::sleep(DESCRIBE_QUIET).await;
                let now = waiting(self);
                if now == seen || started.elapsed() >= DESCRIBE_GATHER {
                    break;
                }
                seen = now;
            }
            let batch =
                self.describes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(route).unwrap_or_default();
            let mut ids: Vec<String> = batch.iter().map(|(id, _)| id.clone()).collect();
            ids.sort();
            ids.dedup();
            let described = self.membership.describe(route, &ids).await;
            for (_, tx) in batch {
                let _ = tx.send(described.clone());
            }
        }
        let described = rx.await.map_err(|_| MembershipError { code: None, message: "the describe was dropped".into() })?;
        Ok(described?.into_iter().find(|i| i.id == id))
    }
}

/// What a member event did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MemberOutcome {
    /// Why nothing was done, when nothing was (an ASG no environment lists).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ignored: Option<String>,
    /// Member grants written (new or renewed).
    pub granted: Vec<Grant>,
    /// Member grants removed.
    pub removed: Vec<Grant>,
    /// Members not admitted, and why (no address of the configured kind).
    pub skipped: Vec<SkippedMember>,
    /// Member addresses another owner's grant holds already.
    pub held_by_others: Vec<HeldAddress>,
    /// How the lifecycle action was completed, if the event had one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleResult>,
    /// What went wrong on the way (a region that failed, an ASG that could not be described).
    pub failures: Vec<Failure>,
    #[serde(skip)]
    pub reports: Vec<ReconcileReport>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedMember {
    pub asg: String,
    pub instance_id: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldAddress {
    pub cidr: Cidr,
    pub environment: Environment,
    pub owner: String,
}

/// Whether every group of `region` holds the change: it was observed, and no apply or quota
/// check there failed.
pub fn region_holds(report: &ReconcileReport, region: &str) -> bool {
    !report.observe_failures.iter().any(|f| f.region == region)
        && !report.outcomes.iter().any(|o| o.target.region == region && o.error.is_some())
        && !report.overflows.iter().any(|o| o.target.region == region)
}

impl Members {
    /// Handles an Auto Scaling event; `interface` is how it arrived.
    pub async fn event(&self, event: MemberEvent, interface: Interface) -> Result<MemberOutcome, EngineError> {
        let members = self;
        let (launching, region, action) = match event {
            MemberEvent::Launch { region, action } => (true, region, action),
            MemberEvent::Terminate { region, action } => (false, region, action),
            MemberEvent::TrueUp { asg, region } => {
                let sources: Vec<&MemberSource> = members
                    .sources
                    .iter()
                    .filter(|s| asg.as_ref().is_none_or(|a| *a == s.asg))
                    .filter(|s| region.as_ref().is_none_or(|r| *r == s.route.region))
                    .collect();
                if sources.is_empty() {
                    return Ok(ignored(format!("no environment lists the Auto Scaling group {}", asg.unwrap_or_default())));
                }
                return self.true_up(&sources, interface).await;
            }
        };
        let sources = sources_of(members, &region, &action.asg);
        if sources.is_empty() {
            return Ok(ignored(format!("no environment lists the Auto Scaling group {} in {region}", action.asg)));
        }
        match launching {
            true => self.launch(&sources, &region, action, interface).await,
            false => self.terminate(&sources, action, interface).await,
        }
    }

    /// `sources`: those listing the event's ASG (at least one).
    async fn launch(
        &self,
        sources: &[&MemberSource],
        region: &str,
        action: LifecycleAction,
        interface: Interface,
    ) -> Result<MemberOutcome, EngineError> {
        let first = sources[0];
        let mut outcome = MemberOutcome::default();
        let instance = match self.describe_launching(&first.route, &action.instance_id).await {
            Ok(found) => found,
            Err(err) => {
                let instance = Subject::Instance { region: region.to_string(), instance_id: action.instance_id.clone() };
                outcome.failures.push(Failure::new(instance, FailureKind::Describe, format!("cannot describe it: {err}")));
                None
            }
        };
        // Only the ASG's own instance is admitted: an event naming another is refused.
        if let Some(other) = instance.as_ref().filter(|i| i.asg.as_deref() != Some(action.asg.as_str())) {
            let why = format!(
                "{} is not a member of {} (its aws:autoscaling:groupName is {}); not admitted",
                other.id,
                action.asg,
                other.asg.as_deref().unwrap_or("absent")
            );
            tracing::warn!(asg = %action.asg, instance = %other.id, "a launch for an instance that is not the group's");
            let instance = Subject::Instance { region: region.to_string(), instance_id: other.id.clone() };
            outcome.failures.push(Failure::new(instance, FailureKind::NotMember, why.clone()));
            self.complete(first, &action, LifecycleResult::Abandon, Some(why), interface, &mut outcome).await;
            return Ok(outcome);
        }
        let now = self.shared.clock.now();
        let mut environments = BTreeSet::new();
        if let Some(instance) = &instance {
            // It is launching: a member on its way in, whatever EC2's describe says of it.
            let launching = [Instance { lifecycle_state: "Pending:Wait".into(), ..instance.clone() }];
            for source in sources {
                let existing = self.shared.store.grants(Some(&source.environment)).await?;
                let plan = plan_admission(source, &launching, &existing, now, self.member_ttl);
                if self.record_plan(source, plan, interface, &mut outcome).await? {
                    environments.insert(source.environment.clone());
                }
            }
        }
        self.apply_members(&environments, &mut outcome).await?;
        let holds = outcome.reports.iter().all(|r| region_holds(r, region));
        // The instance may serve once its own region admits it; other regions catch up. When
        // its own region could not, `on_failure` says (the failure is reported either way, and
        // the next true-up admits it).
        let result = match (instance.is_some() && holds, first.on_failure) {
            (true, _) | (false, OnFailure::Continue) => LifecycleResult::Continue,
            (false, OnFailure::Abandon) => LifecycleResult::Abandon,
        };
        self.complete(first, &action, result, None, interface, &mut outcome).await;
        Ok(outcome)
    }

    /// `sources`: those listing the event's ASG (at least one).
    async fn terminate(
        &self,
        sources: &[&MemberSource],
        action: LifecycleAction,
        interface: Interface,
    ) -> Result<MemberOutcome, EngineError> {
        let first = sources[0];
        let mut outcome = MemberOutcome::default();
        let mut environments = BTreeSet::new();
        for source in sources {
            let grants = self.shared.store.grants(Some(&source.environment)).await?;
            for grant in grants.iter().filter(|g| source.owns(g) && member_instance(g) == Some(action.instance_id.as_str())) {
                let actor = Actor { name: source.owner().name, interface };
                if let Some(removed) = self.shared.store.remove(&grant.key(), &actor, self.shared.clock.now()).await? {
                    outcome.removed.push(removed);
                    environments.insert(source.environment.clone());
                }
            }
        }
        if !environments.is_empty() {
            self.shared.announce();
        }
        // A terminating instance goes whatever happens here: a revoke that failed is retried
        // by the reconcile, so the action always continues.
        self.apply_members(&environments, &mut outcome).await?;
        self.complete(first, &action, LifecycleResult::Continue, None, interface, &mut outcome).await;
        Ok(outcome)
    }

    async fn true_up(&self, sources: &[&MemberSource], interface: Interface) -> Result<MemberOutcome, EngineError> {
        let mut outcome = MemberOutcome::default();
        let mut environments = BTreeSet::new();
        let now = self.shared.clock.now();
        for source in sources {
            let instances = match self.membership.instances(&source.route, &source.asg).await {
                Ok(Some(instances)) => instances,
                Ok(None) => {
                    let asg = Subject::Asg { region: source.route.region.clone(), asg: source.asg.clone() };
                    outcome.failures.push(Failure::new(asg, FailureKind::Describe, "the Auto Scaling group does not exist"));
                    continue;
                }
                Err(err) => {
                    let asg = Subject::Asg { region: source.route.region.clone(), asg: source.asg.clone() };
                    outcome.failures.push(Failure::new(asg, FailureKind::Describe, format!("cannot describe it: {err}")));
                    continue;
                }
            };
            let existing = self.shared.store.grants(Some(&source.environment)).await?;
            let plan = plan_members(source, &instances, &existing, now, self.member_ttl);
            if self.record_plan(source, plan, interface, &mut outcome).await? {
                environments.insert(source.environment.clone());
            }
        }
        self.apply_members(&environments, &mut outcome).await?;
        Ok(outcome)
    }

    /// Writes a plan to the store: its member grants (exempt from per-user caps: membership
    /// decides) and removals; reports what it skipped and what other owners hold. Whether it
    /// changed anything.
    async fn record_plan(
        &self,
        source: &MemberSource,
        plan: MemberPlan,
        interface: Interface,
        outcome: &mut MemberOutcome,
    ) -> Result<bool, EngineError> {
        let changed = !plan.upserts.is_empty() || !plan.removals.is_empty();
        for (instance_id, reason) in plan.skipped {
            outcome.skipped.push(SkippedMember { asg: source.asg.clone(), instance_id, reason });
        }
        for (cidr, owner) in plan.held_by_others {
            outcome.held_by_others.push(HeldAddress { cidr, environment: source.environment.clone(), owner: owner.name });
        }
        for grant in plan.upserts {
            self.write_member(source, grant, interface, outcome).await?;
        }
        let actor = Actor { name: source.owner().name, interface };
        for key in plan.removals {
            if let Some(removed) = self.shared.store.remove(&key, &actor, self.shared.clock.now()).await? {
                outcome.removed.push(removed);
                self.shared.announce();
            }
        }
        Ok(changed)
    }

    /// Writes one member grant (exempt from per-user caps: membership decides).
    async fn write_member(
        &self,
        source: &MemberSource,
        grant: Grant,
        interface: Interface,
        outcome: &mut MemberOutcome,
    ) -> Result<(), EngineError> {
        let actor = Actor { name: source.owner().name, interface };
        let upserted = self.shared.store.upsert(Upsert { grant, actor, max_grants_per_user: usize::MAX }).await?;
        self.shared.wake_sweeper.notify_one();
        self.shared.announce();
        outcome.granted.push(upserted.grant);
        Ok(())
    }

    /// Reconciles the environments a member change touched, into the outcome.
    async fn apply_members(&self, environments: &BTreeSet<Environment>, outcome: &mut MemberOutcome) -> Result<(), EngineError> {
        for env in environments {
            let report = self.grants.reconcile(Scope::Environment(env.clone()), Cause::Change).await?;
            outcome.failures.extend(report.failures());
            outcome.reports.push(report);
        }
        Ok(())
    }

    /// Completes the lifecycle action, and audits how (`why`, when the outcome's failures do
    /// not say it).
    async fn complete(
        &self,
        source: &MemberSource,
        action: &LifecycleAction,
        result: LifecycleResult,
        why: Option<String>,
        interface: Interface,
        outcome: &mut MemberOutcome,
    ) {
        let region = &source.route.region;
        let why = match (result, why, outcome.failures.first()) {
            (LifecycleResult::Abandon, Some(why), _) => format!(": {why}"),
            (LifecycleResult::Abandon, None, Some(failure)) => format!(": {region} does not hold the rule ({failure})"),
            (LifecycleResult::Abandon, None, None) => format!(": {} was not found", action.instance_id),
            (LifecycleResult::Continue, _, _) => String::new(),
        };
        let mut reason = format!("{} {} of {} ({}){why}", result.as_str(), action.hook, action.instance_id, action.asg);
        if let Err(err) = self.membership.complete(&source.route, action, result).await {
            reason.push_str(&format!("; completing it failed: {err}"));
            let instance = Subject::Instance { region: region.clone(), instance_id: action.instance_id.clone() };
            outcome.failures.push(Failure::new(instance, FailureKind::Lifecycle, err.to_string()));
        } else {
            outcome.lifecycle = Some(result);
        }
        let event = AuditEvent {
            id: 0,
            at: self.shared.clock.now(),
            actor: source.owner().name.as_str().into(),
            interface,
            action: Action::LifecycleCompleted,
            environment: AuditScope::from(&source.environment),
            cidr: None,
            before: None,
            after: None,
            reason,
            request: None,
        };
        if let Err(err) = self.shared.store.record(event).await {
            tracing::warn!(error = %err, "could not audit a lifecycle action");
        }
        tracing::info!(asg = %action.asg, instance = %action.instance_id, result = result.as_str(), "lifecycle action completed");
    }
}

fn ignored(reason: String) -> MemberOutcome {
    MemberOutcome::ignored(reason)
}

impl MemberOutcome {
    /// Nothing was done, and why (logged).
    pub(crate) fn ignored(reason: String) -> MemberOutcome {
        tracing::info!(%reason, "Auto Scaling event ignored");
        MemberOutcome { ignored: Some(reason), ..MemberOutcome::default() }
    }
}

/// The sources that list `asg` in `region` (one per environment that admits its members).
fn sources_of<'a>(members: &'a Members, region: &str, asg: &str) -> Vec<&'a MemberSource> {
    members.sources.iter().filter(|s| s.asg == asg && s.route.region == region).collect()
}
