use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::{Cidr, Environment, Family, Grant, PortSet, PrincipalPattern, Source, Timestamp, Ttl};
use crate::{NotFound, PermissionRefusal, PolicyRefusal};

/// The knobs of an environment's policy, as configured; [`Policy::new`] checks them. The
/// defaults are DESIGN.md's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRules {
    pub max_ttl: Ttl,
    pub max_grants_per_user: usize,
    pub min_prefix_v4: u8,
    pub min_prefix_v6: u8,
    /// What a group's `WhitelistPorts` tag may name.
    pub allowed_ports: PortSet,
    /// User ids that may act (Slack user ids such as `U0123ABCD`; the user name for the CLI
    /// and HTTP API). With neither this nor `allowed_groups`, anyone the interface identifies
    /// may act.
    pub allowed_users: Option<BTreeSet<String>>,
    /// Groups whose members may act (Slack user-group ids such as `S0123ABCD`).
    pub allowed_groups: BTreeSet<String>,
    /// IAM principals (exact ARNs or `*` patterns) that may act. IAM authentication admits only
    /// principals listed here, even where the environment is otherwise open.
    pub allowed_principals: Vec<PrincipalPattern>,
    pub refuse_special_purpose: bool,
    /// How long a self-service (`/connection`) grant lasts; each request renews it.
    pub connection_ttl: Ttl,
}

impl Default for PolicyRules {
    fn default() -> Self {
        PolicyRules {
            max_ttl: Ttl::MAX,
            max_grants_per_user: 25,
            min_prefix_v4: 24,
            min_prefix_v6: 48,
            allowed_ports: PortSet::new(PortSet::alb().iter().chain(PortSet::nlb().iter()).copied()),
            allowed_users: None,
            allowed_groups: BTreeSet::new(),
            allowed_principals: Vec::new(),
            refuse_special_purpose: false,
            connection_ttl: Ttl::CONNECTION_DEFAULT,
        }
    }
}

/// Rules that cannot make a policy. [`PolicyError::field`] names the knob.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyError {
    #[error("must be from 1 to 32")]
    MinPrefixV4(u8),
    #[error("must be from 1 to 128")]
    MinPrefixV6(u8),
    #[error("must be at least 1")]
    MaxGrantsPerUser,
    #[error("{connection_ttl} is longer than max_ttl {max_ttl}")]
    ConnectionTtlOverMax { connection_ttl: Ttl, max_ttl: Ttl },
}

impl PolicyError {
    /// The configuration key of the knob at fault.
    pub fn field(&self) -> &'static str {
        match self {
            PolicyError::MinPrefixV4(_) => "min_prefix_v4",
            PolicyError::MinPrefixV6(_) => "min_prefix_v6",
            PolicyError::MaxGrantsPerUser => "max_grants_per_user",
            PolicyError::ConnectionTtlOverMax { .. } => "time_to_expire",
        }
    }
}

/// What an environment allows: the rules every grant in it must satisfy. Valid by
/// construction: only [`Policy::new`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Policy {
    rules: PolicyRules,
}

/// A stored grant its environment's policy does not admit, and why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RefusedGrant {
    pub grant: Grant,
    pub reason: String,
}

/// Splits stored grants into those that may be planned and those their environment's policy
/// refuses. Grants of environments without a policy are kept: no target of theirs is planned.
pub fn admit_grants(
    grants: Vec<Grant>,
    policies: &BTreeMap<Environment, Policy>,
    now: Timestamp,
) -> (Vec<Grant>, Vec<RefusedGrant>) {
    let mut admitted = Vec::with_capacity(grants.len());
    let mut refused = Vec::new();
    for grant in grants {
        match policies.get(&grant.environment).map(|p| p.admits(&grant, now)) {
            Some(Err(err)) => refused.push(RefusedGrant { reason: err.to_string(), grant }),
            _ => admitted.push(grant),
        }
    }
    (admitted, refused)
}

/// The policy of a known environment; an unknown one is refused, naming the known ones.
pub fn policy_for<'a>(policies: &'a BTreeMap<Environment, Policy>, env: &Environment) -> Result<&'a Policy, NotFound> {
    policies.get(env).ok_or_else(|| NotFound::UnknownEnvironment {
        name: env.to_string(),
        known: policies.keys().map(|e| e.to_string()).collect::<Vec<_>>().join(", "),
    })
}

