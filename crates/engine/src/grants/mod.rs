//! The grants controller (see [`Grants`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use portcullis_core::{
    Action, AuditEvent, AuditScope, Cidr, Credential, Description, Environment, Grant, GrantKey, GroupChange, Interface, Marker,
    Owner, Plan, PlanInput, Policy, PortSet, RefusedGrant, RuleQuota, SkippedGroup, Source, Target, TargetId, TargetSpec, Ttl,
    admit_grants, plan, plan_additions, resolve_targets,
};
use portcullis_store::{Actor, Store, StoreError, Upsert};
use serde::Serialize;
use tokio::sync::watch;

mod adopt;
mod apply_lock;
mod authorize;
pub(crate) mod coalesce;
mod queries;
mod stream;
mod sweep;

pub use apply_lock::{APPLY_LEASE, APPLY_LOCK_WAIT, apply_lease_name};
pub use coalesce::BATCH_WINDOW;
pub(crate) use queries::term;
pub use queries::{AuditQuery, GAUGES_MAX_AGE};
pub use stream::StreamOutcome;

use crate::report::{AddOutcome, GroupOutcome, ReconcileReport, ReconcileSummary, RemoveOutcome};
use crate::shared::Shared;
use crate::{Clock, EngineError, Firewall, Lease, ObserveFailure};
use portcullis_core::{NotFound, PolicyRefusal};

/// Which environments a reconcile covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Environment(Environment),
}

impl Scope {
    fn covers(&self, env: &Environment) -> bool {
        match self {
            Scope::All => true,
            Scope::Environment(e) => e == env,
        }
    }

    pub(crate) fn environment(&self) -> Option<&Environment> {
        match self {
            Scope::All => None,
            Scope::Environment(e) => Some(e),
        }
    }
}

/// Why a reconcile ran; drift repairs are audited only for refreshes and periodic runs.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Cause {
    Change,
    Refresh,
    Periodic,
    Sweep,
}

impl Cause {
    /// Its name, as the serialised form and the metrics' `cause` label spell it.
    pub fn as_str(&self) -> &'static str {
        match self {
            Cause::Change => "change",
            Cause::Refresh => "refresh",
            Cause::Periodic => "periodic",
            Cause::Sweep => "sweep",
        }
    }
}

/// Who asks for a change, through which interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requester {
    /// Becomes the owner of a grant the request adds.
    pub owner: Owner,
    /// Groups the interface vouches the user belongs to (Slack user groups).
    pub groups: Vec<String>,
    pub interface: Interface,
    /// What the credentials allow (a token's environments, an IAM principal's listing).
    pub credential: Credential,
}

impl Requester {
    /// A user known by one name only (CLI `--as`, the OS user), identified by the interface.
    pub fn named(name: &str, interface: Interface) -> Requester {
        Requester { owner: Owner::named(name), groups: Vec::new(), interface, credential: Credential::Interface }
    }

    pub(crate) fn actor(&self) -> Actor {
        Actor { name: self.owner.name.clone(), interface: self.interface }
    }

    /// How a refusal names the requester: the name, and the id when it differs (a Slack user
    /// chooses their name, so the id is what identifies them).
    pub(crate) fn refused_actor(&self) -> Actor {
        let Owner { id, name, .. } = &self.owner;
        let name = if id == name { name.clone() } else { format!("{name} ({id})") };
        Actor { name, interface: self.interface }
    }
}

/// A request to add (or refresh) a grant.
#[derive(Debug, Clone)]
pub struct AddRequest {
    pub cidr: Cidr,
    pub environment: Environment,
    /// `None` means the default (30 days).
    pub ttl: Option<Ttl>,
    pub description: Description,
    pub source: Source,
    pub by: Requester,
}

/// The targets one observation resolved to.
pub(crate) struct Observed {
    pub(crate) failures: Vec<ObserveFailure>,
    pub(crate) targets: Vec<Target>,
    skipped: Vec<SkippedGroup>,
}

