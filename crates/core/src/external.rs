//! Changes other writers made to desired state (another replica, the IP Whitelist Manager's Lambda, someone at
//! the console, DynamoDB's TTL), as read from the grants table's change feed, and the pure
//! decision of what each one calls for.

use crate::{Action, AuditEvent, AuditScope, Environment, Grant, Interface, Timestamp, format_utc};

/// One change-feed record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ExternalChange {
    /// The record's id: the same record delivered twice has the same id.
    pub id: Option<String>,
    /// Its position in the feed, from which a failed batch is read again.
    pub sequence: Option<String>,
    pub kind: ExternalKind,
}

/// What a record says happened.
#[derive(Debug, Clone, PartialEq)]
pub enum ExternalKind {
    /// A grant was written (inserted or modified).
    Written { environment: Environment },
    /// portcullis deleted it (its removal mark shows) and announced that when it did.
    RemovedByUs { environment: Environment },
    /// The table's TTL deleted it.
    Expired { grant: Grant },
    /// Someone else deleted it.
    RemovedOutside { grant: Grant },
    /// The record cannot be read; `environment` when at least that could be.
    Unreadable { environment: Option<Environment>, error: String },
}

/// What to do about one record.
#[derive(Debug, Clone, PartialEq)]
pub enum ExternalStep {
    /// Not this deployment's to act on (an environment it does not manage).
    Ignore,
    /// Reconcile the environment.
    Reconcile(Environment),
    /// Record `event` once under `key` (a redelivered record is not announced twice),
    /// announce it, and reconcile its environment.
    Announce { key: String, environment: Environment, event: AuditEvent },
    /// Audit `event` (once under `key`, when the record has an id) and skip the record.
    Refuse { key: Option<String>, event: AuditEvent },
}

impl ExternalChange {
    /// The key a record is recorded under, so a redelivery is recognised.
    fn key(&self) -> Option<String> {
        self.id.as_ref().or(self.sequence.as_ref()).map(|k| format!("stream:{k}"))
    }
}

/// Decides what a record calls for. `manages` says whether an environment is this
/// deployment's; `now` stamps the audit events.
pub fn external_step(change: &ExternalChange, manages: &dyn Fn(&Environment) -> bool, now: Timestamp) -> ExternalStep {
    let mine = |env: &Environment| manages(env);
    match &change.kind {
        ExternalKind::Written { environment } | ExternalKind::RemovedByUs { environment } => {
            if mine(environment) {
                ExternalStep::Reconcile(environment.clone())
            } else {
                ExternalStep::Ignore
            }
        }
        ExternalKind::Expired { grant } | ExternalKind::RemovedOutside { grant } => {
            let Some(key) = change.key().filter(|_| mine(&grant.environment)) else { return ExternalStep::Ignore };
            let (action, actor, reason) = match &change.kind {
                ExternalKind::Expired { .. } => {
                    let at = grant.expires_at.map(format_utc).unwrap_or_default();
                    (Action::Expired, "dynamodb-ttl", format!("expired at {at}; deleted by DynamoDB's TTL"))
                }
                _ => (Action::Removed, "outside-portcullis", "deleted from the table outside portcullis".to_string()),
            };
            let event = AuditEvent {
                id: 0,
                at: now,
                actor: actor.into(),
                interface: Interface::Stream,
                action,
                environment: AuditScope::from(&grant.environment),
                cidr: Some(grant.cidr),
                before: Some(grant.clone()),
                after: None,
                reason,
                request: None,
            };
            ExternalStep::Announce { key, environment: grant.environment.clone(), event }
        }
        ExternalKind::Unreadable { environment, error } => {
            if environment.as_ref().is_some_and(|e| !mine(e)) {
                return ExternalStep::Ignore;
            }
            let name = change.id.as_deref().or(change.sequence.as_deref()).unwrap_or("(no id)");
            let event = AuditEvent {
                id: 0,
                at: now,
                actor: "stream".into(),
                interface: Interface::Stream,
                action: Action::Refused,
                environment: environment.as_ref().map_or(AuditScope::Unknown, AuditScope::from),
                cidr: None,
                before: None,
                after: None,
                reason: format!("unreadable stream record {name}: {error}"),
                request: None,
            };
            ExternalStep::Refuse { key: change.key(), event }
        }
    }
}

#[cfg(test)]
mod tests {
    use time::macros::datetime;

    use super::*;
    use crate::{Cidr, Description, Owner, Source};

    fn env(name: &str) -> Environment {
        Environment::parse(name).unwrap()
    }

    fn grant(environment: &str) -> Grant {
        Grant {
            cidr: Cidr::parse("203.0.113.7").unwrap(),
            environment: env(environment),
            owner: Owner::named("alice"),
            source: Source::Manual,
            description: Description::parse("").unwrap(),
            created_at: datetime!(2026-06-01 00:00 UTC),
            expires_at: Some(datetime!(2026-06-08 00:00 UTC)),
        }
    }

    fn step(kind: ExternalKind, id: Option<&str>) -> ExternalStep {
        let change = ExternalChange { id: id.map(str::to_string), sequence: Some("100".into()), kind };
        external_step(&change, &|e| e.as_str() == "dev", datetime!(2026-06-09 00:00 UTC))
    }

    #[test]
    fn writes_and_our_own_removals_reconcile_managed_environments_only() {
        assert_eq!(step(ExternalKind::Written { environment: env("dev") }, Some("e1")), ExternalStep::Reconcile(env("dev")));
        assert_eq!(step(ExternalKind::RemovedByUs { environment: env("dev") }, Some("e1")), ExternalStep::Reconcile(env("dev")));
        assert_eq!(step(ExternalKind::Written { environment: env("other") }, Some("e1")), ExternalStep::Ignore);
    }

    #[test]
    fn foreign_removals_are_announced_once_per_record() {
        let ExternalStep::Announce { key, event, .. } = step(ExternalKind::Expired { grant: grant("dev") }, Some("e1")) else {
            panic!("a TTL removal is announced")
        };
        assert_eq!(key, "stream:e1");
        assert_eq!((event.action, event.actor.as_str()), (Action::Expired, "dynamodb-ttl"));
        assert_eq!(event.reason, "expired at 2026-06-08 00:00:00 UTC; deleted by DynamoDB's TTL");
        let ExternalStep::Announce { event, .. } = step(ExternalKind::RemovedOutside { grant: grant("dev") }, Some("e2")) else {
            panic!("a foreign removal is announced")
        };
        assert_eq!((event.action, event.actor.as_str()), (Action::Removed, "outside-portcullis"));
        assert_eq!(step(ExternalKind::RemovedOutside { grant: grant("other") }, Some("e3")), ExternalStep::Ignore);
    }

    #[test]
    fn unreadable_records_are_refused_unless_they_belong_elsewhere() {
        let unreadable = |environment: Option<Environment>| ExternalKind::Unreadable { environment, error: "bad ttl".into() };
        let ExternalStep::Refuse { key, event } = step(unreadable(Some(env("dev"))), Some("e4")) else { panic!("refused") };
        assert_eq!((key.as_deref(), event.environment.to_string().as_str()), (Some("stream:e4"), "dev"));
        assert_eq!(event.reason, "unreadable stream record e4: bad ttl");
        let ExternalStep::Refuse { key, event } = step(unreadable(None), None) else { panic!("refused") };
        assert_eq!((key.as_deref(), event.environment.to_string().as_str()), (Some("stream:100"), "-"));
        assert_eq!(step(unreadable(Some(env("other"))), Some("e5")), ExternalStep::Ignore);
    }
}
