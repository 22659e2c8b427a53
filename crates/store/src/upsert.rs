//! The upsert decision, without I/O: what adding a grant does given what is stored under its
//! key. Every backend reads, asks these functions, and commits what they decide, so the
//! rules (an expired grant is recorded as expired and replaced, a live one is refreshed, a new
//! one is counted against the owner's limit) are written once.

use portcullis_core::{Action, AuditEvent, Grant};

use crate::{Upsert, grant_event, refresh, sweeper_actor};
use portcullis_core::PolicyRefusal;

/// What an upsert stores and records.
#[derive(Debug, Clone, PartialEq)]
pub struct Decided {
    /// The grant as it is stored now.
    pub stored: Grant,
    /// The live grant it refreshed, if any.
    pub previous: Option<Grant>,
    /// The audit events to append, in order.
    pub events: Vec<AuditEvent>,
}

/// The first half of an upsert.
#[derive(Debug, Clone, PartialEq)]
pub enum UpsertDecision {
    /// The key holds a live grant: refresh it; nothing needs counting.
    Refresh(Decided),
    /// No live grant holds the key: count the owner's live grants, then [`Upsert::add`].
    /// `expired` is a dead grant under the key, to be recorded as expired and replaced.
    Add { expired: Option<Grant> },
}

impl Upsert {
    /// Decides from the grant stored under the key (expired or not).
    pub fn decide(&self, existing: Option<&Grant>) -> UpsertDecision {
        let now = self.grant.created_at;
        match existing {
            Some(old) if old.is_live(now) => {
                let (stored, event) = refresh(old, &self.grant, &self.actor, now);
                UpsertDecision::Refresh(Decided { stored, previous: Some(old.clone()), events: vec![event] })
            }
            Some(old) => UpsertDecision::Add { expired: Some(old.clone()) },
            None => UpsertDecision::Add { expired: None },
        }
    }

    /// The second half of an add: `held` is how many live grants the owner holds in the
    /// environment; at the limit the add is refused.
    pub fn add(&self, expired: Option<Grant>, held: usize) -> Result<Decided, PolicyRefusal> {
        let asked = &self.grant;
        if held >= self.max_grants_per_user {
            return Err(PolicyRefusal::TooManyGrants {
                user: asked.owner.name.clone(),
                environment: asked.environment.to_string(),
                count: held,
            });
        }
        let now = asked.created_at;
        let mut events = Vec::new();
        if let Some(old) = expired {
            let reason = "expired before it was refreshed".to_string();
            events.push(grant_event(now, &sweeper_actor(), Action::Expired, &old, Some(old.clone()), None, reason));
        }
        let reason = format!("added by {}", self.actor.name);
        events.push(grant_event(now, &self.actor, Action::Added, asked, None, Some(asked.clone()), reason));
        Ok(Decided { stored: asked.clone(), previous: None, events })
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::{Cidr, Description, Environment, Interface, Owner, Source, Timestamp};
    use time::macros::datetime;

    use super::*;
    use crate::Actor;

    fn grant(owner: &str, at: Timestamp, minutes: i64) -> Grant {
        Grant {
            cidr: Cidr::parse("203.0.113.7").unwrap(),
            environment: Environment::parse("dev").unwrap(),
            owner: Owner::named(owner),
            source: Source::Manual,
            description: Description::parse("x").unwrap(),
            created_at: at,
            expires_at: Some(at + time::Duration::minutes(minutes)),
        }
    }

    fn upsert(by: &str, at: Timestamp) -> Upsert {
        Upsert { grant: grant(by, at, 60), actor: Actor { name: by.into(), interface: Interface::Cli }, max_grants_per_user: 2 }
    }

    #[test]
    fn a_live_grant_is_refreshed_and_keeps_its_owner() {
        let t0 = datetime!(2026-06-01 00:00 UTC);
        let old = grant("alice", t0, 120);
        let UpsertDecision::Refresh(d) = upsert("bob", t0 + time::Duration::minutes(1)).decide(Some(&old)) else {
            panic!("a live grant is refreshed")
        };
        assert_eq!(d.stored.owner.name, "alice");
        assert_eq!(d.stored.expires_at, old.expires_at, "the later expiry wins");
        assert_eq!(d.previous, Some(old));
        assert_eq!(d.events.iter().map(|e| e.action).collect::<Vec<_>>(), [Action::Refreshed]);
        assert_eq!(d.events[0].reason, "refreshed by bob (held by alice)");
    }

    #[test]
    fn an_expired_grant_is_recorded_as_expired_then_replaced() {
        let t0 = datetime!(2026-06-01 00:00 UTC);
        let old = grant("alice", t0, 1);
        let request = upsert("bob", t0 + time::Duration::minutes(1));
        let UpsertDecision::Add { expired } = request.decide(Some(&old)) else { panic!("a dead grant is not refreshed") };
        assert_eq!(expired.as_ref(), Some(&old));
        let d = request.add(expired, 0).unwrap();
        assert_eq!(d.events.iter().map(|e| e.action).collect::<Vec<_>>(), [Action::Expired, Action::Added]);
        assert_eq!(d.stored.owner.name, "bob");
        assert_eq!(d.previous, None);
    }

    #[test]
    fn a_new_grant_is_counted_against_the_owner() {
        let request = upsert("bob", datetime!(2026-06-01 00:00 UTC));
        assert_eq!(request.decide(None), UpsertDecision::Add { expired: None });
        assert!(request.add(None, 1).is_ok());
        assert!(matches!(request.add(None, 2), Err(PolicyRefusal::TooManyGrants { count: 2, .. })));
    }
}
