//! Change requests: a reverted out-of-band change, where it stands, and its temporary
//! approval's term.

use serde::{Deserialize, Serialize};

use super::{GuardRule, GuardedGroup};
use crate::{TargetId, Timestamp};

/// Where a request stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestStatus {
    Pending,
    /// Decided: to be applied (or, approved for a time, its timed rule put on).
    Approved,
    /// Approved, and the change is on the group.
    Applied,
    /// Approved, and applying it failed (`failure` says why); the guard sweep retries.
    Failed,
    Denied,
    Expired,
}

impl RequestStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Applied => "applied",
            RequestStatus::Failed => "failed",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<RequestStatus> {
        use RequestStatus::*;
        [Pending, Approved, Applied, Failed, Denied, Expired].into_iter().find(|s| s.as_str() == text)
    }

    /// How a decided request is described, with who decided: `approved by bob`, `approved by
    /// bob and applied`, `denied by carol`, …
    pub fn decided_by(&self, by: &[String]) -> String {
        let by = by.join(", ");
        match self {
            RequestStatus::Applied => format!("approved by {by} and applied"),
            RequestStatus::Failed => format!("approved by {by} (its apply failed; the guard sweep retries)"),
            other => format!("{} by {by}", other.as_str()),
        }
    }

    /// Approved, whether applied yet or not.
    pub fn is_approved(&self) -> bool {
        matches!(self, RequestStatus::Approved | RequestStatus::Applied | RequestStatus::Failed)
    }
}

/// A reverted out-of-band change, waiting for (or past) a decision.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub id: String,
    /// The CloudTrail event id (or `sweep:…`): a redelivered event files nothing new.
    pub event_id: String,
    /// The ARN that made the change, or [`UNKNOWN_REQUESTER`](super::UNKNOWN_REQUESTER).
    pub requester: String,
    /// Who that is, from `[guard.people]`, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requester_user: Option<String>,
    pub account: String,
    pub region: String,
    pub group_id: String,
    pub add: Vec<GuardRule>,
    pub remove: Vec<GuardRule>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    pub status: RequestStatus,
    /// Distinct approvers so far, in the order they approved.
    #[serde(default)]
    pub approvals: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denied_by: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, format = DateTime))]
    pub expires_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub decided_at: Option<Timestamp>,
    /// When an approved change was applied; none while it still has to be.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub applied_at: Option<Timestamp>,
    /// A temporary approval ("Approve for 24 h"): the added rules are a timed rule, with our
    /// marker, until it expires; none for an ordinary approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporary: Option<Temporary>,
    /// Why the last apply failed (status `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Later events that reported this same change (the first one is `event_id`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reported_by: Vec<String>,
    /// The requester's reason, when they broke the glass (applied their own addition for a time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// Bumped by every write; a decision is written only over the version it read.
    #[serde(default)]
    pub version: u64,
}

/// The term of a temporary approval, and where its timed rule stands.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Temporary {
    /// The shortest term an approver asked for (least privilege wins).
    pub seconds: i64,
    /// When the timed rule expires: set when the request is approved.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub until: Option<Timestamp>,
    /// When its expiry was recorded, its rules revoked; none while it is live or overdue.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<String>, format = DateTime))]
    pub ended_at: Option<Timestamp>,
}

impl ChangeRequest {
    /// A new pending request about `group`, made by `requester`, open until `created_at + ttl`;
    /// the change itself is added to `add` and `remove`.
    pub fn pending(
        id: &str,
        event_id: &str,
        requester: &str,
        group: &GuardedGroup,
        created_at: Timestamp,
        ttl: time::Duration,
    ) -> ChangeRequest {
        ChangeRequest {
            id: id.to_string(),
            event_id: event_id.to_string(),
            requester: requester.to_string(),
            requester_user: None,
            account: group.account.clone(),
            region: group.id.region.clone(),
            group_id: group.id.group_id.clone(),
            add: vec![],
            remove: vec![],
            notes: vec![],
            status: RequestStatus::Pending,
            approvals: vec![],
            denied_by: None,
            reason: None,
            created_at,
            expires_at: created_at + ttl,
            decided_at: None,
            applied_at: None,
            temporary: None,
            failure: None,
            reported_by: vec![],
            break_glass: None,
            version: 0,
        }
    }

    /// The group this request is about.
    pub fn group(&self) -> TargetId {
        TargetId { region: self.region.clone(), group_id: self.group_id.clone() }
    }

    /// When its timed rule expires, if it is an approved temporary one whose expiry is not
    /// recorded yet (live, or due at `until`).
    pub fn timed_until(&self) -> Option<Timestamp> {
        let t = self.temporary.as_ref().filter(|t| self.status.is_approved() && t.ended_at.is_none())?;
        t.until
    }

    /// A temporary approval's term in words: `for 2h once approved`, `a timed rule until …`,
    /// `a timed rule that expired at …`; none for an ordinary request.
    pub fn term_in_words(&self) -> Option<String> {
        let t = self.temporary.as_ref()?;
        Some(match (t.until, t.ended_at) {
            (_, Some(ended)) => format!("a timed rule that expired at {}", crate::format_utc(ended)),
            (Some(until), None) => format!("a timed rule until {}", crate::format_utc(until)),
            (None, None) => {
                let term = time::Duration::seconds(t.seconds);
                format!("for {} once approved", crate::time_left(self.created_at + term, self.created_at))
            }
        })
    }

    /// Whether its timed rule opens the firewall at `now`.
    pub fn timed_live(&self, now: Timestamp) -> bool {
        self.timed_until().is_some_and(|until| now < until)
    }

    /// Whether it asks for exactly `add` and `remove` on `group` (another report of it).
    pub fn is_change(&self, group: &TargetId, add: &[GuardRule], remove: &[GuardRule]) -> bool {
        let same = |a: &[GuardRule], b: &[GuardRule]| {
            let mut a: Vec<GuardRule> = a.iter().map(GuardRule::access).collect();
            let mut b: Vec<GuardRule> = b.iter().map(GuardRule::access).collect();
            a.sort();
            b.sort();
            a == b
        };
        self.group() == *group && same(&self.add, add) && same(&self.remove, remove)
    }

    /// The change in words, one rule a line: `+ tcp 22 from 203.0.113.0/24`, `- …`.
    pub fn rules_in_words(&self) -> Vec<String> {
        let add = self.add.iter().map(|r| format!("+ {r}"));
        add.chain(self.remove.iter().map(|r| format!("- {r}"))).collect()
    }
}
