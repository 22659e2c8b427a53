//! The [`Store`] trait — desired state (grants) and the append-only audit log — and its
//! embedded SQLite implementation.
//!
//! The store is the source of truth: every change is written here before the firewall is
//! touched, and each write records its audit event in the same transaction.

#[cfg(feature = "test-support")]
pub mod contract;
pub mod ip_whitelist;
mod sqlite;
mod upsert;

use std::collections::BTreeSet;

use async_trait::async_trait;
use portcullis_core::guard::{ChangeRequest, GroupRule, RequestStatus};
use portcullis_core::{
    ApiToken, AuditEvent, AuditScope, Environment, Grant, GrantKey, Interface, PolicyRefusal, TargetId, Timestamp,
};
use thiserror::Error;

pub use sqlite::SqliteStore;

/// Every part of the store, for callers of its methods: `use portcullis_store::prelude::*;`.
pub mod prelude {
    pub use crate::{AuditStore, GrantStore, GuardStore, LeaseStore, OutboxStore, Store, TokenStore};
}
pub use upsert::{Decided, UpsertDecision};

/// How long a process holds a notice it wrote or claimed before another may deliver it.
pub const NOTICE_LEASE: time::Duration = time::Duration::seconds(30);

/// Whether an audit action is announced (and so gets an outbox entry with its audit record):
/// grant changes, and guard's notices for the monitoring channel.
pub fn is_announced(action: portcullis_core::Action) -> bool {
    use portcullis_core::Action::*;
    matches!(
        action,
        Added
            | Removed
            | Expired
            | DriftRepaired
            | ChangeRequested
            | ChangeReverted
            | ChangeApproved
            | ChangeDenied
            | ChangeExpired
            | ChangeApplied
            | ChangeFailed
            | BreakGlass
    )
}

/// Whether an audit action is a grant change, which marks its environment as one this store
/// has history for (the empty-store safety rule).
pub fn is_grant_change(action: portcullis_core::Action) -> bool {
    use portcullis_core::Action::*;
    matches!(action, Added | Refreshed | Removed | Expired)
}

/// A time as whole milliseconds since the epoch, as both stores keep times.
pub fn millis(t: Timestamp) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// [`millis`] read back; out-of-range values (a corrupt store) read as the epoch.
pub fn from_millis(ms: i64) -> Timestamp {
    Timestamp::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
}

/// A name for this process among others sharing a store (for outbox claims and leases):
/// its pid and 64 random bits, so two processes never share one.
pub fn instance_name() -> String {
    use std::hash::{BuildHasher, Hasher};
    // RandomState is seeded from the OS's randomness once per process.
    let random = std::collections::hash_map::RandomState::new().build_hasher().finish();
    format!("pid{}-{random:x}", std::process::id())
}

/// Who is making a change, and through which interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub interface: Interface,
}

/// An audit event by `actor` with nothing in it yet but what it is and where.
fn event_by(at: Timestamp, actor: &Actor, action: portcullis_core::Action, environment: AuditScope) -> AuditEvent {
    AuditEvent {
        id: 0,
        at,
        actor: actor.name.as_str().into(),
        interface: actor.interface,
        action,
        environment,
        cidr: None,
        before: None,
        after: None,
        reason: String::new(),
        request: None,
    }
}

/// `guard baseline` recorded a group's rules as approved.
pub fn baseline_event(at: Timestamp, actor: &Actor, group: &TargetId, rules: usize) -> AuditEvent {
    AuditEvent {
        reason: format!("guard baseline of {} ({}): {rules} rules approved as they are", group.group_id, group.region),
        ..event_by(at, actor, portcullis_core::Action::BaselineRecorded, AuditScope::All)
    }
}

/// The audit event of a change to one grant.
pub fn grant_event(
    at: Timestamp,
    actor: &Actor,
    action: portcullis_core::Action,
    grant: &Grant,
    before: Option<Grant>,
    after: Option<Grant>,
    reason: String,
) -> AuditEvent {
    AuditEvent {
        cidr: Some(grant.cidr),
        before,
        after,
        reason,
        ..event_by(at, actor, action, AuditScope::from(&grant.environment))
    }
}

