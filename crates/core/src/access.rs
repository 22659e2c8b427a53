//! Who may call the HTTP API: API tokens and their roles, and the IAM principal patterns an
//! environment admits.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Environment, InvalidInput, PermissionRefusal, Policy, Timestamp};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    /// `/connection` only: open and close access for the caller's own address.
    SelfService,
    /// Everything, `/v1` included.
    Admin,
    /// `POST /v1/events` only: AWS events (Auto Scaling lifecycle actions, CloudTrail rule
    /// changes) from a machine, such as an EventBridge API destination. Not rate-limited.
    Events,
}

impl Role {
    pub fn parse(text: &str) -> Option<Role> {
        match text {
            "self-service" => Some(Role::SelfService),
            "admin" => Some(Role::Admin),
            "events" => Some(Role::Events),
            _ => None,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Role::SelfService => "self-service",
            Role::Admin => "admin",
            Role::Events => "events",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An API token as stored: only the SHA-256 of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiToken {
    /// Public, short: what `token list` shows and `token revoke` takes.
    pub id: String,
    /// Hex SHA-256 of the whole token string.
    #[serde(skip_serializing, default)]
    pub hash: String,
    /// The principal the token acts as (policy's `users` match it).
    pub user: String,
    pub role: Role,
    /// The environments it may act in; empty means any the policy allows the user.
    pub environments: BTreeSet<Environment>,
    #[serde(with = "time::serde::rfc3339")]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339::option")]
    pub expires_at: Option<Timestamp>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub revoked_at: Option<Timestamp>,
    /// Who created it.
    pub created_by: String,
}

/// Why a token is not accepted now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenState {
    Valid,
    Revoked,
    Expired,
}

impl ApiToken {
    pub fn state(&self, now: Timestamp) -> TokenState {
        if self.revoked_at.is_some_and(|t| t <= now) {
            TokenState::Revoked
        } else if self.expires_at.is_some_and(|t| t <= now) {
            TokenState::Expired
        } else {
            TokenState::Valid
        }
    }

    /// Its environments, comma-separated; `None` when it may act in any.
    pub fn environment_list(&self) -> Option<String> {
        (!self.environments.is_empty()).then(|| self.environments.iter().map(|e| e.as_str()).collect::<Vec<_>>().join(","))
    }

    /// What the token allows beyond its user: its environments.
    pub fn credential(&self) -> Credential {
        Credential::Token { id: self.id.clone(), environments: self.environments.clone() }
    }
}

/// What a request's credentials allow beyond the name they identify: an API token is valid
/// only in its environments, an IAM principal only where an environment lists it. The CLI,
/// Slack and seed events are identified by the interface itself, with no such limit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Credential {
    #[default]
    Interface,
    /// An API token; `environments` empty means any.
    Token {
        id: String,
        environments: BTreeSet<Environment>,
    },
    Iam {
        arn: String,
    },
}

impl Credential {
    /// Whether these credentials may see and act in `env` at all (the policy's `users` decide
    /// separately who may change grants there).
    pub fn covers(&self, env: &Environment, policy: &Policy) -> bool {
        self.refusal(env, policy).is_none()
    }

    /// Why these credentials are not valid in `env`, if they are not.
    pub fn refusal(&self, env: &Environment, policy: &Policy) -> Option<PermissionRefusal> {
        match self {
            Credential::Interface => None,
            Credential::Token { id, environments } if !environments.is_empty() && !environments.contains(env) => {
                Some(PermissionRefusal::TokenOutOfScope { token: id.clone(), environment: env.to_string() })
            }
            Credential::Token { .. } => None,
            Credential::Iam { arn } if !policy.admits_principal(arn) => {
                Some(PermissionRefusal::PrincipalNotListed { arn: arn.clone(), environment: env.to_string() })
            }
            Credential::Iam { .. } => None,
        }
    }

    /// Refused, when limited to some environments, for what concerns every environment (an
    /// AWS event may touch any of them).
    pub fn everywhere(&self) -> Result<(), PermissionRefusal> {
        if !self.is_limited() {
            return Ok(());
        }
        let credential = match self {
            Credential::Token { id, .. } => format!("token {id}"),
            Credential::Iam { arn } => format!("IAM principal {arn}"),
            Credential::Interface => "this interface".to_string(),
        };
        Err(PermissionRefusal::NotEverywhere { credential })
    }

