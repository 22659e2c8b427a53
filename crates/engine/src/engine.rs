//! The engine: what a process runs, composed by one builder from its components over the
//! shared clients. Three controllers, as kube-runtime keeps them apart: the grants controller
//! ([`Grants`], always), guard ([`Guard`], with `[guard]` and a live firewall), members
//! ([`Members`], with Auto Scaling groups). What spans them is here: the sweep (grants' and
//! timed rules' expiries), the long-running loops, the status and the gauges.

use std::sync::{Arc, Mutex};

use portcullis_core::{Interface, MemberSource};
use portcullis_store::{GuardStore, Store};
use tokio::sync::{Notify, watch};

use crate::grants::Grants;
use crate::guard::GuardSettings;
use crate::shared::Shared;
use crate::{
    Cause, Clock, EngineError, Firewall, Gauges, Guard, GuardError, GuardFirewall, Lease, MemberEvent, MemberOutcome, Members,
    Membership, Metrics, Outbox, Progress, Requester, Scope, Settings, Status, SweepReport,
};

/// A process's engine: the grants controller, and guard and members where configured.
pub struct Engine {
    grants: Arc<Grants>,
    guard: Option<Guard>,
    members: Option<Members>,
    /// The gauges as last read, when, and at which change count (`gauges`).
    gauges: Mutex<Option<(std::time::Instant, u64, Gauges)>>,
}

/// Composes an [`Engine`]: the shared clients, then each component a process runs.
pub struct EngineBuilder {
    store: Arc<dyn Store>,
    firewall: Arc<dyn Firewall>,
    clock: Arc<dyn Clock>,
    settings: Settings,
    outbox: Option<Arc<Outbox>>,
    lease: Option<Arc<Lease>>,
    progress: Option<Arc<dyn Progress>>,
    guard: Option<(GuardSettings, Arc<dyn GuardFirewall>)>,
    members: Option<(Vec<MemberSource>, time::Duration, Arc<dyn Membership>)>,
    guard_store: Option<Arc<dyn GuardStore>>,
}

impl EngineBuilder {
    /// Announces what the engine stores through `outbox` (it is woken after every change).
    pub fn outbox(mut self, outbox: Arc<Outbox>) -> EngineBuilder {
        self.outbox = Some(outbox);
        self
    }

    /// Runs the sweeper and the periodic loops only while `lease` is held.
    pub fn lease(mut self, lease: Arc<Lease>) -> EngineBuilder {
        self.lease = Some(lease);
        self
    }

    /// Tells `progress` how operations over many groups advance.
    pub fn progress(mut self, progress: Arc<dyn Progress>) -> EngineBuilder {
        self.progress = Some(progress);
        self
    }

    /// Runs guard, over `firewall`.
    pub fn guard(mut self, settings: GuardSettings, firewall: Arc<dyn GuardFirewall>) -> EngineBuilder {
        self.guard = Some((settings, firewall));
        self
    }

    /// Keeps guard's requests, baselines and ledger in `store` instead of the engine's store
    /// (a store that records or paces guard's part, as the decision race test does).
    pub fn guard_store(mut self, store: Arc<dyn GuardStore>) -> EngineBuilder {
        self.guard_store = Some(store);
        self
    }

    /// Admits the members of these Auto Scaling groups (none: no member component).
    pub fn members(
        mut self,
        sources: Vec<MemberSource>,
        member_ttl: time::Duration,
        membership: Arc<dyn Membership>,
    ) -> EngineBuilder {
        if !sources.is_empty() {
            self.members = Some((sources, member_ttl, membership));
        }
        self
    }

    pub fn build(self) -> Engine {
        let shared = Arc::new(Shared {
            store: self.store,
            clock: self.clock,
            settings: self.settings,
            outbox: self.outbox,
            wake_sweeper: Notify::new(),
            changes: Default::default(),
            metrics: Metrics::default(),
            progress: self.progress.map(std::sync::OnceLock::from).unwrap_or_default(),
        });
        let grants = Arc::new(Grants::new(shared.clone(), self.firewall, self.lease));
        let guard_store = self.guard_store.unwrap_or_else(|| shared.store.clone());
        let guard =
            self.guard.map(|(settings, firewall)| Guard::new(shared.clone(), grants.clone(), guard_store, settings, firewall));
        let members =
            self.members.map(|(sources, ttl, membership)| Members::new(shared, grants.clone(), sources, ttl, membership));
        Engine { grants, guard, members, gauges: Mutex::new(None) }
    }
}

