//! What the engine's operations report: plain data, serialised as the interfaces answer it.

use portcullis_core::{
    Environment, Foreign, Grant, GroupChange, Overflow, RefusedGrant, SkippedGroup, StaleDescription, TargetId, Timestamp,
    Withheld,
};
use serde::Serialize;

use crate::{Applied, Cause, Failure, FailureKind, ObserveFailure, Subject};

/// One group's result in a reconcile.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct GroupOutcome {
    pub target: TargetId,
    pub environment: Environment,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied: Option<Applied>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What kind of failure `error` is (see `error_policy`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<crate::ErrorClass>,
    /// The firewall's error code, when it gave one (`RulesPerSecurityGroupLimitExceeded`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// What a reconcile saw, decided and did.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileReport {
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub cause: Cause,
    pub targets: usize,
    pub authorized: usize,
    pub revoked: usize,
    pub updated: usize,
    pub unchanged: usize,
    /// Rules on managed groups that are not ours: reported, never touched.
    pub unowned_left_alone: usize,
    pub changes: Vec<GroupChange>,
    pub outcomes: Vec<GroupOutcome>,
    pub observe_failures: Vec<ObserveFailure>,
    pub skipped: Vec<SkippedGroup>,
    pub withheld: Vec<Withheld>,
    pub overflows: Vec<Overflow>,
    pub unowned: Vec<Foreign>,
    /// Prefix-list entries of ours whose description is out of date, left as they are rather
    /// than removed and added again (which would cut access in between).
    pub stale_descriptions: Vec<StaleDescription>,
}

impl ReconcileReport {
    /// True when some group or region could not be brought to the desired state.
    pub fn failed(&self) -> bool {
        self.failed_to_apply() || !self.overflows.is_empty()
    }

    /// True when a region could not be observed or a group's change failed (an overflow is a
    /// refusal the next change does not cure, so it is not counted here).
    pub fn failed_to_apply(&self) -> bool {
        !self.observe_failures.is_empty() || self.outcomes.iter().any(|o| o.error.is_some())
    }

    /// Takes in what an earlier round of the same apply did (`error_policy`): a group that
    /// round changed keeps its changes in this report, so a caller is told its rule was
    /// authorized, not that its group was unchanged, when a retry for another group followed.
    pub fn carry(&mut self, earlier: &ReconcileReport) {
        for before in earlier.outcomes.iter().filter(|o| o.error.is_none()) {
            let Some(done) = before.applied else { continue };
            self.authorized += done.authorized;
            self.revoked += done.revoked;
            self.updated += done.updated;
            match self.outcomes.iter_mut().find(|o| o.target == before.target) {
                Some(now) => {
                    if let Some(applied) = &mut now.applied {
                        applied.authorized += done.authorized;
                        applied.revoked += done.revoked;
                        applied.updated += done.updated;
                    }
                }
                None => self.outcomes.push(before.clone()),
            }
        }
    }

    /// Every failure: regions and groups that could not be described, changes that failed,
    /// and changes refused for the quota.
    pub fn failures(&self) -> Vec<Failure> {
        let mut out: Vec<Failure> = self.observe_failures.iter().map(Failure::from).collect();
        out.extend(self.outcomes.iter().filter_map(|o| {
            let error = o.error.as_ref()?;
            let failure = Failure::new(Subject::Group(o.target.clone()), FailureKind::Change, error.clone());
            Some(Failure { class: o.class, ..failure })
        }));
        out.extend(self.overflows.iter().map(|o| {
            let message = format!("would hold {} {} rules, over its quota of {}", o.would_hold, o.family, o.quota);
            Failure::new(Subject::Group(o.target.clone()), FailureKind::Quota, message)
        }));
        out
    }
}

/// What `add` did.
#[derive(Debug, Clone, Serialize)]
pub struct AddOutcome {
    pub grant: Grant,
    pub refreshed: bool,
    /// `None` when the firewall needed no call (a refresh that changes no rule).
    pub report: Option<ReconcileReport>,
}

/// What `remove` did.
#[derive(Debug, Clone, Serialize)]
pub struct RemoveOutcome {
    pub grant: Grant,
    pub report: ReconcileReport,
}

/// What one sweep did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SweepReport {
    pub expired: Vec<Grant>,
    /// Environments whose expired grants could not be revoked everywhere: they stay stored
    /// (overdue) until a retry revokes them.
    #[serde(skip_serializing_if = "std::collections::BTreeSet::is_empty")]
    pub retrying: std::collections::BTreeSet<Environment>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<ReconcileReport>,
    /// Guard's expired timed rules, when one was due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timed_rules: Option<crate::guard::TimedRuleReport>,
}

/// What `adopt` found and did.
#[derive(Debug, Clone, Serialize)]
pub struct AdoptReport {
    /// The rules taken over (or, in a dry run, that would be), as description updates.
    pub changes: Vec<GroupChange>,
    /// The grants made for the authenticating security group tool's rules (`expired at …`),
    /// each expiring when its rule said (or that would be made, in a dry run).
    pub seed_grants: Vec<Grant>,
    /// Those rules whose time the environment's policy refuses (past `max_ttl`): left as they are.
    pub seed_refused: Vec<RefusedGrant>,
    pub dry_run: bool,
    pub outcomes: Vec<GroupOutcome>,
    pub observe_failures: Vec<ObserveFailure>,
}

impl AdoptReport {
    pub fn rules(&self) -> usize {
        self.changes.iter().map(|c| c.update_descriptions.len()).sum()
    }

    pub fn failed(&self) -> bool {
        !self.observe_failures.is_empty() || self.outcomes.iter().any(|o| o.error.is_some())
    }
}

/// How the process is doing, for `/v1/status`.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reconcile: Option<ReconcileSummary>,
    #[serde(with = "time::serde::rfc3339::option")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub next_expiry: Option<Timestamp>,
    /// Grants past their expiry that are still stored (the sweeper has not caught up).
    pub overdue: Vec<Grant>,
    /// Announcements not yet delivered.
    pub outbox_pending: usize,
    /// Whether this process holds the sweeper lease (`None` when it runs without one).
    pub sweeper_lease: Option<bool>,
    /// Which process holds the sweeper lease now, and until when (`None`: none does, as when
    /// every replica stopped, or a CLI asks with no `serve` running).
    pub sweeper_lease_holder: Option<portcullis_store::LeaseHolder>,
    /// This process's name among those sharing the store (as `sweeper_lease_holder` names it).
    pub instance: String,
    /// Stored grants the policy refuses (written by another writer past the checks an add
    /// makes): never applied.
    pub refused_grants: Vec<RefusedGrant>,
    /// With guard: the longest term "Approve for …" may give (`temporary_approval`, e.g.
    /// `24h`), which the console offers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temporary_approval: Option<String>,
    /// With guard's break-glass on: the longest a break-glass lasts (`break_glass_ttl`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub break_glass_ttl: Option<String>,
}

#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Serialize)]
pub struct ReconcileSummary {
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub cause: Cause,
    pub ok: bool,
    pub authorized: usize,
    pub revoked: usize,
    pub updated: usize,
    pub failures: Vec<Failure>,
}