/// The grants controller: grants in the store, their rules on every target, level-triggered.
/// Adds and removes coalesce per environment (`coalesce`); the sweeper's sweep and the periodic
/// reconcile are its (`sweep`); so are the queries interfaces ask (`queries`) and who may do
/// what (`authorize`).
pub struct Grants {
    pub(crate) shared: Arc<Shared>,
    firewall: Arc<dyn Firewall>,
    lease: Option<Arc<Lease>>,
    pub(crate) last_reconcile: Mutex<Option<ReconcileSummary>>,
    /// The groups each environment was last seen to have, with their ports, so an answer that
    /// needed no firewall call can still name them.
    known_targets: Mutex<BTreeMap<TargetId, (Environment, PortSet)>>,
    /// Stored grants the policy refused at the last plan, for `status`.
    pub(crate) refused: Mutex<BTreeMap<GrantKey, RefusedGrant>>,
    /// One apply at a time per environment (`coalesce`).
    pub(crate) slots: crate::grants::coalesce::Slots,
}

impl Grants {
    pub(crate) fn new(shared: Arc<Shared>, firewall: Arc<dyn Firewall>, lease: Option<Arc<Lease>>) -> Grants {
        Grants {
            shared,
            firewall,
            lease,
            last_reconcile: Mutex::new(None),
            known_targets: Mutex::new(BTreeMap::new()),
            refused: Mutex::new(BTreeMap::new()),
            slots: Default::default(),
        }
    }

    pub fn lease(&self) -> Option<&Arc<Lease>> {
        self.lease.as_ref()
    }

    /// Waits for the lease, if there is one; false on shutdown.
    pub(crate) async fn lead(&self, shutdown: &mut watch::Receiver<bool>) -> bool {
        match &self.lease {
            Some(lease) => lease.wait_held(shutdown).await,
            None => !*shutdown.borrow(),
        }
    }

    pub(crate) fn announce(&self) {
        self.shared.announce();
    }

    /// The store, for the engine's own modules: interfaces ask the engine, never the store.
    pub(crate) fn store(&self) -> &Arc<dyn Store> {
        &self.shared.store
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.shared.clock
    }

    pub(crate) fn marker(&self) -> &Marker {
        self.shared.marker()
    }

    pub(crate) fn quota(&self) -> RuleQuota {
        self.shared.quota()
    }

    pub(crate) fn specs(&self) -> &[TargetSpec] {
        self.shared.specs()
    }

    pub(crate) fn policies(&self) -> &BTreeMap<Environment, Policy> {
        self.shared.policies()
    }

    /// The policy of a known environment.
    pub fn policy(&self, env: &Environment) -> Result<&Policy, NotFound> {
        self.shared.policy(env)
    }

    pub(crate) fn progress(&self, what: &'static str, done: usize, total: usize) {
        self.shared.progress(what, done, total);
    }

    pub(crate) fn progress_done(&self) {
        self.shared.progress_done();
    }

    /// The groups of `env` as last observed (region, id, ports), without a firewall call.
    pub fn known_targets(&self, env: &Environment) -> Vec<(TargetId, PortSet)> {
        let known = self.known_targets.lock().expect("target cache poisoned");
        known.iter().filter(|(_, (e, _))| e == env).map(|(id, (_, ports))| (id.clone(), ports.clone())).collect()
    }

