//! Guard (seed 003): out-of-band changes to guarded security groups, what undoes them exactly,
//! and who may approve them.
//!
//! Pure: the engine reads the event (or compares a group to its baseline), hands the changes
//! here with the baseline, carries out the [`Revert`], and stores the [`ChangeRequest`]; a
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

    /// A rule portcullis made (its description carries our marker): the reconcile's, not guard's.
    pub fn is_ours(&self, marker: &Marker) -> bool {
        self.description.as_deref().is_some_and(|d| marker.is_ours(d))
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

/// What was done to one group's inbound rules, by an event or found by comparing the group
/// with its baseline.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<GroupRule>,
    /// Removed rules given by content.
    pub removed: Vec<GuardRule>,
    /// Removed rules given only by id (`RevokeSecurityGroupIngress` with rule ids).
    pub removed_ids: Vec<String>,
    /// Edited rules: the id, and the content it has now.
    pub edits: Vec<GroupRule>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.removed_ids.is_empty() && self.edits.is_empty()
    }

    /// Whether every rule this touches is ours (so it belongs to the reconcile). A change that
    /// names a rule only by id counts as not ours: its content is not known here.
    pub fn only_ours(&self, marker: &Marker) -> bool {
        self.removed_ids.is_empty()
            && self.added.iter().chain(&self.edits).all(|r| r.rule.is_ours(marker))
            && self.removed.iter().all(|r| r.is_ours(marker))
    }
}

/// What undoes a change exactly, and what the request for it asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Revert {
    /// Additions to revoke by rule id.
    pub revoke_ids: Vec<String>,
    /// Additions to revoke by their exact permissions (no id known).
    pub revoke: Vec<GuardRule>,
    /// Removals to restore exactly.
    pub authorize: Vec<GuardRule>,
    /// Edited rules to put back to their previous content.
    pub restore: Vec<(String, GuardRule)>,
    /// What the request asks to apply: rules to add, rules to remove (an edit is both).
    pub add: Vec<GuardRule>,
    pub remove: Vec<GuardRule>,
    /// What could not be undone exactly, in words.
    pub notes: Vec<String>,
}

impl Revert {
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.notes.is_empty()
    }
}

/// The exact undo of `changes`, given the group's baseline (the last approved observation).
/// Rules with our marker are left to the reconcile. An edit whose previous content the
/// baseline does not know is revoked (fail closed), and a note says so.
pub fn revert(changes: &Changes, baseline: Option<&[GroupRule]>, marker: &Marker) -> Revert {
    let baseline = baseline.unwrap_or(&[]);
    let by_id = |id: &str| baseline.iter().find(|b| b.rule_id.as_deref() == Some(id)).map(|b| &b.rule);
    let mut out = Revert::default();
    for added in changes.added.iter().filter(|r| !r.rule.is_ours(marker)) {
        match &added.rule_id {
            Some(id) => out.revoke_ids.push(id.clone()),
            None => out.revoke.push(added.rule.clone()),
        }
        out.add.push(added.rule.clone());
    }
    for removed in changes.removed.iter().filter(|r| !r.is_ours(marker)) {
        let mut rule = removed.clone();
        if rule.description.is_none() {
            rule.description = baseline.iter().find(|b| b.rule.same_access(removed)).and_then(|b| b.rule.description.clone());
        }
        out.authorize.push(rule.clone());
        out.remove.push(rule);
    }
    for id in &changes.removed_ids {
        match by_id(id) {
            Some(rule) if rule.is_ours(marker) => {}
            Some(rule) => {
                out.authorize.push(rule.clone());
                out.remove.push(rule.clone());
            }
            None => out
                .notes
                .push(format!("rule {id} was revoked and its content is unknown (not in the baseline): it cannot be restored")),
        }
    }
    for edit in &changes.edits {
        let id = edit.rule_id.clone().unwrap_or_default();
        match by_id(&id) {
            Some(previous) if previous.is_ours(marker) && edit.rule.is_ours(marker) => {}
            Some(previous) => {
                out.restore.push((id, previous.clone()));
                out.remove.push(previous.clone());
                out.add.push(edit.rule.clone());
            }
            None => {
                out.revoke_ids.push(id.clone());
                out.add.push(edit.rule.clone());
                out.notes.push(format!(
                    "rule {id} was edited and its previous content is unknown (not in the baseline): it was revoked (fail closed)"
                ));
            }
        }
    }
    out
}

/// How a group now differs from its baseline, ignoring our own rules: rules that are new,
/// rules that are gone, and rules whose id is the same but whose content changed.
pub fn drift(baseline: &[GroupRule], observed: &[GroupRule], marker: &Marker) -> Changes {
    let theirs = |rules: &[GroupRule]| rules.iter().filter(|r| !r.rule.is_ours(marker)).cloned().collect::<Vec<_>>();
    let (baseline, observed) = (theirs(baseline), theirs(observed));
    let mut matched = vec![false; baseline.len()];
    let mut changes = Changes::default();
    for rule in &observed {
        let same_id = baseline.iter().position(|b| b.rule_id.is_some() && b.rule_id == rule.rule_id);
        let same_rule = || baseline.iter().enumerate().position(|(i, b)| !matched[i] && b.rule == rule.rule);
        match same_id.or_else(same_rule) {
            Some(i) => {
                matched[i] = true;
                if baseline[i].rule != rule.rule {
                    changes.edits.push(rule.clone());
                }
            }
            None => changes.added.push(rule.clone()),
        }
    }
    changes.removed = baseline.into_iter().zip(matched).filter(|(_, m)| !m).map(|(b, _)| b.rule).collect();
    changes
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
    /// Approve an addition for a time only: its rules become a rule grant that expires.
    ApproveFor(time::Duration),
    Deny {
        reason: Option<String>,
    },
}

/// Why a decision was refused; each is told to the decider and audited.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{who} is not an approver")]
    NotApprover { who: String },
    #[error("{who} made this change and may not decide on it")]
    OwnRequest { who: String },
    #[error("request {id} is already {} by {}", status.as_str(), by.join(", "))]
    AlreadyDecided { id: String, status: RequestStatus, by: Vec<String> },
    #[error("{who} has already approved request {id}; it needs another approver")]
    AlreadyApproved { id: String, who: String },
    #[error("request {id} expired undecided")]
    Expired { id: String },
    #[error("request {id} removes or edits rules; only an addition can be approved for a time")]
    NotAnAddition { id: String },
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
        status @ RequestStatus::Approved => return Err(Refusal::AlreadyDecided { id, status, by: request.approvals.clone() }),
        status @ RequestStatus::Denied => {
            return Err(Refusal::AlreadyDecided { id, status, by: request.denied_by.iter().cloned().collect() });
        }
    }
    let who = decider.name.clone();
    if !approvers.users.contains(&who) && approvers.groups.is_disjoint(&decider.groups) {
        return Err(Refusal::NotApprover { who });
    }
    let theirs = request.requester_user.as_deref() == Some(who.as_str())
        || approvers.people.get(&who).is_some_and(|patterns| patterns.iter().any(|p| p.matches(&request.requester)));
    if theirs {
        return Err(Refusal::OwnRequest { who });
    }
    let mut next = request.clone();
    next.version += 1;
    match verdict {
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

mod grants;
mod request;
pub use grants::{RuleGrantChange, RuleGrantOverflow, RuleGrantPlan, plan_rule_grants, rule_grant_groups, rule_grant_rule};
pub use request::{ChangeRequest, RequestStatus, Temporary};

#[cfg(test)]
mod tests;
