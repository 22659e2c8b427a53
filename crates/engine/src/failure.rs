//! What could not be done: every report's failures, typed: where ([`Subject`]), what was being
//! done ([`FailureKind`]), the error's class where a call failed, and the service's words.
//! Interfaces that answer with one line per failure render them with `Display`.

use std::fmt;

use portcullis_core::TargetId;
use serde::Serialize;

use crate::{ErrorClass, FirewallError, ObserveFailure};

/// One failure in a report.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub target: Subject,
    pub kind: FailureKind,
    /// The class of the call's error (see `error_policy`), when a call failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<ErrorClass>,
    pub message: String,
}

/// Where a failure happened.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Subject {
    /// A whole region (of an account): it could not be described.
    Region(String),
    /// One security group (or prefix list).
    Group(TargetId),
    /// An Auto Scaling group.
    Asg { region: String, asg: String },
    /// One instance.
    Instance { region: String, instance_id: String },
}

/// What was being done.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Describing it (groups, rules, instances).
    Describe,
    /// Changing its rules (the reconcile's one batch per group).
    Change,
    /// The change would take it past its quota: not made.
    Quota,
    /// Guard could not note its own change in its ledger, so did not make it.
    Ledger,
    /// Guard's revoke.
    Revoke,
    /// Guard's authorize.
    Authorize,
    /// Guard's restore of an edited rule.
    Restore,
    /// Guard no longer guards its region (and account).
    NotGuarded,
    /// A launching instance is not a member of the group its event names.
    NotMember,
    /// Completing a lifecycle action.
    Lifecycle,
}

impl Failure {
    pub fn new(target: Subject, kind: FailureKind, message: impl Into<String>) -> Failure {
        Failure { target, kind, class: None, message: message.into() }
    }

    /// `kind` on `target` failed with the firewall's `err`.
    pub fn call(target: Subject, kind: FailureKind, err: &FirewallError) -> Failure {
        Failure { target, kind, class: Some(err.class), message: err.message.clone() }
    }

    /// Failures as one line each (the `failures` interfaces answer with).
    pub fn lines(failures: &[Failure]) -> Vec<String> {
        failures.iter().map(ToString::to_string).collect()
    }

    /// Failures as one line each, joined (a request's stored `failure`, a log line).
    pub fn joined(failures: &[Failure]) -> String {
        Failure::lines(failures).join("; ")
    }

    /// The group this failure is about, or its region's when the whole region failed.
    pub fn concerns(&self, group: &TargetId) -> bool {
        match &self.target {
            Subject::Group(g) => g == group,
            Subject::Region(r) => *r == group.region,
            Subject::Asg { .. } | Subject::Instance { .. } => false,
        }
    }
}

impl From<&ObserveFailure> for Failure {
    fn from(f: &ObserveFailure) -> Failure {
        let target = match &f.group_id {
            Some(g) => Subject::Group(TargetId { region: f.region.clone(), group_id: g.clone() }),
            None => Subject::Region(f.region.clone()),
        };
        Failure { target, kind: FailureKind::Describe, class: Some(f.class), message: f.error.clone() }
    }
}

impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Region(region) => write!(f, "region {region}"),
            Subject::Group(group) => write!(f, "{group}"),
            Subject::Asg { region, asg } => write!(f, "{asg} ({region})"),
            Subject::Instance { region, instance_id } => write!(f, "{instance_id} ({region})"),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (target, message) = (&self.target, &self.message);
        match self.kind {
            FailureKind::Describe | FailureKind::Change | FailureKind::Quota | FailureKind::NotMember => {
                write!(f, "{target}: {message}")
            }
            FailureKind::Ledger => {
                write!(f, "{target}: could not note the change in guard's ledger, so it was not made: {message}")
            }
            FailureKind::Revoke => write!(f, "{target}: revoke: {message}"),
            FailureKind::Authorize => write!(f, "{target}: authorize: {message}"),
            FailureKind::Restore => write!(f, "{target}: restore {message}"),
            FailureKind::NotGuarded => write!(f, "{target}: its region (and account) is no longer guarded"),
            FailureKind::Lifecycle => write!(f, "{target}: CompleteLifecycleAction: {message}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group() -> TargetId {
        TargetId { region: "eu-west-1".into(), group_id: "sg-1".into() }
    }

    #[test]
    fn a_failure_reads_as_its_target_then_what_failed() {
        let err = FirewallError::new(ErrorClass::Denied, "UnauthorizedOperation: no");
        let revoke = Failure::call(Subject::Group(group()), FailureKind::Revoke, &err);
        assert_eq!(revoke.to_string(), "sg-1 (eu-west-1): revoke: UnauthorizedOperation: no");
        assert_eq!(revoke.class, Some(ErrorClass::Denied));
        let region = Failure::new(Subject::Region("eu-west-1".into()), FailureKind::Describe, "timed out");
        assert_eq!(region.to_string(), "region eu-west-1: timed out");
    }

    #[test]
    fn a_failure_concerns_its_group_and_every_group_of_its_region() {
        let own = Failure::new(Subject::Group(group()), FailureKind::Change, "x");
        let other = Failure::new(Subject::Group(TargetId { group_id: "sg-2".into(), ..group() }), FailureKind::Change, "x");
        let region = Failure::new(Subject::Region("eu-west-1".into()), FailureKind::Describe, "x");
        let elsewhere = Failure::new(Subject::Region("us-east-1".into()), FailureKind::Describe, "x");
        assert!(own.concerns(&group()) && region.concerns(&group()));
        assert!(!other.concerns(&group()) && !elsewhere.concerns(&group()));
    }
}