impl Policy {
    /// A policy from its rules: prefixes within their family's range, at least one grant per
    /// user, and self-service grants no longer than any grant may be.
    pub fn new(rules: PolicyRules) -> Result<Policy, PolicyError> {
        if !(1..=32).contains(&rules.min_prefix_v4) {
            return Err(PolicyError::MinPrefixV4(rules.min_prefix_v4));
        }
        if !(1..=128).contains(&rules.min_prefix_v6) {
            return Err(PolicyError::MinPrefixV6(rules.min_prefix_v6));
        }
        if rules.max_grants_per_user == 0 {
            return Err(PolicyError::MaxGrantsPerUser);
        }
        if rules.connection_ttl > rules.max_ttl {
            return Err(PolicyError::ConnectionTtlOverMax { connection_ttl: rules.connection_ttl, max_ttl: rules.max_ttl });
        }
        Ok(Policy { rules })
    }

    pub fn rules(&self) -> &PolicyRules {
        &self.rules
    }

    pub fn max_ttl(&self) -> Ttl {
        self.rules.max_ttl
    }

    pub fn max_grants_per_user(&self) -> usize {
        self.rules.max_grants_per_user
    }

    pub fn allowed_ports(&self) -> &PortSet {
        &self.rules.allowed_ports
    }

    pub fn allowed_groups(&self) -> &BTreeSet<String> {
        &self.rules.allowed_groups
    }

    pub fn connection_ttl(&self) -> Ttl {
        self.rules.connection_ttl
    }

    /// Refuses the whole internet, prefixes wider than allowed and (if configured)
    /// special-purpose ranges.
    pub fn check_cidr(&self, environment: &Environment, cidr: &Cidr) -> Result<(), PolicyRefusal> {
        if cidr.is_whole_internet() {
            return Err(PolicyRefusal::WholeInternet { cidr: cidr.to_string() });
        }
        let (min, family) = match cidr.family() {
            Family::Ipv4 => (self.rules.min_prefix_v4, "IPv4"),
            Family::Ipv6 => (self.rules.min_prefix_v6, "IPv6"),
        };
        if cidr.prefix_len() < min {
            return Err(PolicyRefusal::PrefixTooWide {
                cidr: cidr.to_string(),
                environment: environment.to_string(),
                family,
                min,
            });
        }
        if self.rules.refuse_special_purpose && cidr.is_special_purpose() {
            return Err(PolicyRefusal::SpecialPurpose { cidr: cidr.to_string(), environment: environment.to_string() });
        }
        Ok(())
    }

    pub fn check_ttl(&self, environment: &Environment, ttl: Ttl) -> Result<(), PolicyRefusal> {
        if ttl > self.rules.max_ttl {
            return Err(PolicyRefusal::TtlOverMaximum { ttl, max: self.rules.max_ttl, environment: environment.to_string() });
        }
        Ok(())
    }

    /// Whether a stored grant, whoever wrote it, may be applied: the same checks an add makes
    /// (whole internet, minimum prefix, special-purpose ranges, maximum TTL), so a grant put
    /// straight into the table by another writer cannot open more than portcullis would. The
    /// TTL is measured from `now`, with [`Policy::CLOCK_SLACK`] for writers whose clocks run
    /// ahead; a grant without expiry must come from a source that may be permanent.
    pub fn admits(&self, grant: &Grant, now: Timestamp) -> Result<(), PolicyRefusal> {
        let env = &grant.environment;
        self.check_cidr(env, &grant.cidr)?;
        match grant.expires_at {
            // A member grant lives while its instance is a member: `member_ttl` is its backstop.
            Some(at) if grant.source != Source::AsgMember && at - now > self.rules.max_ttl.duration() + Self::CLOCK_SLACK => {
                Err(PolicyRefusal::ExpiresTooLate {
                    cidr: grant.cidr.to_string(),
                    environment: env.to_string(),
                    max: self.rules.max_ttl,
                })
            }
            None if !grant.source.may_be_permanent() => {
                Err(PolicyRefusal::NoExpiry { cidr: grant.cidr.to_string(), environment: env.to_string() })
            }
            _ => Ok(()),
        }
    }

