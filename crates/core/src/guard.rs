//! Guard (out-of-band changes reverted and approved, as VoyagerInnovations' tool did): out-of-band changes to guarded security groups, what undoes them exactly,
//! and who may approve them.
//!
//! Pure: the engine reads the event (or compares a group to its baseline), hands the changes
//! here with the baseline, carries out the [`Steps`], and stores the [`ChangeRequest`]; a
//! decision is [`decide`]d here and written back conditionally.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::{Marker, PrincipalPattern, Route, TargetId, Timestamp};

/// The tag that marks a group as guarded when guard selects groups by tag.
pub const GUARD_TAG: &str = "PortcullisGuard";
/// The requester of a change that no event reported (found by the guard sweep).
pub const UNKNOWN_REQUESTER: &str = "unknown (no event)";

/// Where a rule lets traffic come from.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuleSource {
    Ipv4(String),
    Ipv6(String),
    PrefixList(String),
    /// Another security group (`sg-…`, or `account/sg-…` across accounts).
    Group(String),
}

impl fmt::Display for RuleSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleSource::Ipv4(c) | RuleSource::Ipv6(c) | RuleSource::PrefixList(c) => f.write_str(c),
            RuleSource::Group(g) => write!(f, "group {g}"),
        }
    }
}

/// One inbound rule of any kind, as guard sees it: protocol, ports, source, description.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GuardRule {
    /// `tcp`, `udp`, `icmp`, `icmpv6`, `-1` (all traffic) or an IP protocol number.
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_port: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to_port: Option<i32>,
    pub source: RuleSource,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl GuardRule {
    /// A rule in one spelling: protocol names for 6/17/1/58, `-1` for all traffic (no ports),
    /// `-1` ports as none, an empty description as none.
    pub fn new(
        protocol: &str,
        from_port: Option<i32>,
        to_port: Option<i32>,
        source: RuleSource,
        description: Option<&str>,
    ) -> GuardRule {
        let protocol = match protocol.to_ascii_lowercase().as_str() {
            "6" => "tcp".to_string(),
            "17" => "udp".to_string(),
            "1" => "icmp".to_string(),
            "58" => "icmpv6".to_string(),
            "all" | "-1" => "-1".to_string(),
            other => other.to_string(),
        };
        let all = protocol == "-1";
        let port = |p: Option<i32>| p.filter(|&p| !all && p != -1);
        GuardRule {
            from_port: port(from_port),
            to_port: port(to_port),
            protocol,
            source,
            description: description.map(str::trim).filter(|d| !d.is_empty()).map(str::to_string),
        }
    }

    /// The same access (protocol, ports, source), whatever the description says.
    pub fn same_access(&self, other: &GuardRule) -> bool {
        (&self.protocol, self.from_port, self.to_port, &self.source)
            == (&other.protocol, other.from_port, other.to_port, &other.source)
    }

    /// Whether its description starts with our marker. That is only a claim: a description is
    /// anyone's to write, so guard takes a rule for ours only when the store backs it
    /// ([`Backing`]).
    pub fn carries_marker(&self, marker: &Marker) -> bool {
        self.description.as_deref().is_some_and(|d| marker.is_ours(d))
    }

    /// What its marker claims it is: a grant's rule in an environment, or a timed rule's.
    pub fn claim(&self, marker: &Marker) -> Option<Claim> {
        let d = self.description.as_deref()?;
        if let Some(id) = marker.decode_timed_rule(d) {
            return Some(Claim::TimedRule(id.to_string()));
        }
        marker.decode(d).map(Claim::Environment)
    }

    /// The rule without its description: what it lets in.
    pub fn access(&self) -> GuardRule {
        GuardRule { description: None, ..self.clone() }
    }
}

