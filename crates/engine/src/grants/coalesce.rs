//! Coalesced applies: every change to one environment goes through one apply at a time, and
//! what arrives while an apply is in flight is carried by the next one.
//!
//! Each environment has a [`Slot`]: a gate (an async mutex) that one apply at a time holds,
//! a queue of adds waiting for an apply, and a counter of reconcile requests. Whoever takes the
//! gate is the leader for everything queued by then:
//!
//! 1. it observes the environment's groups (one describe per region);
//! 2. it checks each queued add against the groups' quotas, with the adds accepted before it
//!    counted, and stores those that fit (the store is written before the firewall is touched);
//! 3. it plans and applies once (per group at most one Authorize, one Revoke and one
//!    description update), and hands every queued caller its own outcome. A run that carries
//!    only adds (no reconcile request waits) plans their rules alone from the observation
//!    (`core::plan_additions`), so its cost does not grow with the store; any other run reads
//!    the store and plans the whole environment.
//!
//! A reconcile request takes a ticket before it waits; a run that started after the ticket was
//! taken read the store after the request's own write, so a `Change` request whose ticket a
//! finished run covers takes that run's report instead of running again.
//!
//! Across processes (replicas, the CLI beside `serve`, Lambda invocations) the gate's holder
//! also takes the environment's apply lease before it observes (`apply_lock`), and a batch
//! that lost to a concurrent writer anyway is observed again and planned anew.
//!
//! The batching window is [`BATCH_WINDOW`] (20 ms) at the start of a `Change` run, and then
//! the apply in flight: a burst of changes that arrive within 20 ms is one apply, and what
//! arrives during it is the next. A lone change waits 20 ms, a small price next to the EC2
//! calls it makes.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use portcullis_core::{Environment, Grant, PlanInput, Policy, Target, plan, plan_additions};
use portcullis_store::StoreError;
use tokio::sync::oneshot;

use crate::{AddOutcome, Cause, EngineError, Grants, ReconcileReport, Requester, Scope};
use portcullis_core::PolicyRefusal;

/// How long a `Change` run waits for other changes before it observes.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(20);

/// One environment's applies.
#[derive(Default)]
pub(crate) struct Slot {
    gate: tokio::sync::Mutex<Runs>,
    /// Reconcile requests so far; a run covers every ticket up to the count it read at its start.
    requested: AtomicU64,
    adds: Mutex<Vec<PendingAdd>>,
}

/// What the runs through a slot have done.
#[derive(Default)]
pub(crate) struct Runs {
    /// The highest ticket a finished `Change` run covers, and its report.
    completed: u64,
    last: Option<ReconcileReport>,
}

/// An add waiting for the next apply of its environment.
struct PendingAdd {
    grant: Grant,
    by: Requester,
    policy: Policy,
    reply: oneshot::Sender<Result<AddOutcome, EngineError>>,
}

/// The engine's slots, one per environment, made on first use.
#[derive(Default)]
pub(crate) struct Slots(Mutex<BTreeMap<Environment, Arc<Slot>>>);

impl Slots {
    fn get(&self, env: &Environment) -> Arc<Slot> {
        let mut slots = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        slots.entry(env.clone()).or_default().clone()
    }
}

/// An error for each of several callers a failed run answers.
fn shared(err: &EngineError) -> EngineError {
    match err {
        EngineError::Rejected(v) => EngineError::Rejected(v.clone()),
        EngineError::Store(s) => EngineError::Store(StoreError::Remote { location: "store".into(), message: s.to_string() }),
        EngineError::Firewall(f) => EngineError::Firewall(f.clone()),
    }
}

impl Grants {
    /// Queues an add for its environment's next apply and waits for its own outcome.
    ///
    /// A leader whose caller went away (a client that hung up) is cancelled mid-run and drops
    /// the adds it had taken; each of their callers finds its answer gone and queues its add
    /// again (storing it twice is a refresh), so no add is lost to someone else's cancellation.
    pub(crate) async fn add_coalesced(&self, grant: Grant, by: Requester, policy: Policy) -> Result<AddOutcome, EngineError> {
        use tokio::sync::oneshot::error::TryRecvError;
        let env = grant.environment.clone();
        let slot = self.slots.get(&env);
        for _ in 0..3 {
            let (reply, mut rx) = oneshot::channel();
            let add = PendingAdd { grant: grant.clone(), by: by.clone(), policy: policy.clone(), reply };
            slot.adds.lock().unwrap_or_else(PoisonError::into_inner).push(add);
            let mut runs = slot.gate.lock().await;
            // A leader before us may have carried this add already (or dropped it).
            match rx.try_recv() {
                Ok(outcome) => return outcome,
                Err(TryRecvError::Closed) => continue,
                Err(TryRecvError::Empty) => {}
            }
            if let Err(err) = self.run(&env, &slot, &mut runs, Cause::Change).await {
                tracing::warn!(environment = %env, error = %err, "an apply failed");
            }
            match rx.try_recv() {
                Ok(outcome) => return outcome,
                Err(_) => continue,
            }
        }
        Err(EngineError::Store(StoreError::Task("the applies carrying this add were cancelled three times".into())))
    }