    /// Adds or refreshes a grant: checks policy and the groups' quotas, stores it, then applies
    /// it to every target of its environment before returning.
    pub async fn add(&self, req: AddRequest) -> Result<AddOutcome, EngineError> {
        let env = req.environment.clone();
        let policy = self.authorize_for(&env, Some(&req.cidr), &req.by).await?.clone();
        let ttl = req.ttl.unwrap_or(Ttl::DEFAULT);
        let checks = policy.check_cidr(&env, &req.cidr).and_then(|_| policy.check_ttl(&env, ttl));
        if let Err(err) = checks {
            return Err(self.refuse(err, &env, Some(&req.cidr), &req.by.refused_actor()).await);
        }

        let now = self.clock().now();
        let grant = Grant {
            cidr: req.cidr,
            environment: env.clone(),
            owner: req.by.owner.clone(),
            source: req.source,
            description: req.description.clone(),
            created_at: now,
            expires_at: Some(now + ttl.duration()),
        };

        // A refresh that changes no rule description needs no firewall call: the store is the
        // source of truth for expiry, and the periodic reconcile repairs any drift.
        let unchanged = self
            .store()
            .grant(&grant.key())
            .await?
            .is_some_and(|g| g.is_live(now) && g.description == grant.description && g.source == grant.source);
        if unchanged {
            let upserted = self.store_grant(grant, &req.by, &policy).await?;
            return Ok(AddOutcome { grant: upserted.grant, refreshed: upserted.previous.is_some(), report: None });
        }

        // The quota check, the write and the apply happen in the environment's next coalesced
        // apply, with every other change that arrives meanwhile.
        self.add_coalesced(grant, req.by, policy).await
    }

    /// Stores an add or refresh (refusals audited) and wakes the sweeper for its expiry.
    pub(crate) async fn store_grant(
        &self,
        grant: Grant,
        by: &Requester,
        policy: &Policy,
    ) -> Result<portcullis_store::Upserted, EngineError> {
        let actor = &by.actor();
        let (env, cidr) = (grant.environment.clone(), grant.cidr);
        let upsert = Upsert { grant, actor: actor.clone(), max_grants_per_user: policy.max_grants_per_user() };
        let upserted = match self.store().upsert(upsert).await {
            Ok(u) => u,
            Err(StoreError::Refused(err)) => return Err(self.refuse(err, &env, Some(&cidr), &by.refused_actor()).await),
            Err(err) => return Err(err.into()),
        };
        self.shared.wake_sweeper.notify_one();
        self.announce();
        tracing::info!(cidr = %cidr, environment = %env, user = %actor.name,
            refreshed = upserted.previous.is_some(), "grant stored");
        Ok(upserted)
    }

    /// Removes a grant and takes its rules away.
    pub async fn remove(&self, key: &GrantKey, by: &Requester) -> Result<RemoveOutcome, EngineError> {
        let env = &key.environment;
        self.authorize_for(env, Some(&key.cidr), by).await?;
        if let Some(member) = self.store().grant(key).await?.filter(|g| g.source == Source::AsgMember) {
            let err = PolicyRefusal::MembershipDecides {
                cidr: key.cidr.to_string(),
                environment: env.to_string(),
                owner: member.owner.name.trim_start_matches("asg:").to_string(),
            };
            return Err(self.refuse(err, env, Some(&key.cidr), &by.refused_actor()).await);
        }
        let actor = by.actor();
        let removed = self
            .store()
            .remove(key, &actor, self.clock().now())
            .await?
            .ok_or_else(|| NotFound::NoSuchGrant { cidr: key.cidr.to_string(), environment: env.to_string() })?;
        self.announce();
        tracing::info!(cidr = %key.cidr, environment = %env, user = %actor.name, "grant removed");
        let report = self.reconcile(Scope::Environment(env.clone()), Cause::Change).await?;
        Ok(RemoveOutcome { grant: removed, report })
    }

    /// Brings the firewall to the state the store describes. (A dry run is a `DryRunFirewall`,
    /// which prints the changes and makes none.)
    pub async fn reconcile(&self, scope: Scope, cause: Cause) -> Result<ReconcileReport, EngineError> {
        match &scope {
            Scope::Environment(env) => {
                self.policy(env)?;
                self.reconcile_environment(env, cause).await
            }
            Scope::All => self.reconcile_all(cause).await,
        }
    }

