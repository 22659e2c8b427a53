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

/// Where a request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RequestStatus {
    Pending,
    Approved,
    Denied,
    Expired,
}

impl RequestStatus {
    pub fn as_str(&self) -> &'static str {
        match self {
            RequestStatus::Pending => "pending",
            RequestStatus::Approved => "approved",
            RequestStatus::Denied => "denied",
            RequestStatus::Expired => "expired",
        }
    }

    pub fn parse(text: &str) -> Option<RequestStatus> {
        use RequestStatus::*;
        [Pending, Approved, Denied, Expired].into_iter().find(|s| s.as_str() == text)
    }
}

/// A reverted out-of-band change, waiting for (or past) a decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRequest {
    pub id: String,
    /// The CloudTrail event id (or `sweep:…`): a redelivered event files nothing new.
    pub event_id: String,
    /// The ARN that made the change, or [`UNKNOWN_REQUESTER`].
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
    pub created_at: Timestamp,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: Timestamp,
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub decided_at: Option<Timestamp>,
    /// When an approved change was applied; none while it still has to be.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub applied_at: Option<Timestamp>,
    /// A temporary approval ("Approve for 24 h"): the added rules are a rule grant, with our
    /// marker, until it expires; none for an ordinary approval.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temporary: Option<Temporary>,
    /// Bumped by every write; a decision is written only over the version it read.
    #[serde(default)]
    pub version: u64,
}

/// The term of a temporary approval, and where its rule grant stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Temporary {
    /// The shortest term an approver asked for (least privilege wins).
    pub seconds: i64,
    /// When the rule grant expires: set when the request is approved.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    /// When its expiry was recorded, its rules revoked; none while it is live or overdue.
    #[serde(default, with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
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
            version: 0,
        }
    }

    /// The group this request is about.
    pub fn group(&self) -> TargetId {
        TargetId { region: self.region.clone(), group_id: self.group_id.clone() }
    }

    /// When its rule grant expires, if it is an approved temporary one whose expiry is not
    /// recorded yet (live, or due at `until`).
    pub fn rule_grant_until(&self) -> Option<Timestamp> {
        let t = self.temporary.as_ref().filter(|t| self.status == RequestStatus::Approved && t.ended_at.is_none())?;
        t.until
    }

    /// A temporary approval's term in words: `for 2h once approved`, `a rule grant until …`,
    /// `a rule grant that expired at …`; none for an ordinary request.
    pub fn term_in_words(&self) -> Option<String> {
        let t = self.temporary.as_ref()?;
        Some(match (t.until, t.ended_at) {
            (_, Some(ended)) => format!("a rule grant that expired at {}", crate::format_utc(ended)),
            (Some(until), None) => format!("a rule grant until {}", crate::format_utc(until)),
            (None, None) => {
                let term = time::Duration::seconds(t.seconds);
                format!("for {} once approved", crate::time_left(self.created_at + term, self.created_at))
            }
        })
    }

    /// Whether its rule grant opens the firewall at `now`.
    pub fn rule_grant_live(&self, now: Timestamp) -> bool {
        self.rule_grant_until().is_some_and(|until| now < until)
    }

    /// The change in words, one rule a line: `+ tcp 22 from 203.0.113.0/24`, `- …`.
    pub fn rules_in_words(&self) -> Vec<String> {
        let add = self.add.iter().map(|r| format!("+ {r}"));
        add.chain(self.remove.iter().map(|r| format!("- {r}"))).collect()
    }
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
pub use grants::{RuleGrantChange, RuleGrantOverflow, RuleGrantPlan, plan_rule_grants, rule_grant_groups, rule_grant_rule};

#[cfg(test)]
mod tests;
