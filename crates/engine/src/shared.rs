//! What the engine's components share: the store, the clock, the settings, the outbox that
//! announces what they store, the sweeper's wake-up, the metrics, and where progress is told.
//! Each component (grants, guard, members) holds it; none holds another's state.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use portcullis_core::{Environment, Marker, NotFound, Policy, RuleQuota, TargetSpec, policy_for};
use portcullis_store::Store;
use tokio::sync::Notify;

use crate::{Clock, Metrics, Outbox, Progress};

/// What the engine is configured with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub specs: Vec<TargetSpec>,
    pub policies: BTreeMap<Environment, Policy>,
    pub marker: Marker,
    pub quota: RuleQuota,
}

/// The clients and state every component uses.
pub(crate) struct Shared {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) settings: Settings,
    pub(crate) outbox: Option<Arc<Outbox>>,
    /// Woken by every change that may bring an expiry nearer.
    pub(crate) wake_sweeper: Notify,
    /// Bumped by every change this process stores, so gauges read before are not reused.
    pub(crate) changes: AtomicU64,
    pub(crate) metrics: Metrics,
    /// Where progress over many groups is told, if anywhere (a terminal): set once.
    pub(crate) progress: std::sync::OnceLock<Arc<dyn Progress>>,
}

impl Shared {
    pub(crate) fn marker(&self) -> &Marker {
        &self.settings.marker
    }

    pub(crate) fn quota(&self) -> RuleQuota {
        self.settings.quota
    }

    pub(crate) fn specs(&self) -> &[TargetSpec] {
        &self.settings.specs
    }

    pub(crate) fn policies(&self) -> &BTreeMap<Environment, Policy> {
        &self.settings.policies
    }

    /// The policy of a known environment.
    pub(crate) fn policy(&self, env: &Environment) -> Result<&Policy, NotFound> {
        policy_for(&self.settings.policies, env)
    }

    /// Tells the outbox that announcements may be waiting (every stored change calls it, so it
    /// also marks the gauges as stale).
    pub(crate) fn announce(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
        if let Some(outbox) = &self.outbox {
            outbox.wake();
        }
    }

    /// Reports `done` of `total` steps of `what`, when someone listens.
    pub(crate) fn progress(&self, what: &'static str, done: usize, total: usize) {
        if let Some(p) = self.progress.get() {
            p.update(what, done, total);
        }
    }

    /// Ends what `progress` drew.
    pub(crate) fn progress_done(&self) {
        if let Some(p) = self.progress.get() {
            p.finish();
        }
    }
}