    /// Whether the credentials are limited to some environments (a token with `--env`, or an
    /// IAM principal); such a caller sees nothing that concerns every environment.
    pub fn is_limited(&self) -> bool {
        match self {
            Credential::Interface => false,
            Credential::Token { environments, .. } => !environments.is_empty(),
            Credential::Iam { .. } => true,
        }
    }
}

/// An IAM principal ARN, exactly or with `*` wildcards (each matching any run of characters),
/// e.g. `arn:aws:sts::123456789012:assumed-role/ci/*`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct PrincipalPattern(String);

impl PrincipalPattern {
    pub fn parse(text: &str) -> Result<PrincipalPattern, InvalidInput> {
        let text = text.trim();
        let refuse = |reason: &str| Err(InvalidInput::InvalidPrincipal { input: text.to_string(), reason: reason.into() });
        if !text.starts_with("arn:") || text.split(':').count() < 6 {
            return refuse("it is not an ARN pattern such as arn:aws:iam::123456789012:user/alice");
        }
        if text.chars().any(|c| c.is_control() || c.is_whitespace()) {
            return refuse("it contains spaces or control characters");
        }
        Ok(PrincipalPattern(text.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Why the pattern is too wide to name one identity (a role or a user of one account), if
    /// it is: its service must be `iam` or `sts`, its account twelve digits, and its resource a
    /// kind and a name without wildcards (`assumed-role/portcullis/*` names one role).
    pub fn too_wide(&self) -> Option<&'static str> {
        let parts: Vec<&str> = self.0.splitn(6, ':').collect();
        let [_, _, service, _, account, resource] = parts.as_slice() else { return Some("it is not an ARN") };
        if !matches!(*service, "iam" | "sts") {
            return Some("its service is not iam or sts");
        }
        if account.len() != 12 || !account.bytes().all(|b| b.is_ascii_digit()) {
            return Some("it does not name one account (twelve digits, no wildcard)");
        }
        let mut names = resource.split('/');
        let (kind, name) = (names.next().unwrap_or_default(), names.next().unwrap_or_default());
        if kind.is_empty() || name.is_empty() || kind.contains('*') || name.contains('*') {
            return Some("it does not name one role or user (e.g. assumed-role/portcullis/*)");
        }
        None
    }

    pub fn matches(&self, arn: &str) -> bool {
        glob(self.0.as_bytes(), arn.as_bytes())
    }
}

impl fmt::Display for PrincipalPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `*` matches any run of bytes; everything else matches itself. Linear backtracking on the
/// last star, so hostile input cannot make it exponential.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == text[t] {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&b| b == b'*')
}

/// A short name for an IAM principal: the last path element of its ARN (`alice` for
/// `arn:aws:iam::1:user/alice`, the session name for an assumed role).
pub fn principal_name(arn: &str) -> &str {
    arn.rsplit(['/', ':']).next().filter(|s| !s.is_empty()).unwrap_or(arn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn patterns() {
        let exact = PrincipalPattern::parse("arn:aws:iam::123456789012:user/alice").unwrap();
        assert!(exact.matches("arn:aws:iam::123456789012:user/alice"));
        assert!(!exact.matches("arn:aws:iam::123456789012:user/alice2"));
        assert!(!exact.matches("arn:aws:iam::123456789012:user/alic"));
        let role = PrincipalPattern::parse("arn:aws:sts::123456789012:assumed-role/ci/*").unwrap();
        assert!(role.matches("arn:aws:sts::123456789012:assumed-role/ci/build-17"));
        assert!(!role.matches("arn:aws:sts::123456789012:assumed-role/cid/x"));
        assert!(!role.matches("arn:aws:sts::999999999999:assumed-role/ci/x"));
        let account = PrincipalPattern::parse("arn:aws:iam::123456789012:*").unwrap();
        assert!(account.matches("arn:aws:iam::123456789012:user/bob"));
        assert!(PrincipalPattern::parse("alice").is_err());
        assert!(PrincipalPattern::parse("arn:aws:iam::1:user/a b").is_err());
    }

    #[test]
    fn names() {
        assert_eq!(principal_name("arn:aws:iam::1:user/alice"), "alice");
        assert_eq!(principal_name("arn:aws:sts::1:assumed-role/ci/build-17"), "build-17");
        assert_eq!(principal_name("arn:aws:iam::1:root"), "root");
    }

    #[test]
    fn token_states() {
        let now = time::macros::datetime!(2026-01-01 00:00 UTC);
        let t = ApiToken {
            id: "abc".into(),
            hash: "h".into(),
            user: "ci".into(),
            role: Role::SelfService,
            environments: [Environment::parse("dev").unwrap()].into(),
            created_at: now,
            expires_at: Some(now + time::Duration::hours(1)),
            revoked_at: None,
            created_by: "root".into(),
        };
        assert_eq!(t.state(now), TokenState::Valid);
        assert_eq!(t.state(now + time::Duration::hours(1)), TokenState::Expired);
        assert_eq!(ApiToken { revoked_at: Some(now), ..t.clone() }.state(now), TokenState::Revoked);
        let policy = Policy::default();
        assert!(t.credential().covers(&Environment::parse("dev").unwrap(), &policy));
        assert!(!t.credential().covers(&Environment::parse("prod").unwrap(), &policy));
        assert!(
            ApiToken { environments: Default::default(), ..t }.credential().covers(&Environment::parse("prod").unwrap(), &policy)
        );
        let iam = Credential::Iam { arn: "arn:aws:iam::123456789012:user/alice".into() };
        assert!(!iam.covers(&Environment::parse("dev").unwrap(), &policy), "IAM needs a listed principal");
    }

    proptest! {
        #[test]
        fn star_only_pattern_matches_everything(text in ".{0,40}") {
            prop_assert!(glob(b"*", text.as_bytes()));
            prop_assert!(glob(text.as_bytes(), text.as_bytes()) || text.contains('*'));
        }
    }
}
