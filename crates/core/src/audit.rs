use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Cidr, Environment, Grant, Timestamp};

/// What happened, in the audit log's words.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    Added,
    Refreshed,
    Removed,
    Expired,
    DriftRepaired,
    Refused,
    Approved,
    Denied,
    /// A rule made without our marker (by the IP Whitelist Manager's Lambda) was taken over.
    Adopted,
    /// An API token was created or revoked (`cidr` is empty; `reason` names the token).
    TokenCreated,
    TokenRevoked,
    /// An Auto Scaling lifecycle action was completed (`reason`: CONTINUE or ABANDON, and why).
    LifecycleCompleted,
    /// Guard undid an out-of-band change (`reason` names the request, the group and the rules).
    ChangeReverted,
    /// Guard filed a change request for it.
    ChangeRequested,
    /// A change request was approved, denied, or expired undecided.
    ChangeApproved,
    ChangeDenied,
    ChangeExpired,
    /// An approved change is on its group now.
    ChangeApplied,
    /// Applying an approved change failed (`reason` says why); the guard sweep retries.
    ChangeFailed,
    /// A later event reported a change already filed; its event id was added to the request.
    ChangeReported,
    /// A requester applied their own addition at once, for a time (break-glass).
    BreakGlass,
    /// `guard baseline` recorded a group's rules as approved.
    BaselineRecorded,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Added => "added",
            Action::Refreshed => "refreshed",
            Action::Removed => "removed",
            Action::Expired => "expired",
            Action::DriftRepaired => "drift-repaired",
            Action::Refused => "refused",
            Action::Approved => "approved",
            Action::Denied => "denied",
            Action::Adopted => "adopted",
            Action::TokenCreated => "token-created",
            Action::TokenRevoked => "token-revoked",
            Action::LifecycleCompleted => "lifecycle-completed",
            Action::ChangeReverted => "change-reverted",
            Action::ChangeRequested => "change-requested",
            Action::ChangeApproved => "change-approved",
            Action::ChangeDenied => "change-denied",
            Action::ChangeExpired => "change-expired",
            Action::ChangeApplied => "change-applied",
            Action::ChangeFailed => "change-failed",
            Action::ChangeReported => "change-reported",
            Action::BreakGlass => "break-glass",
            Action::BaselineRecorded => "baseline-recorded",
        }
    }

    /// Every action, in the order of the audit log's vocabulary.
    pub const ALL: [Action; 22] = {
        use Action::*;
        [
            Added,
            Refreshed,
            Removed,
            Expired,
            DriftRepaired,
            Refused,
            Approved,
            Denied,
            Adopted,
            TokenCreated,
            TokenRevoked,
            LifecycleCompleted,
            ChangeReverted,
            ChangeRequested,
            ChangeApproved,
            ChangeDenied,
            ChangeExpired,
            ChangeApplied,
            ChangeFailed,
            ChangeReported,
            BreakGlass,
            BaselineRecorded,
        ]
    };

    pub fn parse(text: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

/// The interface through which a change came.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Interface {
    Cli,
    Http,
    Slack,
    Sweeper,
    Reconciler,
    Lambda,
    /// A change another writer made to the table, seen on its stream.
    Stream,
}

impl Interface {
    pub fn as_str(&self) -> &'static str {
        match self {
            Interface::Cli => "cli",
            Interface::Http => "http",
            Interface::Slack => "slack",
            Interface::Sweeper => "sweeper",
            Interface::Reconciler => "reconciler",
            Interface::Lambda => "lambda",
            Interface::Stream => "stream",
        }
    }

    pub fn parse(text: &str) -> Option<Interface> {
        use Interface::*;
        [Cli, Http, Slack, Sweeper, Reconciler, Lambda, Stream].into_iter().find(|i| i.as_str() == text)
    }
}

/// Which environments an audit event concerns. Written as text: the environment's name, names
/// joined by commas, `*` for every environment, `-` when none could be told.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AuditScope {
    Environment(Environment),
    /// Several environments (an API token limited to them).
    Environments(BTreeSet<Environment>),
    /// Every environment (an API token for any).
    All,
    /// None could be told (a stream record too broken to name one).
    Unknown,
}

impl AuditScope {
    /// Reads the text form back; `None` when it names no valid environment.
    pub fn parse(text: &str) -> Option<AuditScope> {
        match text {
            "*" => Some(AuditScope::All),
            "-" => Some(AuditScope::Unknown),
            _ if text.contains(',') => {
                text.split(',').map(|e| Environment::parse(e).ok()).collect::<Option<_>>().map(AuditScope::Environments)
            }
            _ => Environment::parse(text).ok().map(AuditScope::Environment),
        }
    }

    /// The environments a token may act in: all of them when it names none.
    pub fn of_environments(environments: &BTreeSet<Environment>) -> AuditScope {
        let mut each = environments.iter();
        match (each.next(), each.next()) {
            (None, _) => AuditScope::All,
            (Some(only), None) => AuditScope::Environment(only.clone()),
            _ => AuditScope::Environments(environments.clone()),
        }
    }
}

impl From<Environment> for AuditScope {
    fn from(env: Environment) -> Self {
        AuditScope::Environment(env)
    }
}