impl fmt::Display for GuardRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.protocol.as_str(), self.from_port, self.to_port) {
            ("-1", _, _) => f.write_str("all traffic")?,
            (p, Some(a), Some(b)) if a == b => write!(f, "{p} {a}")?,
            (p @ ("icmp" | "icmpv6"), Some(a), Some(b)) => write!(f, "{p} type {a} code {b}")?,
            (p, Some(a), Some(b)) => write!(f, "{p} {a}-{b}")?,
            (p, _, _) => write!(f, "{p} all ports")?,
        }
        write!(f, " from {}", self.source)?;
        if let Some(d) = &self.description {
            write!(f, " (\"{d}\")")?;
        }
        Ok(())
    }
}

/// Which groups guard watches in a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupSelection {
    /// Groups tagged `PortcullisGuard=true`.
    Tagged,
    /// Every group.
    All,
    /// These groups.
    Ids(BTreeSet<String>),
    /// Those of these groups tagged `PortcullisGuard=true` (one group's check, for an event).
    TaggedAmong(BTreeSet<String>),
}

/// How guard's firewall finds a scope's groups: the selection as a request, which the adapter
/// makes word for word.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuardDescribe {
    /// The groups are these ids: no describe is needed to know them.
    Known(BTreeSet<String>),
    /// A describe of the groups, narrowed to these ids (when given) and to those tagged
    /// `PortcullisGuard=true` (when `tagged`).
    Describe { ids: Option<BTreeSet<String>>, tagged: bool },
}

impl GroupSelection {
    /// How the groups it selects are found.
    pub fn describe(&self) -> GuardDescribe {
        match self {
            GroupSelection::Ids(ids) => GuardDescribe::Known(ids.clone()),
            GroupSelection::All => GuardDescribe::Describe { ids: None, tagged: false },
            GroupSelection::Tagged => GuardDescribe::Describe { ids: None, tagged: true },
            GroupSelection::TaggedAmong(ids) => GuardDescribe::Describe { ids: Some(ids.clone()), tagged: true },
        }
    }
}

/// Where guard watches: a region (and account, through `role_arn`) and which groups there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardScope {
    pub route: Route,
    pub selection: GroupSelection,
}

impl GuardScope {
    /// The account a role in another account names (`arn:aws:iam::ACCOUNT:role/…`); `None`
    /// for the process's own account.
    pub fn account(&self) -> Option<&str> {
        self.route.role_arn.as_deref().and_then(|arn| arn.split(':').nth(4)).filter(|a| !a.is_empty())
    }

    /// This scope narrowed to one group, so checking an event reads that group only; `None`
    /// when a list of ids does not name it (no call needed to know it is not guarded).
    pub fn only(&self, group_id: &str) -> Option<GuardScope> {
        let one = BTreeSet::from([group_id.to_string()]);
        let selection = match &self.selection {
            GroupSelection::Ids(ids) | GroupSelection::TaggedAmong(ids) if !ids.contains(group_id) => return None,
            GroupSelection::Ids(_) | GroupSelection::All => GroupSelection::Ids(one),
            GroupSelection::Tagged | GroupSelection::TaggedAmong(_) => GroupSelection::TaggedAmong(one),
        };
        Some(GuardScope { route: self.route.clone(), selection })
    }

    /// Whether an event from `account` in `region` is this scope's.
    pub fn covers(&self, account: &str, region: &str) -> bool {
        self.route.region == region && self.account().is_none_or(|a| a == account)
    }
}

/// A guarded group as observed: where it is, whose it is, and every inbound rule with its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuardedGroup {
    pub id: TargetId,
    pub account: String,
    pub rules: Vec<GroupRule>,
}

/// A rule on a group, with its id when the firewall (or the event) named one.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct GroupRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<String>,
    pub rule: GuardRule,
}

/// Who may decide requests, and who is who.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Approvers {
    /// Slack user ids, or CLI/API user names.
    pub users: BTreeSet<String>,
    /// Slack user-group ids whose members may approve.
    pub groups: BTreeSet<String>,
    /// Distinct approvals a request needs.
    pub min_approvals: usize,
    /// A user (Slack id or user name) and the AWS identities that are theirs.
    pub people: BTreeMap<String, Vec<PrincipalPattern>>,
    /// The longest term "Approve for …" may give (`temporary_approval`).
    pub max_term: time::Duration,
    /// Whether a requester may apply their own addition at once, for at most this long, as a
    /// timed rule (`break_glass_ttl`); `None` when break-glass is off.
    pub break_glass: Option<time::Duration>,
}

