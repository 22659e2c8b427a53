//! Effects behind small traits ([`Firewall`], [`Clock`], [`Notifier`]; the store's is in
//! `portcullis-store`) and the loops that drive them: apply a change, reconcile, sweep expiries,
//! deliver announcements from the outbox.
//!
//! Ordering rules live here: a change is written to the store before the firewall is touched,
//! and a reconcile observes the firewall before it reads the store.

mod clock;
mod dry_run;
mod engine;
mod error;
mod error_policy;
mod failure;
#[cfg(feature = "test-support")]
mod faults;
#[cfg(feature = "test-support")]
mod faulty_guard;
mod grants;
mod guard;
mod lease;
mod members;
#[cfg(feature = "test-support")]
mod memory;
#[cfg(feature = "test-support")]
mod memory_guard;
mod metrics;
mod outbox;
mod progress;
mod report;
mod shared;

use async_trait::async_trait;
use portcullis_core::{GroupChange, ObservedGroup, TargetSpec};
use serde::Serialize;
use thiserror::Error;

pub use clock::{Clock, SystemClock};
#[cfg(feature = "test-support")]
pub use clock::{ManualClock, TokioClock};
pub use dry_run::DryRunFirewall;
pub use engine::{Engine, EngineBuilder};
pub use error::EngineError;
pub use error_policy::{ErrorClass, ROUNDS, next_round};
pub use failure::{Failure, FailureKind, Subject};
#[cfg(feature = "test-support")]
pub use faults::{Fault, FaultyFirewall};
#[cfg(feature = "test-support")]
pub use faulty_guard::{FaultyGuard, GuardCall, GuardFault};
pub use grants::{
    APPLY_LEASE, APPLY_LOCK_WAIT, AddRequest, AuditQuery, BATCH_WINDOW, Cause, GAUGES_MAX_AGE, Grants, Requester, Scope,
    StreamOutcome, apply_lease_name,
};
pub use guard::{
    Apply, BaselineReport, DecisionOutcome, Guard, GuardError, GuardEvent, GuardFirewall, GuardOutcome, GuardSettings,
    GuardSweepReport, OwnIdentity, TimedRuleReport,
};
pub use lease::{Lease, SWEEPER_LEASE};
pub use members::{
    DEFAULT_MEMBER_TTL, HeldAddress, LifecycleAction, LifecycleResult, MemberEvent, MemberOutcome, Members, Membership,
    MembershipError, SkippedMember, region_holds,
};
#[cfg(feature = "test-support")]
pub use memory::{Effect, HeldFirewall, MemoryFirewall, MemoryMembership, REFUSED_VERSION, RecordedCall};
#[cfg(feature = "test-support")]
pub use memory_guard::{HandChange, MEMORY_ACCOUNT};
pub use metrics::{Gauges, Metrics, ReconcileLabels};
pub use outbox::{FlushReport, LogNotifier, Notifier, NotifyError, Outbox, Pacing};
pub use progress::Progress;
pub use report::{AddOutcome, AdoptReport, GroupOutcome, ReconcileReport, ReconcileSummary, RemoveOutcome, Status, SweepReport};
pub use shared::Settings;

/// `value` less a random part of up to half of it: spreads retries that would otherwise fire
/// together. (Monotonic pacing only; nothing audited depends on it.)
pub(crate) fn jitter_down(value: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // RandomState draws fresh keys from a per-thread counter seeded by the OS.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    value - value / 2 * (random % 1024) / 1024
}

/// What one describe pass saw.
#[derive(Debug, Clone, Default)]
pub struct Observation {
    pub groups: Vec<ObservedGroup>,
    /// Regions (or explicit groups) that could not be described.
    pub failures: Vec<ObserveFailure>,
}

/// A region or group that could not be observed, and why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObserveFailure {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    pub error: String,
    /// What kind of failure it was (the firewall adapter's classification of the service's code).
    pub class: ErrorClass,
    /// The service's error code, when it answered with one (shown, never matched).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

impl ObserveFailure {
    /// `region` (or, with `group_id`, that group) could not be described, for `err`.
    pub fn new(region: impl Into<String>, group_id: Option<String>, err: FirewallError) -> ObserveFailure {
        ObserveFailure { region: region.into(), group_id, error: err.message, class: err.class, code: err.code }
    }
}

/// What one group's change did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub authorized: usize,
    pub revoked: usize,
    pub updated: usize,
    /// Rules the firewall already had (Duplicate) or had already lost (NotFound).
    pub already_done: usize,
}

/// A firewall call that failed: its class (which the engine's error policy acts on, and which
/// the adapter that made the call decides from the service's answer), and its words.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct FirewallError {
    pub class: ErrorClass,
    /// The service's error code, when it gave one: carried to reports and logs, never matched
    /// outside the adapter.
    pub code: Option<String>,
    pub message: String,
}

impl FirewallError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> FirewallError {
        FirewallError { class, code: None, message: message.into() }
    }

    /// The same failure, naming the service's error code.
    pub fn with_code(self, code: impl Into<String>) -> FirewallError {
        FirewallError { code: Some(code.into()), ..self }
    }
}

/// Security groups: observe them, change them.
#[async_trait]
pub trait Firewall: Send + Sync {
    /// Describes every group the specs select, with their inbound rules: one describe per region.
    async fn observe(&self, specs: &[TargetSpec]) -> Observation;

    /// Applies one group's change: at most one authorize, one revoke and one description
    /// update call, each carrying every rule of its kind.
    async fn apply(&self, change: &GroupChange) -> Result<Applied, FirewallError>;
}