impl From<&Environment> for AuditScope {
    fn from(env: &Environment) -> Self {
        AuditScope::Environment(env.clone())
    }
}

impl fmt::Display for AuditScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so tables can align it with `{:<8}`.
        match self {
            AuditScope::Environment(e) => f.pad(e.as_str()),
            AuditScope::Environments(es) => f.pad(&es.iter().map(Environment::as_str).collect::<Vec<_>>().join(",")),
            AuditScope::All => f.pad("*"),
            AuditScope::Unknown => f.pad("-"),
        }
    }
}

impl Serialize for AuditScope {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for AuditScope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<AuditScope, D::Error> {
        let text = String::deserialize(d)?;
        AuditScope::parse(&text).ok_or_else(|| serde::de::Error::custom(format!("{text:?} names no environment")))
    }
}

/// Who acted, as the audit log names them: a user's name (with their id when it differs), or
/// one of portcullis's own actors (`portcullis`, `stream`, `dynamodb-ttl`,
/// `outside-portcullis`). It is made from names other systems chose, so it is cleaned rather
/// than refused: control characters become spaces, it is cut to [`ActorName::MAX_CHARS`], and
/// an empty name reads `unknown`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ActorName(String);

impl ActorName {
    /// Room for a name and an IAM ARN beside it.
    pub const MAX_CHARS: usize = 300;

    pub fn new(text: &str) -> ActorName {
        let cleaned: String = text
            .trim()
            .chars()
            .map(|c| if c.is_control() || crate::is_spoofing(c) { ' ' } else { c })
            .take(Self::MAX_CHARS)
            .collect();
        let cleaned = cleaned.trim();
        ActorName(if cleaned.is_empty() { "unknown".into() } else { cleaned.to_string() })
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this actor is `user`: by name, or by either part of a `name (id)` pair (how a
    /// refusal names a Slack user), so a filter by user finds everything they did.
    pub fn is(&self, user: &str) -> bool {
        let actor = self.0.as_str();
        let named = actor.strip_prefix(user).is_some_and(|rest| rest.starts_with(" (") && rest.ends_with(')'));
        let by_id = actor.strip_suffix(')').and_then(|rest| rest.strip_suffix(user)).is_some_and(|rest| rest.ends_with(" ("));
        !user.is_empty() && (actor == user || named || by_id)
    }
}

impl From<&str> for ActorName {
    fn from(text: &str) -> Self {
        ActorName::new(text)
    }
}

impl From<String> for ActorName {
    fn from(text: String) -> Self {
        ActorName::new(&text)
    }
}

impl fmt::Display for ActorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl Serialize for ActorName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for ActorName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ActorName, D::Error> {
        Ok(ActorName::new(&String::deserialize(d)?))
    }
}

/// One append-only record of a state change: who, what, through which interface,
/// before and after, and why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Assigned by the store; 0 before it is stored.
    #[serde(default)]
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub at: Timestamp,
    pub actor: ActorName,
    pub interface: Interface,
    pub action: Action,
    pub environment: AuditScope,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<Cidr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Grant>,
    pub reason: String,
    /// The guard change request an event is about (`change-*`), whole, so its notice can show
    /// it and carry its buttons.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<Box<crate::guard::ChangeRequest>>,
}

impl AuditEvent {
    /// The network it concerns, or `-`, for logs and tables.
    pub fn cidr_label(&self) -> String {
        self.cidr.map_or_else(|| "-".into(), |c| c.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_read_back_as_written() {
        let env = |n: &str| Environment::parse(n).unwrap();
        for scope in [
            AuditScope::Environment(env("dev")),
            AuditScope::Environments([env("dev"), env("prod")].into()),
            AuditScope::All,
            AuditScope::Unknown,
        ] {
            assert_eq!(AuditScope::parse(&scope.to_string()), Some(scope.clone()), "{scope}");
        }
        assert_eq!(AuditScope::Environments([env("prod"), env("dev")].into()).to_string(), "dev,prod");
        assert_eq!(AuditScope::of_environments(&BTreeSet::new()), AuditScope::All);
        assert_eq!(AuditScope::parse("bad name"), None);
        assert_eq!(AuditScope::parse("dev,"), None);
    }

    #[test]
    fn actor_names_are_cleaned_not_refused() {
        assert_eq!(ActorName::new(" alice (U1) ").as_str(), "alice (U1)");
        assert_eq!(ActorName::new("a\nb\u{7}").as_str(), "a b");
        assert_eq!(ActorName::new("").as_str(), "unknown");
        assert_eq!(ActorName::new(&"x".repeat(400)).as_str().chars().count(), ActorName::MAX_CHARS);
    }

    #[test]
    fn an_actor_is_a_user_by_name_or_by_either_half_of_name_and_id() {
        let slack = ActorName::new("john.doe (U123)");
        assert!(slack.is("john.doe") && slack.is("U123") && slack.is("john.doe (U123)"));
        assert!(!slack.is("john") && !slack.is("U12") && !slack.is("doe") && !slack.is(""));
        let cli = ActorName::new("alice");
        assert!(cli.is("alice") && !cli.is("malice") && !cli.is("alic"));
    }
}