impl Engine {
    /// The builder of an engine over these clients.
    pub fn builder(
        store: Arc<dyn Store>,
        firewall: Arc<dyn Firewall>,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> EngineBuilder {
        EngineBuilder {
            store,
            firewall,
            clock,
            settings,
            outbox: None,
            lease: None,
            progress: None,
            guard: None,
            members: None,
            guard_store: None,
        }
    }

    /// Tells `progress` how operations over many groups advance (the first one given stays).
    pub fn with_progress(self, progress: Arc<dyn Progress>) -> Engine {
        let _ = self.grants.shared.progress.set(progress);
        self
    }

    /// An engine of the grants controller alone over these clients (tests and benchmarks).
    pub fn new(store: Arc<dyn Store>, firewall: Arc<dyn Firewall>, clock: Arc<dyn Clock>, settings: Settings) -> Engine {
        Engine::builder(store, firewall, clock, settings).build()
    }

    /// The grants controller: adds, removes, reconciles, queries.
    pub fn grants(&self) -> &Grants {
        &self.grants
    }

    /// Guard, or why there is none here.
    pub fn guard(&self) -> Result<&Guard, GuardError> {
        self.guard.as_ref().ok_or(GuardError::NotConfigured)
    }

    /// Guard, where configured.
    pub fn guarding(&self) -> Option<&Guard> {
        self.guard.as_ref()
    }

    /// The members component, where Auto Scaling groups are configured.
    pub fn members(&self) -> Option<&Members> {
        self.members.as_ref()
    }

    pub fn clock(&self) -> &Arc<dyn Clock> {
        self.grants.clock()
    }

    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        self.grants.shared.outbox.as_ref()
    }

    pub fn lease(&self) -> Option<&Arc<Lease>> {
        self.grants.lease()
    }

    /// The engine's metrics, for a registry to expose.
    pub fn metrics(&self) -> &Metrics {
        &self.grants.shared.metrics
    }

    /// Handles an Auto Scaling event; without Auto Scaling groups configured it is ignored,
    /// and the outcome says why.
    pub async fn member_event(&self, event: MemberEvent, interface: Interface) -> Result<MemberOutcome, EngineError> {
        match &self.members {
            Some(members) => members.event(event, interface).await,
            None => Ok(MemberOutcome::ignored("no environment lists Auto Scaling groups ([[environments.X.members]])".into())),
        }
    }

    /// Revokes and records every expired grant (`Grants::sweep_grants`) and, with guard, every
    /// timed rule whose term ended.
    pub async fn sweep(&self) -> Result<SweepReport, EngineError> {
        let now = self.clock().now();
        let timed_rules = match &self.guard {
            Some(guard) if guard.next_timed_expiry().await?.is_some_and(|at| at <= now) => Some(guard.timed_rules_of().await?),
            _ => None,
        };
        let mut report = self.grants.sweep_grants().await?;
        report.timed_rules = timed_rules;
        Ok(report)
    }