    /// Observes the groups the scope needs; must come before any store read that feeds a plan.
    pub(crate) async fn observe(&self, scope: &Scope) -> Observed {
        let specs: Vec<TargetSpec> = self
            .shared
            .settings
            .specs
            .iter()
            .filter(|s| scope.covers(&s.environment) || s.selector.discovers())
            .cloned()
            .collect();
        let observation = self.firewall.observe(&specs).await;
        let (targets, skipped) = resolve_targets(&observation.groups, &specs, self.policies());
        let targets: Vec<Target> = targets.into_iter().filter(|t| scope.covers(&t.environment)).collect();
        {
            // Forget groups that are gone, except in regions that could not be observed now.
            let failed: BTreeSet<&str> = observation.failures.iter().map(|f| f.region.as_str()).collect();
            let mut known = self.known_targets.lock().expect("target cache poisoned");
            known.retain(|id, (env, _)| !scope.covers(env) || failed.contains(id.region.as_str()));
            for t in &targets {
                known.insert(t.id.clone(), (t.environment.clone(), t.ports.clone()));
            }
        }
        Observed { failures: observation.failures, targets, skipped }
    }

    /// The stored grants a plan may use: those their environment's policy admits. A grant
    /// another writer put in the table past the checks an add makes (the whole internet, a /8,
    /// a year-long TTL) is never applied; it is audited as `refused` once per stored version
    /// and reported by `status`.
    pub(crate) async fn planned_grants(&self, scope: &Scope) -> Result<Vec<Grant>, EngineError> {
        let now = self.clock().now();
        let (admitted, refused) = admit_grants(self.store().grants(scope.environment()).await?, self.policies(), now);
        let new: Vec<RefusedGrant> = {
            // Only refusals this process has not reported yet are audited; the map is the
            // scope's refusals as of now.
            let mut known = self.refused.lock().expect("refusal map poisoned");
            let new = refused.iter().filter(|r| known.get(&r.grant.key()) != Some(*r)).cloned().collect();
            known.retain(|k, _| !scope.covers(&k.environment));
            known.extend(refused.into_iter().map(|r| (r.grant.key(), r)));
            new
        };
        for r in new {
            tracing::warn!(cidr = %r.grant.cidr, environment = %r.grant.environment, reason = %r.reason,
                "a stored grant breaks its environment's policy; it is not applied");
            let version = r.grant.expires_at.map_or(0, |t| t.unix_timestamp());
            let key = format!("policy:{}:{}:{version}:{}", r.grant.environment, r.grant.cidr, r.grant.owner.id);
            let event = AuditEvent {
                id: 0,
                at: now,
                actor: "portcullis".into(),
                interface: Interface::Reconciler,
                action: Action::Refused,
                environment: AuditScope::from(&r.grant.environment),
                cidr: Some(r.grant.cidr),
                before: Some(r.grant.clone()),
                after: None,
                reason: format!("stored grant not applied: {}", r.reason),
                request: None,
            };
            if let Err(err) = self.store().record_once(event, &key).await {
                tracing::warn!(error = %err, "could not audit a refused grant");
            }
        }
        Ok(admitted)
    }

    pub(crate) async fn plan_and_apply(
        &self,
        cause: Cause,
        scope: &Scope,
        observed: Observed,
        additions: Option<&[Grant]>,
    ) -> Result<ReconcileReport, EngineError> {
        let Observed { failures: observe_failures, targets, skipped } = observed;
        let grants = match additions {
            Some(added) => added.to_vec(),
            None => self.planned_grants(scope).await?,
        };
        let history = self.store().environments_with_history().await?;
        let now = self.clock().now();
        let input = PlanInput {
            grants: &grants,
            targets: &targets,
            marker: self.marker(),
            environments_with_history: &history,
            quota: self.quota(),
            now,
        };
        let p: Plan = if additions.is_some() { plan_additions(&input) } else { plan(&input) };
        for w in &p.withheld {
            tracing::warn!(group = %w.target, cidr = %w.rule.ec2_cidr, environment = %w.environment,
                "owned rule left in place: this store has never recorded anything for its environment; \
                 add a grant for it to keep it, or remove the rule by hand");
        }
        for stale in &p.stale_descriptions {
            tracing::warn!(list = %stale.target, cidr = %stale.cidr, wanted = %stale.wanted,
                "prefix-list entry's description left out of date: EC2 changes it only by removing the entry, \
                 which would cut access; remove and add the grant to re-describe it");
        }
        let outcomes = self.apply_all(&p.changes).await;
        let report = ReconcileReport {
            at: now,
            cause,
            targets: targets.len(),
            authorized: p.authorize_count(),
            revoked: p.revoke_count(),
            updated: p.update_count(),
            unchanged: p.unchanged,
            unowned_left_alone: p.foreign.len(),
            changes: p.changes,
            outcomes,
            observe_failures,
            skipped,
            withheld: p.withheld,
            overflows: p.overflows,
            unowned: p.foreign,
            stale_descriptions: p.stale_descriptions,
        };
        if matches!(cause, Cause::Refresh | Cause::Periodic) {
            self.audit_drift(&report, &grants).await;
        }
        *self.last_reconcile.lock().expect("status mutex poisoned") = Some(ReconcileSummary {
            at: now,
            cause,
            ok: !report.failed(),
            authorized: report.authorized,
            revoked: report.revoked,
            updated: report.updated,
            failures: report.failures(),
        });
        Ok(report)
    }

