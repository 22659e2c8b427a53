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
pub mod guard;
mod marker;
mod members;
#[cfg(feature = "openapi")]
mod openapi;
mod plan;
mod policy;
mod ports;
mod repair;
mod seed_rules;
pub mod select;
mod target;
mod ttl;
mod user;

pub use access::{ApiToken, Credential, PrincipalPattern, Role, TokenState, principal_name};
pub use audit::{Action, ActorName, AuditEvent, AuditScope, Interface};
pub use cidr::{Cidr, Family};
pub use description::{Description, is_spoofing};
pub use display::{format_utc, time_left};
pub use environment::Environment;
pub use error::{InvalidInput, NotFound, PermissionRefusal, PolicyRefusal, Rejection};
pub use external::{ExternalChange, ExternalKind, ExternalStep, external_step};
pub use grant::{Grant, GrantKey, Owner, Source};
pub use marker::Marker;
pub use members::{
    AddressKind, Instance, ListedGrant, MemberPlan, MemberSource, OnFailure, member_grant, member_instance, plan_admission,
    plan_members,
};
#[cfg(feature = "reference-planner")]
pub use plan::reference_plan;
pub use plan::{
    AppliedRule, Foreign, GroupChange, Overflow, Plan, PlanInput, RuleQuota, StaleDescription, Withheld, counts_after, plan,
    plan_additions, plan_adoption,
};
pub use policy::{Policy, PolicyError, PolicyRules, RefusedGrant, admit_grants, policy_for};
pub use ports::{PortRange, PortSet, Protocol};
pub use repair::lapsed_revokes;
pub use seed_rules::{ADOPTED_OWNER, plan_seed_grants, seed_expiry};
pub use target::{
    ENVIRONMENT_TAG, FamilyCounts, GroupId, ListInfo, ObservedGroup, ObservedRule, PORTS_TAG, PrefixListId, Route, SharedTarget,
    SkippedGroup, Target, TargetId, TargetSelector, TargetSpec, resolve_targets, shared_target,
};
pub use ttl::Ttl;
pub use user::UserName;

/// A point in time, always UTC.
pub type Timestamp = time::OffsetDateTime;