/// The audit event of creating or revoking an API token. Its environment is the token's
/// environments (`*` for any); its reason names the token, never its secret.
pub fn token_event(at: Timestamp, actor: &Actor, action: portcullis_core::Action, token: &ApiToken) -> AuditEvent {
    let environment = AuditScope::of_environments(&token.environments);
    let verb = if action == portcullis_core::Action::TokenRevoked { "revoked" } else { "created" };
    AuditEvent {
        reason: format!("token {} ({}, user {}) {verb}", token.id, token.role, token.user),
        ..event_by(at, actor, action, environment)
    }
}

/// A guard audit event about one change request: scoped to every environment (a guarded group
/// belongs to none); its reason names the request, the group, the rules and `detail`.
pub fn request_event(
    at: Timestamp,
    actor: &Actor,
    action: portcullis_core::Action,
    request: &ChangeRequest,
    detail: &str,
) -> AuditEvent {
    let mut reason = format!(
        "request {} by {}: {} in {} ({})",
        request.id, request.requester, request.group_id, request.region, request.account
    );
    if !detail.is_empty() {
        reason.push_str("; ");
        reason.push_str(detail);
    }
    for line in request.rules_in_words() {
        reason.push('\n');
        reason.push_str(&line);
    }
    AuditEvent { reason, request: Some(Box::new(request.clone())), ..event_by(at, actor, action, AuditScope::All) }
}

/// The actor recorded for expiries.
pub fn sweeper_actor() -> Actor {
    Actor { name: "portcullis".into(), interface: Interface::Sweeper }
}

/// A refresh of the live grant `old` by `asked`: the expiry becomes the later of the two, the
/// description is replaced, the owner is kept; the audit names both users. Returns what is
/// stored and its audit event.
pub fn refresh(old: &Grant, asked: &Grant, actor: &Actor, now: Timestamp) -> (Grant, AuditEvent) {
    let expires_at = match (old.expires_at, asked.expires_at) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };
    let stored = Grant { description: asked.description.clone(), expires_at, ..old.clone() };
    let reason = if actor.name == old.owner.name {
        format!("refreshed by {}", actor.name)
    } else {
        format!("refreshed by {} (held by {})", actor.name, old.owner.name)
    };
    let event =
        grant_event(now, actor, portcullis_core::Action::Refreshed, &stored, Some(old.clone()), Some(stored.clone()), reason);
    (stored, event)
}

/// A request to add a grant, or refresh it if its key exists.
#[derive(Debug, Clone)]
pub struct Upsert {
    /// The grant as the actor asks for it; `created_at` is the request time.
    pub grant: Grant,
    pub actor: Actor,
    /// The most live grants one owner may hold in the environment (checked atomically).
    pub max_grants_per_user: usize,
}

/// What an upsert did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upserted {
    /// The grant as stored now.
    pub grant: Grant,
    /// The live grant it refreshed, if any.
    pub previous: Option<Grant>,
}

/// A change waiting in the outbox to be announced.
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    /// The audit event that is announced; its id is the notice's id.
    pub event: AuditEvent,
    /// Delivery attempts so far.
    pub attempts: u32,
}

/// How a delivery attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    Delivered,
    /// Try again at `at` (anyone may; the claim is released).
    Retry {
        at: Timestamp,
        error: String,
    },
    /// Never deliverable (too old); kept with its error, never tried again.
    Abandoned {
        error: String,
    },
}

/// The outbox at a glance.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutboxStatus {
    /// Notices not yet delivered or abandoned.
    pub pending: usize,
    /// When this process may next claim one (now or earlier when one is due).
    pub next_due: Option<Timestamp>,
}

#[derive(Debug, Error)]
pub enum StoreError {
    #[error(transparent)]
    /// A policy limit the store enforces (the per-user limit) refuses the write.
    Refused(#[from] PolicyRefusal),
    /// The backend (SQLite) failed; its own error, boxed so no backend's types leak out.
    #[error("store {location}: {source}")]
    Backend { location: String, source: Box<dyn std::error::Error + Send + Sync> },
    #[error("store {location}: {source}")]
    Io { location: String, source: std::io::Error },
    #[error("store {location}: {message}")]
    Corrupt { location: String, message: String },
    #[error("store task failed: {0}")]
    Task(String),
    /// A remote store (DynamoDB) refused or failed a call; worth retrying.
    #[error("store {location}: {message}")]
    Remote { location: String, message: String },
    /// The store's tables do not exist yet.
    #[error("store {location} does not exist; create it with `portcullis init`")]
    Missing { location: String },
    /// A conditional write kept losing to concurrent writers.
    #[error("store {location}: gave up after {attempts} attempts lost to concurrent changes")]
    Contended { location: String, attempts: u32 },
}

/// Which audit events to read: the newest first, at most `limit`, each passing every filter
/// given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// One environment's events, or every one.
    pub environment: Option<Environment>,
    pub action: Option<portcullis_core::Action>,
    /// Events by this user ([`portcullis_core::ActorName::is`]: by name or Slack id).
    pub user: Option<String>,
    /// Only events older than this id: the next page after one whose last event it is.
    pub before: Option<i64>,
    pub limit: usize,
}