    pub(crate) async fn apply_all(&self, changes: &[GroupChange]) -> Vec<GroupOutcome> {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, change) in changes.iter().enumerate() {
            let (firewall, change) = (self.firewall.clone(), change.clone());
            tasks.spawn(async move { (i, firewall.apply(&change).await) });
        }
        let mut results = BTreeMap::new();
        let total = changes.len();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok((i, result)) => {
                    results.insert(i, result);
                }
                Err(err) => tracing::error!(error = %err, "a firewall task failed"),
            }
            if total > 1 {
                self.progress("security groups changed", total - tasks.len(), total);
            }
        }
        if total > 1 {
            self.progress_done();
        }
        changes
            .iter()
            .enumerate()
            .map(|(i, change)| {
                let result = results.remove(&i).unwrap_or_else(|| {
                    Err(crate::FirewallError::new(crate::ErrorClass::Transient, "the firewall task did not finish"))
                });
                match &result {
                    Ok(applied) => tracing::info!(group = %change.target, authorized = applied.authorized,
                        revoked = applied.revoked, updated = applied.updated, "group changed"),
                    Err(err) => tracing::warn!(group = %change.target, error = %err, "group change failed"),
                }
                GroupOutcome {
                    target: change.target.clone(),
                    environment: change.environment.clone(),
                    applied: result.as_ref().ok().copied(),
                    class: result.as_ref().err().map(|e| e.class),
                    code: result.as_ref().err().and_then(|e| e.code.clone()),
                    error: result.err().map(|e| e.to_string()),
                }
            })
            .collect()
    }

    /// Records `drift-repaired` for each environment whose groups a refresh or periodic run changed.
    /// Closing a lapsed grant's rules is its expiry (the sweeper records and announces it), not a repair.
    async fn audit_drift(&self, report: &ReconcileReport, grants: &[Grant]) {
        let mut per_env: BTreeMap<&Environment, Vec<String>> = BTreeMap::new();
        for (change, outcome) in report.changes.iter().zip(&report.outcomes) {
            // Only what the firewall really changed is a repair (a dry run changes nothing).
            let Some(mut a) = outcome.applied else { continue };
            a.revoked = a.revoked.saturating_sub(portcullis_core::lapsed_revokes(change, grants, report.at));
            if a.authorized + a.revoked + a.updated > 0 {
                per_env.entry(&change.environment).or_default().push(format!(
                    "{}: {} restored, {} removed, {} descriptions updated",
                    change.target, a.authorized, a.revoked, a.updated
                ));
            }
        }
        for (env, parts) in per_env {
            let event = AuditEvent {
                id: 0,
                at: report.at,
                actor: "portcullis".into(),
                interface: Interface::Reconciler,
                action: Action::DriftRepaired,
                environment: AuditScope::from(env),
                cidr: None,
                before: None,
                after: None,
                reason: parts.join("; "),
                request: None,
            };
            match self.store().record(event).await {
                Ok(()) => self.announce(),
                Err(err) => tracing::warn!(error = %err, "could not audit a drift repair"),
            }
        }
    }
}