    /// A reconcile of one environment, through its slot (see the module docs).
    pub(crate) async fn reconcile_environment(&self, env: &Environment, cause: Cause) -> Result<ReconcileReport, EngineError> {
        let slot = self.slots.get(env);
        let ticket = slot.requested.fetch_add(1, Ordering::SeqCst) + 1;
        let mut runs = slot.gate.lock().await;
        if cause == Cause::Change
            && runs.completed >= ticket
            && let Some(report) = &runs.last
        {
            return Ok(report.clone());
        }
        self.run(env, &slot, &mut runs, cause).await
    }

    /// A reconcile of every environment, holding every environment's gate (in order, so two
    /// such runs cannot deadlock), so no apply of one environment runs beside it.
    pub(crate) async fn reconcile_all(&self, cause: Cause) -> Result<ReconcileReport, EngineError> {
        let slots: Vec<Arc<Slot>> = self.policies().keys().map(|env| self.slots.get(env)).collect();
        let mut gates = Vec::with_capacity(slots.len());
        for slot in &slots {
            gates.push(slot.gate.lock().await);
        }
        let lock = self.lock_applies(self.policies().keys()).await;
        let started = std::time::Instant::now();
        let observed = self.observe(&Scope::All).await;
        let result = self.apply_rounds(cause, &Scope::All, observed, None).await;
        self.shared.metrics.reconciled(cause, started, &result);
        lock.release().await;
        result
    }

    /// One apply of `env` by the gate's holder: everything queued so far, then one plan.
    async fn run(&self, env: &Environment, slot: &Slot, runs: &mut Runs, cause: Cause) -> Result<ReconcileReport, EngineError> {
        if cause == Cause::Change {
            // A batching window in monotonic time: it decides nothing that is stored or audited.
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        let covered = slot.requested.load(Ordering::SeqCst);
        // Another process's apply of this environment ends before ours observes (see `apply_lock`).
        let lock = self.lock_applies([env]).await;
        let pending = std::mem::take(&mut *slot.adds.lock().unwrap_or_else(PoisonError::into_inner));
        // Only adds to carry (no reconcile request waits): plan their rules alone, from the
        // observation, without reading the environment's other grants (`plan_additions`).
        let additive = cause == Cause::Change && covered <= runs.completed && !pending.is_empty();
        let scope = Scope::Environment(env.clone());
        let started = std::time::Instant::now();
        let applied = async {
            let observed = self.observe(&scope).await;
            let accepted = self.store_pending(&scope, &observed, pending, additive).await?;
            let added: Vec<Grant> = accepted.iter().map(|(_, u)| u.grant.clone()).collect();
            let result = self.apply_rounds(cause, &scope, observed, additive.then_some(added.as_slice())).await;
            Ok::<_, EngineError>((accepted, result))
        };
        let applied = applied.await;
        lock.release().await;
        let (accepted, result) = applied?;
        self.shared.metrics.reconciled(cause, started, &result);
        match &result {
            Ok(report) => {
                for (reply, upserted) in accepted {
                    let outcome = AddOutcome {
                        grant: upserted.grant,
                        refreshed: upserted.previous.is_some(),
                        report: Some(report.clone()),
                    };
                    let _ = reply.send(Ok(outcome));
                }
                if cause == Cause::Change {
                    runs.completed = covered;
                    runs.last = Some(report.clone());
                }
            }
            Err(err) => {
                for (reply, _) in accepted {
                    let _ = reply.send(Err(shared(err)));
                }
            }
        }
        result
    }

    /// Plans and applies from `observed`, then, while the error policy says another round may
    /// cure what failed (`error_policy`), observes again and plans anew: at once after a
    /// concurrent writer's change, after a jittered backoff after throttling or a timeout.
    async fn apply_rounds(
        &self,
        cause: Cause,
        scope: &Scope,
        observed: crate::grants::Observed,
        additions: Option<&[Grant]>,
    ) -> Result<ReconcileReport, EngineError> {
        let mut report = self.plan_and_apply(cause, scope, observed, additions).await?;
        let mut round = 0;
        while let Some(pause) = crate::next_round(&report, round) {
            tracing::info!(scope = ?scope, round, pause = ?pause, failures = %crate::Failure::joined(&report.failures()),
                "an apply failed in a way another round may cure; observing again");
            // Pacing in monotonic time, like the batching window: nothing stored depends on it.
            tokio::time::sleep(pause).await;
            round += 1;
            let observed = self.observe(scope).await;
            let earlier = std::mem::replace(&mut report, self.plan_and_apply(cause, scope, observed, additions).await?);
            report.carry(&earlier);
        }
        Ok(report)
    }

    /// Checks each queued add against the quotas (with the adds accepted before it counted) and
    /// stores those that fit; a refusal or a failure answers its own caller at once. `additive`:
    /// the check counts the batch's rules on the groups as observed, reading no other grant.
    async fn store_pending(
        &self,
        scope: &Scope,
        observed: &crate::grants::Observed,
        pending: Vec<PendingAdd>,
        additive: bool,
    ) -> Result<Vec<(oneshot::Sender<Result<AddOutcome, EngineError>>, portcullis_store::Upserted)>, EngineError> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let read = async {
            let grants = if additive { Vec::new() } else { self.planned_grants(scope).await? };
            Ok::<_, EngineError>((self.store().environments_with_history().await?, grants))
        };
        let (history, mut grants) = match read.await {
            Ok(read) => read,
            Err(err) => {
                for p in pending {
                    let _ = p.reply.send(Err(shared(&err)));
                }
                return Err(err);
            }
        };
        let mut accepted = Vec::new();
        for p in pending {
            let before = grants.clone();
            grants.retain(|g| g.key() != p.grant.key());
            grants.push(p.grant.clone());
            let refusal = self
                .family_refusal(&p.grant, observed)
                .or_else(|| self.quota_refusal(&p.grant, &grants, &observed.targets, &history, additive));
            if let Some(err) = refusal {
                grants = before;
                let refused = self.refuse(err, &p.grant.environment, Some(&p.grant.cidr), &p.by.refused_actor()).await;
                let _ = p.reply.send(Err(refused));
                continue;
            }
            match self.store_grant(p.grant, &p.by, &p.policy).await {
                Ok(upserted) => accepted.push((p.reply, upserted)),
                Err(err) => {
                    grants = before;
                    let _ = p.reply.send(Err(err));
                }
            }
        }
        Ok(accepted)
    }
}