impl AuditQuery {
    /// The most events one query returns, whatever it asks for.
    pub const MAX_LIMIT: usize = 10_000;

    /// The newest `limit` events of `environment` (or every one), unfiltered.
    pub fn newest(environment: Option<&Environment>, limit: usize) -> AuditQuery {
        AuditQuery { environment: environment.cloned(), limit, ..AuditQuery::default() }
    }

    /// Whether `event` passes the action, user and page filters. (Backends also narrow by
    /// environment and page in their keys; this is the whole rule, for those that filter
    /// what they read.)
    pub fn matches(&self, event: &AuditEvent) -> bool {
        self.action.is_none_or(|a| a == event.action)
            && self.user.as_deref().is_none_or(|u| event.actor.is(u))
            && self.before.is_none_or(|b| event.id < b)
    }
}

/// Who holds a lease, and until when.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct LeaseHolder {
    /// The holder's [`LeaseStore::instance`].
    pub holder: String,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub until: Timestamp,
}

/// A named lease: held by one process at a time until it lapses or is released.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseClaim<'a> {
    /// What the lease guards, e.g. `sweeper`.
    pub name: &'a str,
    /// Who asks (a process's [`LeaseStore::instance`]).
    pub holder: &'a str,
    pub now: Timestamp,
    /// The lease lapses this long after `now` unless renewed.
    pub duration: time::Duration,
}

/// Where desired state, the audit log and everything else portcullis keeps live: one store,
/// whose parts are the sub-traits below (a backend implements each; the engine asks for
/// `Store`, guard's component for [`GuardStore`] alone).
pub trait Store: GrantStore + AuditStore + LeaseStore + OutboxStore + TokenStore + GuardStore {}

impl<T: GrantStore + AuditStore + LeaseStore + OutboxStore + TokenStore + GuardStore> Store for T {}

/// Grants: desired state, each change recorded with its audit event in one write.
#[async_trait]
pub trait GrantStore: Send + Sync {
    /// Adds a grant or refreshes the live one with its key: expiry becomes the later of the
    /// two, the description is replaced, the owner is kept, and the audit names both users.
    async fn upsert(&self, request: Upsert) -> Result<Upserted, StoreError>;

    /// Removes a grant, recording who did it; `None` when there was none.
    async fn remove(&self, key: &GrantKey, actor: &Actor, now: Timestamp) -> Result<Option<Grant>, StoreError>;

    /// The stored grant with this key (expired but not yet swept included): one lookup, so a
    /// refresh costs the same however many grants there are.
    async fn grant(&self, key: &GrantKey) -> Result<Option<Grant>, StoreError>;

    /// Every stored grant (expired ones not yet swept included), in one environment or all.
    async fn grants(&self, environment: Option<&Environment>) -> Result<Vec<Grant>, StoreError>;

    /// Deletes the grants of `environments` that expired at or before `now`, recording
    /// `expired` for each. Grants of other environments stay, due or not.
    async fn expire(&self, now: Timestamp, environments: &BTreeSet<Environment>) -> Result<Vec<Grant>, StoreError>;

    /// The earliest expiry of any stored grant.
    async fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError>;

    /// Environments in which this store has ever recorded a grant change. Owned rules are only
    /// revoked there, so a new or mistyped store never wipes access.
    async fn environments_with_history(&self) -> Result<BTreeSet<Environment>, StoreError>;
}

/// The append-only audit log.
#[async_trait]
pub trait AuditStore: Send + Sync {
    /// Appends an audit event that goes with no grant change (`refused`, `drift-repaired`).
    async fn record(&self, event: AuditEvent) -> Result<(), StoreError>;

