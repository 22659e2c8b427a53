//! The pure domain of portcullis: grants, policy, the ownership marker and [`plan()`].
//!
//! Nothing here does I/O or is async: every function is handed what it needs (including the
//! current time) and returns values. Adapters for AWS, SQLite and Slack live in other crates.

mod access;
mod audit;
mod cidr;
mod description;
mod display;
mod environment;
mod error;
mod external;
mod grant;
mod marker;
mod plan;
mod policy;
mod ports;
mod target;
mod ttl;
mod user;

pub use access::{principal_name, ApiToken, Credential, PrincipalPattern, Role, TokenState};
pub use audit::{Action, ActorName, AuditEvent, AuditScope, Interface};
pub use cidr::{Cidr, Family};
pub use description::{is_spoofing, Description};
pub use display::{format_utc, time_left};
pub use environment::Environment;
pub use error::ValidationError;
pub use external::{external_step, ExternalChange, ExternalKind, ExternalStep};
pub use grant::{Grant, GrantKey, Owner, Source};
pub use marker::Marker;
pub use plan::{
    counts_after, plan, plan_adoption, AppliedRule, Foreign, GroupChange, Overflow, Plan, PlanInput, RuleQuota, Withheld,
};
pub use policy::{admit_grants, policy_for, Policy, PolicyError, PolicyRules, RefusedGrant};
pub use ports::{PortRange, PortSet, Protocol};
pub use target::{
    resolve_targets, FamilyCounts, GroupId, Route, ObservedGroup, ObservedRule, SkippedGroup, Target, TargetId,
    TargetSpec, TargetSelector, ENVIRONMENT_TAG, PORTS_TAG,
};
pub use ttl::Ttl;
pub use user::UserName;

/// A point in time, always UTC.
pub type Timestamp = time::OffsetDateTime;