    /// How far ahead of this process another writer's clock may be when it sets an expiry.
    pub const CLOCK_SLACK: time::Duration = time::Duration::minutes(5);

    /// Whether anyone identified may act here, or only listed users and group members.
    pub fn is_restricted(&self) -> bool {
        self.rules.allowed_users.is_some() || !self.rules.allowed_groups.is_empty()
    }

    /// Whether an authenticated IAM principal is listed here. IAM admits listed principals only,
    /// so `principals` never restricts the other interfaces' users (that is `users`' job).
    pub fn admits_principal(&self, arn: &str) -> bool {
        self.rules.allowed_principals.iter().any(|p| p.matches(arn))
    }

    /// Whether deciding about this user needs their group memberships (which cost a lookup):
    /// only when groups are allowed and the id is not listed outright.
    pub fn needs_groups(&self, id: &str) -> bool {
        !self.rules.allowed_groups.is_empty() && !self.rules.allowed_users.as_ref().is_some_and(|u| u.contains(id))
    }

    /// Whether a user may act here: by id (never by display name, which users choose
    /// themselves) or by membership of an allowed group.
    pub fn check_actor(
        &self,
        environment: &Environment,
        id: &str,
        name: &str,
        groups: &[String],
    ) -> Result<(), PermissionRefusal> {
        let listed = self.rules.allowed_users.as_ref().is_some_and(|u| u.contains(id)) || self.admits_principal(id);
        let member = groups.iter().any(|g| self.rules.allowed_groups.contains(g));
        if !self.is_restricted() || listed || member {
            return Ok(());
        }
        Err(PermissionRefusal::NotAllowed { user: name.to_string(), environment: environment.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev() -> Environment {
        Environment::parse("dev").unwrap()
    }

    fn policy(rules: PolicyRules) -> Policy {
        Policy::new(rules).unwrap()
    }

    #[test]
    fn new_refuses_what_cannot_hold() {
        let refused = |rules: PolicyRules| Policy::new(rules).unwrap_err().field();
        assert_eq!(refused(PolicyRules { min_prefix_v4: 0, ..PolicyRules::default() }), "min_prefix_v4");
        assert_eq!(refused(PolicyRules { min_prefix_v4: 33, ..PolicyRules::default() }), "min_prefix_v4");
        assert_eq!(refused(PolicyRules { min_prefix_v6: 129, ..PolicyRules::default() }), "min_prefix_v6");
        assert_eq!(refused(PolicyRules { max_grants_per_user: 0, ..PolicyRules::default() }), "max_grants_per_user");
        let short = Ttl::parse("1h").unwrap();
        assert_eq!(
            refused(PolicyRules { max_ttl: short, connection_ttl: Ttl::parse("2h").unwrap(), ..PolicyRules::default() }),
            "time_to_expire"
        );
        assert!(Policy::new(PolicyRules { max_ttl: short, connection_ttl: short, ..PolicyRules::default() }).is_ok());
        assert_eq!(Policy::new(PolicyRules::default()).unwrap(), Policy::default());
    }

    #[test]
    fn defaults() {
        let p = Policy::default();
        let check = |s: &str| p.check_cidr(&dev(), &Cidr::parse(s).unwrap());
        assert!(check("203.0.113.0/24").is_ok());
        assert!(check("10.0.0.0/8").is_err());
        assert!(matches!(check("0.0.0.0/0"), Err(PolicyRefusal::WholeInternet { .. })));
        assert!(matches!(check("::/0"), Err(PolicyRefusal::WholeInternet { .. })));
        assert!(check("2001:db8::/48").is_ok());
        assert!(check("2001:db8::/47").is_err());
        assert!(p.check_ttl(&dev(), Ttl::MAX).is_ok());
        assert!(p.check_actor(&dev(), "U1", "anyone", &[]).is_ok());
        assert_eq!(p.allowed_ports().to_string(), "tcp:80,tcp:443,tcp:7233");
    }

    #[test]
    fn stored_grants_are_held_to_the_policy_whoever_wrote_them() {
        use crate::{Description, Grant, Owner, Source};
        let now = time::macros::datetime!(2026-06-01 00:00 UTC);
        let grant = |cidr: &str, expires: Option<time::Duration>, source: Source| Grant {
            cidr: Cidr::parse(cidr).unwrap(),
            environment: dev(),
            owner: Owner::named("console"),
            source,
            description: Description::parse("").unwrap(),
            created_at: now,
            expires_at: expires.map(|d| now + d),
        };
        let p = policy(PolicyRules { max_ttl: Ttl::parse("7d").unwrap(), ..PolicyRules::default() });
        let day = Some(time::Duration::days(1));
        assert!(p.admits(&grant("203.0.113.7", day, Source::Manual), now).is_ok());
        assert!(matches!(p.admits(&grant("0.0.0.0/0", day, Source::Manual), now), Err(PolicyRefusal::WholeInternet { .. })));
        assert!(matches!(p.admits(&grant("10.0.0.0/8", day, Source::Manual), now), Err(PolicyRefusal::PrefixTooWide { .. })));
        let late = Some(time::Duration::days(30));
        assert!(matches!(p.admits(&grant("203.0.113.7", late, Source::Manual), now), Err(PolicyRefusal::ExpiresTooLate { .. })));
        let barely = Some(time::Duration::days(7) + time::Duration::minutes(1));
        assert!(p.admits(&grant("203.0.113.7", barely, Source::Manual), now).is_ok(), "a writer's clock a minute ahead");
        assert!(matches!(p.admits(&grant("203.0.113.7", None, Source::Manual), now), Err(PolicyRefusal::NoExpiry { .. })));
        assert!(p.admits(&grant("203.0.113.7", None, Source::AsgMember), now).is_ok());
        assert!(p.admits(&grant("203.0.113.7", late, Source::AsgMember), now).is_ok(), "membership decides, not max_ttl");
        let policies = BTreeMap::from([(dev(), p)]);
        let (admitted, refused) = admit_grants(
            vec![grant("203.0.113.7", day, Source::Manual), grant("0.0.0.0/0", day, Source::Manual)],
            &policies,
            now,
        );
        assert_eq!((admitted.len(), refused.len()), (1, 1));
        assert!(refused[0].reason.contains("whole internet"), "{}", refused[0].reason);
    }

    #[test]
    fn listed_users_and_groups_only() {
        let p = policy(PolicyRules { allowed_users: Some(["U1".to_string()].into()), ..PolicyRules::default() });
        assert!(p.check_actor(&dev(), "U1", "alice", &[]).is_ok());
        assert!(p.check_actor(&dev(), "U2", "bob", &[]).is_err());
        // A display name is never an identity: anyone can call themselves U1.
        assert!(p.check_actor(&dev(), "U2", "U1", &[]).is_err());
        let p = policy(PolicyRules { allowed_groups: ["S1".to_string()].into(), ..PolicyRules::default() });
        assert!(p.is_restricted());
        assert!(p.check_actor(&dev(), "U2", "bob", &["S1".into()]).is_ok());
        assert!(p.check_actor(&dev(), "U2", "bob", &["S2".into()]).is_err());
        assert!(p.needs_groups("U2"));
        let p = policy(PolicyRules { allowed_users: Some(["U1".to_string()].into()), ..p.rules().clone() });
        assert!(!p.needs_groups("U1"), "a listed id needs no lookup");
        assert!(!Policy::default().needs_groups("U1"));
    }

    #[test]
    fn principals() {
        let arn = "arn:aws:iam::123456789012:user/alice";
        let p = policy(PolicyRules {
            allowed_principals: vec![PrincipalPattern::parse("arn:aws:iam::123456789012:user/*").unwrap()],
            ..PolicyRules::default()
        });
        assert!(!p.is_restricted(), "principals concern IAM only");
        assert!(p.admits_principal(arn));
        assert!(p.check_actor(&dev(), arn, "alice", &[]).is_ok());
        let p = policy(PolicyRules { allowed_users: Some(["ci".to_string()].into()), ..p.rules().clone() });
        assert!(p.check_actor(&dev(), arn, "alice", &[]).is_ok(), "a listed principal where users are listed too");
        assert!(p.check_actor(&dev(), "alice", "alice", &[]).is_err(), "a token user is not an IAM principal");
        assert!(!p.admits_principal("arn:aws:iam::999999999999:user/alice"));
        assert!(!Policy::default().admits_principal(arn), "IAM needs a listed principal even where anyone may act");
    }
}