    /// Sleeps until the earliest expiry (a grant's, or a timed rule's) and sweeps it, until
    /// shut down. Woken at once by this process's changes; notices other processes' within a
    /// second.
    pub async fn run_sweeper(&self, mut shutdown: watch::Receiver<bool>) {
        let poll = time::Duration::seconds(1);
        // Sweeps in a row that left something expired unrevoked.
        let mut failures = 0;
        loop {
            if !self.grants.lead(&mut shutdown).await {
                return;
            }
            let now = self.clock().now();
            let next = match self.grants.next_expiry().await {
                Ok(next) => next,
                Err(err) => {
                    tracing::warn!(error = %err, "sweeper could not read the next expiry");
                    None
                }
            };
            let next = match &self.guard {
                Some(guard) => match guard.next_timed_expiry().await {
                    Ok(rule) => next.into_iter().chain(rule).min(),
                    Err(err) => {
                        tracing::warn!(error = %err, "sweeper could not read the next timed rule's expiry");
                        next
                    }
                },
                None => next,
            };
            if next.is_some_and(|at| at <= now) {
                let retry = match self.sweep().await {
                    Ok(report) => {
                        !report.retrying.is_empty() || report.timed_rules.as_ref().is_some_and(|r| !r.failures.is_empty())
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "sweep failed; retrying");
                        true
                    }
                };
                if retry {
                    let pause = retry_pause(failures);
                    failures += 1;
                    tokio::select! {
                        _ = self.clock().sleep_until(now + pause) => {}
                        _ = shutdown.changed() => return,
                    }
                } else {
                    failures = 0;
                }
                continue;
            }
            failures = 0;
            let deadline = next.map_or(now + poll, |at| at.min(now + poll));
            tokio::select! {
                _ = self.clock().sleep_until(deadline) => {}
                _ = self.grants.shared.wake_sweeper.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Reconciles every environment (and, with guard, sweeps every guarded group) now and then
    /// every `interval`, until shut down.
    pub async fn run_reconciler(&self, interval: time::Duration, mut shutdown: watch::Receiver<bool>) {
        loop {
            if !self.grants.lead(&mut shutdown).await {
                return;
            }
            match self.grants.reconcile(Scope::All, Cause::Periodic).await {
                Ok(report) if report.failed() => {
                    tracing::warn!(failures = %crate::Failure::joined(&report.failures()), "periodic reconcile left failures; will retry")
                }
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "periodic reconcile failed; will retry"),
            }
            if let Some(guard) = &self.guard {
                match guard.sweep().await {
                    Ok(report) if !report.failures.is_empty() => {
                        tracing::warn!(failures = %crate::Failure::joined(&report.failures), "guard sweep left failures; will retry")
                    }
                    Ok(_) => {}
                    Err(err) => tracing::warn!(error = %err, "guard sweep failed; will retry"),
                }
            }
            let next = self.clock().now() + interval;
            tokio::select! {
                _ = self.clock().sleep_until(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// True-ups of every configured ASG, every `interval`, while this process holds the
    /// sweeper lease (so one replica does it); returns at once when no ASG is configured.
    pub async fn run_member_sync(&self, interval: time::Duration, mut shutdown: watch::Receiver<bool>) {
        let Some(members) = &self.members else { return };
        loop {
            if !self.grants.lead(&mut shutdown).await {
                return;
            }
            let true_up = MemberEvent::TrueUp { asg: None, region: None };
            match members.event(true_up, Interface::Reconciler).await {
                Ok(outcome) if !outcome.failures.is_empty() => {
                    tracing::warn!(failures = %crate::Failure::joined(&outcome.failures), "member true-up left failures; will retry")
                }
                Ok(outcome) => tracing::info!(granted = outcome.granted.len(), removed = outcome.removed.len(), "member true-up"),
                Err(err) => tracing::warn!(error = %err, "member true-up failed; will retry"),
            }
            let next = self.clock().now() + interval;
            tokio::select! {
                _ = self.clock().sleep_until(next) => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// The process's health: the grants controller's, and guard's terms.
    pub async fn status(&self, by: &Requester) -> Result<Status, EngineError> {
        let mut status = self.grants.status(by).await?;
        if let Some(guard) = &self.guard {
            status.temporary_approval = Some(crate::grants::term(guard.temporary_approval()));
            status.break_glass_ttl = guard.break_glass_ttl().map(crate::grants::term);
        }
        Ok(status)
    }

    /// What the gauges of `/metrics` show: live grants by environment and source, the outbox's
    /// backlog, the sweeper lease, guard's pending requests. Store reads are reused for
    /// [`crate::GAUGES_MAX_AGE`] unless this process stored a change since (another process's
    /// changes show within that time).
    pub async fn gauges(&self) -> Result<Gauges, EngineError> {
        use std::sync::atomic::Ordering;
        let lease_held = self.lease().map(|l| l.is_held());
        let changes = self.grants.shared.changes.load(Ordering::Relaxed);
        if let Some((at, seen, gauges)) = &*self.gauges.lock().expect("gauge cache poisoned")
            && *seen == changes
            && at.elapsed() < crate::GAUGES_MAX_AGE
        {
            return Ok(Gauges { lease_held, ..gauges.clone() });
        }
        let mut gauges = self.grants.gauges().await?;
        gauges.lease_held = lease_held;
        if let Some(guard) = &self.guard {
            gauges.pending_requests = guard.pending().await?;
        }
        *self.gauges.lock().expect("gauge cache poisoned") = Some((std::time::Instant::now(), changes, gauges.clone()));
        Ok(gauges)
    }
}

/// The pause before the sweeper's retry after `failures` sweeps in a row left a grant
/// unrevoked: 200 ms doubling to 5 s, jittered down by up to half (the first within a second).
fn retry_pause(failures: u32) -> time::Duration {
    let base = (200u64 << failures.min(5)).min(5_000);
    time::Duration::milliseconds(crate::jitter_down(base) as i64)
}
