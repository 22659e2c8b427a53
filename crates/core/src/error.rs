use thiserror::Error;

use crate::{Family, Ttl};

/// Why the domain says no, by what kind of no it is: each interface answers each kind its own
/// way (an exit code, an HTTP status). Every message says what was wrong and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Rejection {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error(transparent)]
    NotFound(#[from] NotFound),
    #[error(transparent)]
    Permission(#[from] PermissionRefusal),
    #[error(transparent)]
    Policy(#[from] PolicyRefusal),
}

impl Rejection {
    /// A refusal by policy or permission (the request was understood, and the answer is no),
    /// as against input that was wrong.
    pub fn is_refusal(&self) -> bool {
        matches!(self, Rejection::Permission(_) | Rejection::Policy(_))
    }
}

/// Input that does not parse, or is out of range: a usage error (exit 2, HTTP 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum InvalidInput {
    #[error("invalid address {input:?}: {reason}; give an IPv4 or IPv6 address or CIDR, e.g. 203.0.113.7 or 2001:db8::/48")]
    InvalidAddress { input: String, reason: String },
    #[error("invalid TTL {input:?}: use Nm (1-1440 minutes), Nh (1-24 hours) or Nd (1-365 days), e.g. 30m, 12h, 7d")]
    InvalidTtl { input: String },
    #[error("invalid description: {reason}")]
    InvalidDescription { reason: String },
    #[error("invalid reason: {reason}")]
    InvalidReason { reason: String },
    #[error("invalid environment name {input:?}: use 1-64 characters from a-z A-Z 0-9 . _ -")]
    InvalidEnvironmentName { input: String },
    #[error("invalid port set {input:?}: {reason}; use alb, nlb or a list such as tcp:80,tcp:443,udp:500-501")]
    InvalidPorts { input: String, reason: String },
    #[error("invalid user name {input:?}: {reason}; use 1-100 printable characters")]
    InvalidUserName { input: String, reason: String },
    #[error("invalid principal pattern {input:?}: {reason}")]
    InvalidPrincipal { input: String, reason: String },
    #[error("invalid security group id {input:?}: use sg- and letters or digits, e.g. sg-0123456789abcdef0")]
    InvalidGroupId { input: String },
    #[error("invalid prefix list id {input:?}: use pl- and letters or digits, e.g. pl-0123456789abcdef0")]
    InvalidPrefixListId { input: String },
}

/// Something named that does not exist (exit 2, HTTP 404).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotFound {
    #[error("unknown environment {name:?}; known environments: {known}")]
    UnknownEnvironment { name: String, known: String },
    #[error("no grant for {cidr} in environment {environment}")]
    NoSuchGrant { cidr: String, environment: String },
}

/// Well-formed, but the caller may not do it: a refusal by permission (exit 3, HTTP 403).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PermissionRefusal {
    #[error("token {token} is not valid for environment {environment}")]
    TokenOutOfScope { token: String, environment: String },
    #[error("IAM principal {arn} is not listed in environment {environment}'s principals")]
    PrincipalNotListed { arn: String, environment: String },
    #[error("user {user:?} may not change grants in environment {environment}")]
    NotAllowed { user: String, environment: String },
    #[error("{credential} is limited to some environments; AWS events need a credential for every environment")]
    NotEverywhere { credential: String },
}

/// Well-formed, but an environment's policy or a limit refuses it (exit 3, HTTP 409 or 422).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PolicyRefusal {
    #[error("{cidr} opens access to the whole internet and is always refused")]
    WholeInternet { cidr: String },
    #[error("{cidr} is too wide for environment {environment}: the shortest {family} prefix allowed is /{min}")]
    PrefixTooWide { cidr: String, environment: String, family: &'static str, min: u8 },
    #[error("{cidr} is a special-purpose range (private, loopback, documentation, …), which environment {environment} refuses")]
    SpecialPurpose { cidr: String, environment: String },
    #[error("TTL {ttl} is longer than environment {environment} allows (at most {max})")]
    TtlOverMaximum { ttl: Ttl, max: Ttl, environment: String },
    #[error("{cidr} in environment {environment} expires later than its max_ttl ({max}) allows")]
    ExpiresTooLate { cidr: String, environment: String, max: Ttl },
    #[error("{cidr} in environment {environment} has no expiry, which only Auto Scaling members and approved changes may have")]
    NoExpiry { cidr: String, environment: String },
    #[error("user {user:?} already holds {count} active grants in environment {environment}, the most allowed; remove one first")]
    TooManyGrants { user: String, environment: String, count: usize },
    #[error(
        "security group {group} ({region}) is full: it would hold {would_hold} {family} inbound rules, over its quota of {quota}; nothing was changed"
    )]
    GroupFull { group: String, region: String, family: Family, would_hold: usize, quota: usize },
    #[error(
        "prefix list {list} ({region}) is full: it would hold {entries} {family} entries, over its MaxEntries of {max_entries}; nothing was changed"
    )]
    ListFull { list: String, region: String, family: Family, entries: usize, max_entries: usize },
    #[error(
        "{cidr} is an {family} network, and no target of environment {environment} takes {family} addresses (its prefix lists: {lists}); nothing was stored"
    )]
    FamilyNotTaken { cidr: String, environment: String, family: Family, lists: String },
    #[error(
        "{cidr} in environment {environment} is a member of the Auto Scaling group {owner}: membership decides, so it goes when the instance leaves the group"
    )]
    MembershipDecides { cidr: String, environment: String, owner: String },
}