/// Why an add is refused once the firewall is observed: its family is taken by no target, or
/// a target would be past its quota.
impl Grants {
    pub(crate) fn quota_refusal(
        &self,
        grant: &Grant,
        grants: &[Grant],
        targets: &[Target],
        history: &BTreeSet<Environment>,
        additive: bool,
    ) -> Option<PolicyRefusal> {
        let input = PlanInput {
            grants,
            targets,
            marker: self.marker(),
            environments_with_history: history,
            quota: self.quota(),
            now: self.clock().now(),
        };
        let p = if additive { plan_additions(&input) } else { plan(&input) };
        p.overflows.iter().filter(|o| o.family == grant.cidr.family()).find_map(|o| {
            let target = targets.iter().find(|t| t.id == o.target)?;
            let missing =
                target.ports.iter().any(|ports| !target.rules.iter().any(|r| r.cidr == grant.cidr && r.ports == *ports));
            missing.then(|| match target.list {
                Some(_) => PolicyRefusal::ListFull {
                    list: o.target.group_id.clone(),
                    region: o.target.region.clone(),
                    family: o.family,
                    entries: o.would_hold,
                    max_entries: o.quota,
                },
                None => PolicyRefusal::GroupFull {
                    group: o.target.group_id.clone(),
                    region: o.target.region.clone(),
                    family: o.family,
                    would_hold: o.would_hold,
                    quota: o.quota,
                },
            })
        })
    }

    /// A grant whose address family none of its environment's targets takes (its only
    /// targets are prefix lists of the other family) would be stored and reach nothing: it is
    /// refused. Only when every region was observed: one that failed may hold a taker.
    pub(crate) fn family_refusal(&self, grant: &Grant, observed: &crate::grants::Observed) -> Option<PolicyRefusal> {
        let targets: Vec<&Target> = observed.targets.iter().filter(|t| t.environment == grant.environment).collect();
        let family = grant.cidr.family();
        if targets.is_empty() || !observed.failures.is_empty() || targets.iter().any(|t| t.takes(family)) {
            return None;
        }
        let lists: Vec<String> =
            targets.iter().filter_map(|t| t.list.map(|l| format!("{} ({}, {})", t.id.group_id, t.id.region, l.family))).collect();
        Some(PolicyRefusal::FamilyNotTaken {
            cidr: grant.cidr.to_string(),
            environment: grant.environment.to_string(),
            family,
            lists: lists.join(", "),
        })
    }
}