impl Approvers {
    /// The user a principal ARN belongs to, when `people` knows.
    pub fn user_of(&self, arn: &str) -> Option<&str> {
        self.people.iter().find(|(_, patterns)| patterns.iter().any(|p| p.matches(arn))).map(|(user, _)| user.as_str())
    }
}

/// The person deciding, and the user groups they belong to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decider {
    pub name: String,
    pub groups: BTreeSet<String>,
}

/// What a decider chose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Approve,
    /// Approve an addition for a time only: its rules become a timed rule that expires.
    ApproveFor(time::Duration),
    Deny {
        reason: Option<String>,
    },
    /// The requester applies their own addition at once, for a time, as a timed rule; every
    /// approver is told.
    BreakGlass {
        reason: String,
        term: time::Duration,
    },
}

/// Why a decision was refused; each is told to the decider and audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{who} is not an approver")]
    NotApprover { who: String },
    #[error("{who} made this change and may not decide on it")]
    OwnRequest { who: String },
    #[error("request {id} is already {}", status.decided_by(by))]
    AlreadyDecided { id: String, status: RequestStatus, by: Vec<String> },
    #[error("{who} has already approved request {id}; it needs another approver")]
    AlreadyApproved { id: String, who: String },
    #[error("request {id} expired undecided")]
    Expired { id: String },
    #[error("request {id} removes or edits rules; only an addition can be approved for a time")]
    NotAnAddition { id: String },
    #[error("a term of {asked} is longer than the {max} an approval for a time may give (temporary_approval)")]
    TermTooLong { asked: time::Duration, max: time::Duration },
    #[error("break-glass is off here ([guard] break_glass = true turns it on)")]
    BreakGlassOff,
    #[error("{who} did not make this change; only its requester may break the glass")]
    NotRequester { who: String },
    #[error("a break-glass of {asked} is longer than the {max} it may last (break_glass_ttl)")]
    BreakGlassTooLong { asked: time::Duration, max: time::Duration },
}

/// A decider's reason (a denial's, a break-glass's) as it may be stored: like a description,
/// at most 200 printable characters.
pub fn check_reason(text: &str) -> Result<(), crate::InvalidInput> {
    crate::Description::parse(text).map(|_| ()).map_err(|e| match e {
        crate::InvalidInput::InvalidDescription { reason } => crate::InvalidInput::InvalidReason { reason },
        other => other,
    })
}