    /// The audit events a query asks for, newest first.
    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError>;

    /// The newest audit events first, at most `limit`.
    async fn audit(&self, environment: Option<&Environment>, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        self.query_audit(&AuditQuery::newest(environment, limit)).await
    }

    /// Appends an audit event once per `key` (e.g. a stream record's id): false, and nothing
    /// written, when an event with that key was recorded before.
    async fn record_once(&self, event: AuditEvent, key: &str) -> Result<bool, StoreError>;
}

/// Leases and one-time claims, shared by every process on the store; and who this process is.
#[async_trait]
pub trait LeaseStore: Send + Sync {
    /// Takes or renews a lease: true when `claim.holder` holds it until `now + duration`.
    async fn acquire_lease(&self, claim: LeaseClaim<'_>) -> Result<bool, StoreError>;

    /// Gives a lease up, if `holder` holds it.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError>;

    /// Who holds the lease `name` at `now`; `None` when nobody does (never taken, released or
    /// lapsed).
    async fn lease_holder(&self, name: &str, now: Timestamp) -> Result<Option<LeaseHolder>, StoreError>;

    /// Claims `key` (a request signature, say) until `until`: true the first time, false while
    /// an earlier claim stands, in this process or any other on the store. Replay protection
    /// shared by every replica.
    async fn claim_once(&self, key: &str, now: Timestamp, until: Timestamp) -> Result<bool, StoreError>;

    /// This process's name in the outbox: the notices it writes are leased to it for
    /// [`NOTICE_LEASE`], so it announces its own changes.
    fn instance(&self) -> &str;
}

/// Notices waiting to be announced (the durable outbox).
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims the oldest due notice for this process: its own, or one whose lease has lapsed.
    async fn claim_notice(&self, now: Timestamp) -> Result<Option<Notice>, StoreError>;

    /// Records how a claimed notice's delivery ended.
    async fn settle_notice(&self, id: i64, settlement: Settlement, now: Timestamp) -> Result<(), StoreError>;

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError>;
}

/// API tokens, by the hash of their secret.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Stores a new API token (by hash) and audits its creation.
    async fn create_token(&self, token: ApiToken, actor: &Actor) -> Result<(), StoreError>;

    /// The token whose secret hashes to `hash`, revoked and expired ones included.
    async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError>;

    /// Every token, oldest first.
    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError>;

    /// Revokes a token at `now` and audits it; `None` when there is no such id. Revoking a
    /// revoked token changes nothing and returns it as it is.
    async fn revoke_token(&self, id: &str, actor: &Actor, now: Timestamp) -> Result<Option<ApiToken>, StoreError>;
}

/// Guard's change requests, each group's baseline, and guard's ledger of its own changes.
#[async_trait]
pub trait GuardStore: Send + Sync {
    /// Files a new change request with its audit events, in one write. `false`, and nothing
    /// written, when a request for the same event id exists (a redelivered event).
    async fn file_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError>;

    async fn request(&self, id: &str) -> Result<Option<ChangeRequest>, StoreError>;

    /// Every request, oldest first; `status` narrows them.
    async fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<ChangeRequest>, StoreError>;

    /// Writes `request` (its version already bumped by one) with its audit events, only over
    /// the version before it: `false`, and nothing written, when another write came first.
    async fn update_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError>;

    /// A guarded group's approved rules; `None` until a baseline is recorded.
    async fn baseline(&self, group: &TargetId) -> Result<Option<Vec<GroupRule>>, StoreError>;

    /// Records a guarded group's approved rules, with the audit events that say why.
    async fn set_baseline(&self, group: &TargetId, rules: &[GroupRule], events: Vec<AuditEvent>) -> Result<(), StoreError>;

    /// Notes, until `until`, the changes guard is about to make (`core::guard::step_keys`),
    /// so that the events its own calls cause are known as its own whatever identity they
    /// name. Shared by every process on the store.
    async fn note_own_changes(&self, keys: &[String], until: Timestamp) -> Result<(), StoreError>;

    /// Those of `keys` noted by [`GuardStore::note_own_changes`] and not lapsed at `now`.
    async fn noted_own_changes(&self, keys: &[String], now: Timestamp) -> Result<BTreeSet<String>, StoreError>;
}
