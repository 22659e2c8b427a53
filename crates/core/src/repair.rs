//! What a repair report leaves out: revokes that are an expiry arriving early.

use std::collections::BTreeSet;

use crate::{Cidr, Grant, GroupChange, Timestamp};

/// How many of `change`'s revokes close the rule of a grant that has lapsed (stored, past its
/// expiry, not yet recorded expired by the sweeper). Such a revoke is the expiry arriving early
/// through a reconcile, not drift: a repair report leaves it out.
pub fn lapsed_revokes(change: &GroupChange, grants: &[Grant], now: Timestamp) -> usize {
    let lapsed: BTreeSet<Cidr> =
        grants.iter().filter(|g| g.environment == change.environment && !g.is_live(now)).map(|g| g.cidr).collect();
    let live: BTreeSet<Cidr> =
        grants.iter().filter(|g| g.environment == change.environment && g.is_live(now)).map(|g| g.cidr).collect();
    change.revoke.iter().filter(|r| lapsed.contains(&r.cidr) && !live.contains(&r.cidr)).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{AppliedRule, Description, Environment, Owner, PortRange, Protocol, Route, Source, TargetId};
    use time::macros::datetime;

    const NOW: Timestamp = datetime!(2026-01-01 12:00 UTC);

    fn grant(cidr: &str, env: &str, expires_in_min: i64) -> Grant {
        Grant {
            cidr: Cidr::parse(cidr).unwrap(),
            environment: Environment::parse(env).unwrap(),
            owner: Owner::named("john.doe"),
            source: Source::Manual,
            description: Description::parse("").unwrap(),
            created_at: NOW - time::Duration::hours(1),
            expires_at: Some(NOW + time::Duration::minutes(expires_in_min)),
        }
    }

    fn revoke(cidr: &str) -> AppliedRule {
        let c = Cidr::parse(cidr).unwrap();
        AppliedRule { cidr: c, ec2_cidr: cidr.into(), ports: PortRange::single(Protocol::Tcp, 22), description: String::new() }
    }

    #[test]
    fn a_lapsed_grants_revokes_are_counted_unless_the_address_is_live_again() {
        let change = GroupChange {
            list: None,
            target: TargetId { region: "us-east-1".into(), group_id: "sg-1".into() },
            route: Route::region("us-east-1"),
            environment: Environment::parse("dev").unwrap(),
            authorize: vec![],
            revoke: vec![revoke("192.0.2.1/32"), revoke("192.0.2.2/32"), revoke("192.0.2.3/32")],
            update_descriptions: vec![],
        };
        let grants = [grant("192.0.2.1", "dev", -1), grant("192.0.2.2", "dev", -1), grant("192.0.2.2", "dev", 60)];
        // .1 lapsed; .2 lapsed but is live again (another grant); .3 has no grant at all (drift).
        assert_eq!(lapsed_revokes(&change, &grants, NOW), 1);
        assert_eq!(lapsed_revokes(&change, &grants, NOW - time::Duration::minutes(2)), 0, "nothing lapsed yet");
        let elsewhere = [grant("192.0.2.1", "prod", -1)];
        assert_eq!(lapsed_revokes(&change, &elsewhere, NOW), 0, "another environment's grant is not this one's");
    }
}
