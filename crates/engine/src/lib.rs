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
#[cfg(feature = "test-support")]
mod faults;
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

#[cfg(feature = "test-support")]
pub use clock::TokioClock;
pub use clock::{Clock, ManualClock, SystemClock};
pub use dry_run::DryRunFirewall;
pub use engine::{Engine, EngineBuilder};
pub use error::EngineError;
pub use error_policy::{ErrorClass, ROUNDS, next_round};
#[cfg(feature = "test-support")]
pub use faults::{Fault, FaultyFirewall};
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
    /// The service's error code, when it answered with one (see `error_policy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
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

/// A firewall call that failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct FirewallError {
    /// The service's error code, when it gave one (e.g. `RulesPerSecurityGroupLimitExceeded`).
    pub code: Option<String>,
    pub message: String,
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