/// The request after `decider`'s verdict, or why it may not be given. A deny by any approver
/// ends the request; approvals count distinct approvers up to `min_approvals`.
pub fn decide(
    request: &ChangeRequest,
    decider: &Decider,
    verdict: &Verdict,
    approvers: &Approvers,
    now: Timestamp,
) -> Result<ChangeRequest, Refusal> {
    let id = request.id.clone();
    match request.status {
        RequestStatus::Pending if now >= request.expires_at => return Err(Refusal::Expired { id }),
        RequestStatus::Pending => {}
        RequestStatus::Expired => return Err(Refusal::Expired { id }),
        status @ (RequestStatus::Approved | RequestStatus::Applied | RequestStatus::Failed) => {
            return Err(Refusal::AlreadyDecided { id, status, by: request.approvals.clone() });
        }
        status @ RequestStatus::Denied => {
            return Err(Refusal::AlreadyDecided { id, status, by: request.denied_by.iter().cloned().collect() });
        }
    }
    let who = decider.name.clone();
    let theirs = request.requester_user.as_deref() == Some(who.as_str())
        || approvers.people.get(&who).is_some_and(|patterns| patterns.iter().any(|p| p.matches(&request.requester)));
    if let Verdict::BreakGlass { reason, term } = verdict {
        return break_glass(request, who, theirs, reason, *term, approvers, now);
    }
    if !approvers.users.contains(&who) && approvers.groups.is_disjoint(&decider.groups) {
        return Err(Refusal::NotApprover { who });
    }
    if theirs {
        return Err(Refusal::OwnRequest { who });
    }
    let mut next = request.clone();
    next.version += 1;
    match verdict {
        Verdict::BreakGlass { .. } => unreachable!("decided above"),
        Verdict::Deny { reason } => {
            next.status = RequestStatus::Denied;
            next.denied_by = Some(who);
            next.reason = reason.clone();
            next.decided_at = Some(now);
        }
        Verdict::Approve | Verdict::ApproveFor(_) if request.approvals.contains(&who) => {
            return Err(Refusal::AlreadyApproved { id, who });
        }
        Verdict::ApproveFor(_) if !request.remove.is_empty() || request.add.is_empty() => {
            return Err(Refusal::NotAnAddition { id });
        }
        Verdict::ApproveFor(term) if *term > approvers.max_term => {
            return Err(Refusal::TermTooLong { asked: *term, max: approvers.max_term });
        }
        Verdict::Approve | Verdict::ApproveFor(_) => {
            if let Verdict::ApproveFor(term) = verdict {
                let seconds = term.whole_seconds().max(1);
                let shortest = next.temporary.map_or(seconds, |t| t.seconds.min(seconds));
                next.temporary = Some(Temporary { seconds: shortest, until: None, ended_at: None });
            }
            next.approvals.push(who);
            if next.approvals.len() >= approvers.min_approvals.max(1) {
                next.status = RequestStatus::Approved;
                next.decided_at = Some(now);
                if let Some(t) = &mut next.temporary {
                    t.until = Some(now + time::Duration::seconds(t.seconds));
                }
            }
        }
    }
    Ok(next)
}

/// A requester's break-glass: their own addition approved at once for `term` (at most
/// `break_glass_ttl`), as a timed rule.
fn break_glass(
    request: &ChangeRequest,
    who: String,
    theirs: bool,
    reason: &str,
    term: time::Duration,
    approvers: &Approvers,
    now: Timestamp,
) -> Result<ChangeRequest, Refusal> {
    let max = approvers.break_glass.ok_or(Refusal::BreakGlassOff)?;
    if !theirs {
        return Err(Refusal::NotRequester { who });
    }
    if !request.remove.is_empty() || request.add.is_empty() {
        return Err(Refusal::NotAnAddition { id: request.id.clone() });
    }
    if term > max {
        return Err(Refusal::BreakGlassTooLong { asked: term, max });
    }
    let mut next = request.clone();
    next.version += 1;
    next.status = RequestStatus::Approved;
    next.decided_at = Some(now);
    next.approvals = vec![who];
    next.break_glass = Some(reason.to_string());
    let seconds = term.whole_seconds().max(1);
    next.temporary = Some(Temporary { seconds, until: Some(now + time::Duration::seconds(seconds)), ended_at: None });
    Ok(next)
}

/// The request expired, if it is pending past its time.
pub fn expire(request: &ChangeRequest, now: Timestamp) -> Option<ChangeRequest> {
    (request.status == RequestStatus::Pending && now >= request.expires_at).then(|| {
        let mut next = request.clone();
        next.status = RequestStatus::Expired;
        next.decided_at = Some(now);
        next.version += 1;
        next
    })
}

mod request;
mod revert;
mod timed;
pub use request::{ChangeRequest, RequestStatus, Temporary};
pub use revert::{
    Backing, Changes, Claim, Steps, change_keys, drift, grant_backs, renumber, revert, step_keys, timed_rule_backs, unnoted,
};
pub use timed::{TimedRuleChange, TimedRuleOverflow, TimedRulePlan, plan_timed_rules, timed_rule, timed_rule_groups};

#[cfg(test)]
mod tests;
