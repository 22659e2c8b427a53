use serde::{Deserialize, Serialize};

use crate::{Grant, Timestamp};

/// What happened, in the audit log's words.
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
    /// A rule made without our marker (by seed 000's Lambda) was taken over.
    Adopted,
    /// An API token was created or revoked (`cidr` is empty; `reason` names the token).
    TokenCreated,
    TokenRevoked,
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
        }
    }

    pub fn parse(text: &str) -> Option<Action> {
        use Action::*;
        [Added, Refreshed, Removed, Expired, DriftRepaired, Refused, Approved, Denied, Adopted, TokenCreated, TokenRevoked]
            .into_iter()
            .find(|a| a.as_str() == text)
    }
}

/// The interface through which a change came.
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

/// One append-only record of a state change: who, what, through which interface,
/// before and after, and why.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// Assigned by the store; 0 before it is stored.
    #[serde(default)]
    pub id: i64,
    #[serde(with = "time::serde::rfc3339")]
    pub at: Timestamp,
    pub actor: String,
    pub interface: Interface,
    pub action: Action,
    pub environment: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cidr: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Grant>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<Grant>,
    pub reason: String,
}
