//! What a change to a guarded group was, what undoes it exactly, and which rules are ours.
//!
//! A rule is ours only when the store backs it ([`Backing`]): a description is anyone's to
//! write, so our marker may lead guard to leave a *removal* alone (closing is the reconcile's),
//! never to leave an addition or an edit in place. Without a baseline guard may close (revoke
//! what was added) but never open (restore what was removed or edited).
//!
//! Guard's own calls come back as events too. Before each call the engine notes the
//! [`step_keys`] of what it is about to do; an event's changes whose [`change_keys`] were noted
//! are its own ([`unnoted`] drops them), whatever identity the event names.

use std::collections::BTreeSet;
use std::fmt;

use super::{ChangeRequest, GroupRule, GuardRule, RuleSource, timed_rule};
use crate::{Cidr, Environment, Grant, Marker, PortSet, TargetId, Timestamp};

/// What a marker claims a rule is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// A grant's rule in this environment (`pc:<environment>`).
    Environment(Environment),
    /// The rule of this request's timed rule (`pc:timed/<request>`).
    TimedRule(String),
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Environment(env) => write!(f, "a grant's rule in {env}"),
            Claim::TimedRule(id) => write!(f, "the timed rule of request {id}"),
        }
    }
}

/// The marked rules of one group that the store backs: a live grant for that environment,
/// address and port on that group, or a live timed rule with that exact rule. Only these are
/// ours; a marked rule outside this set is an out-of-band change like any other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Backing {
    rules: BTreeSet<GuardRule>,
}

impl Backing {
    /// Records that the store backs `rule` (as observed, description included).
    pub fn insert(&mut self, rule: &GuardRule) {
        self.rules.insert(rule.clone());
    }

    /// Whether `rule` is ours: it carries our marker and the store backs exactly it.
    pub fn owns(&self, rule: &GuardRule, marker: &Marker) -> bool {
        rule.carries_marker(marker) && self.rules.contains(rule)
    }
}

/// Whether the live grant `grant`, on a group whose port set is `ports`, puts exactly `rule`
/// there: the same address, and one of the group's port ranges. (That `rule` claims the
/// grant's environment, the caller has read from its marker.)
pub fn grant_backs(rule: &GuardRule, grant: &Grant, ports: &PortSet, now: Timestamp) -> bool {
    let cidr = match &rule.source {
        RuleSource::Ipv4(c) | RuleSource::Ipv6(c) => Cidr::parse(c).ok(),
        RuleSource::PrefixList(_) | RuleSource::Group(_) => None,
    };
    let on_port = ports.iter().any(|p| {
        p.protocol.as_str() == rule.protocol && rule.from_port == Some(i32::from(p.from)) && rule.to_port == Some(i32::from(p.to))
    });
    grant.is_live(now) && cidr == Some(grant.cidr) && on_port
}

/// Whether `request`'s timed rule is live at `now` and puts exactly `rule` on `group`.
pub fn timed_rule_backs(rule: &GuardRule, request: &ChangeRequest, group: &TargetId, marker: &Marker, now: Timestamp) -> bool {
    request.timed_live(now)
        && request.group() == *group
        && request.add.iter().any(|added| timed_rule(request, added, marker) == *rule)
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

    /// Whether every rule this touches is ours to leave to the reconcile: added and edited
    /// rules the store backs, removed rules that carry our marker (closing is the reconcile's).
    /// A change that names a rule only by id counts as not ours: its content is not known here.
    pub fn only_ours(&self, marker: &Marker, backing: &Backing) -> bool {
        self.removed_ids.is_empty()
            && self.added.iter().chain(&self.edits).all(|r| backing.owns(&r.rule, marker))
            && self.removed.iter().all(|r| r.carries_marker(marker))
    }

    /// Every rule it names by content, added, edited or removed.
    pub fn rules(&self) -> impl Iterator<Item = &GuardRule> {
        self.added.iter().chain(&self.edits).map(|r| &r.rule).chain(&self.removed)
    }
}

/// Firewall steps on one group, carried out in this order: revoke by id, revoke by content,
/// authorize, then put edited rules back; and what a request for them asks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Steps {
    /// Rules to revoke by rule id.
    pub revoke_ids: Vec<String>,
    /// Rules to revoke by their exact permissions (no id known).
    pub revoke: Vec<GuardRule>,
    /// Rules to add exactly (a removal restored).
    pub authorize: Vec<GuardRule>,
    /// Edited rules to put back to their previous content.
    pub restore: Vec<(String, GuardRule)>,
    /// What the request asks to apply: rules to add, rules to remove (an edit is both).
    pub add: Vec<GuardRule>,
    pub remove: Vec<GuardRule>,
    /// What could not be undone exactly, or was left as it is, in words.
    pub notes: Vec<String>,
    /// Edits that left their rule exactly as the baseline has it: nothing to do, nothing filed.
    pub unchanged_edits: Vec<String>,
}

impl Steps {
    /// Nothing to undo and nothing to file.
    pub fn is_empty(&self) -> bool {
        self.add.is_empty() && self.remove.is_empty() && self.notes.is_empty()
    }

    /// Whether it changes the firewall at all.
    pub fn has_steps(&self) -> bool {
        !(self.revoke_ids.is_empty() && self.revoke.is_empty() && self.authorize.is_empty() && self.restore.is_empty())
    }
}

fn claim_note(rule: &GuardRule, marker: &Marker) -> Option<String> {
    let claim = rule.claim(marker)?;
    Some(format!(
        "\"{}\" claims to be {claim}, but nothing stored backs it: an out-of-band change like any other",
        rule.description.as_deref().unwrap_or_default()
    ))
}

/// The exact undo of `changes`, given the group's baseline (the last approved observation;
/// `None` before `guard baseline`). Rules the store backs are left to the reconcile, and so
/// are removals of rules carrying our marker (closing is the safe direction). Without a
/// baseline nothing is restored: additions are revoked, removals and edits are filed with a
/// note. An edit whose previous content is unknown is revoked (fail closed).
pub fn revert(changes: &Changes, baseline: Option<&[GroupRule]>, marker: &Marker, backing: &Backing) -> Steps {
    let by_id = |id: &str| baseline?.iter().find(|b| b.rule_id.as_deref() == Some(id)).map(|b| &b.rule);
    let mut out = Steps::default();
    let note_claim = |out: &mut Steps, rule: &GuardRule| {
        if let Some(note) = claim_note(rule, marker) {
            out.notes.push(note);
        }
    };
    for added in changes.added.iter().filter(|r| !backing.owns(&r.rule, marker)) {
        match &added.rule_id {
            Some(id) => out.revoke_ids.push(id.clone()),
            None => out.revoke.push(added.rule.clone()),
        }
        out.add.push(added.rule.clone());
        note_claim(&mut out, &added.rule);
    }
    for removed in changes.removed.iter().filter(|r| !r.carries_marker(marker)) {
        let Some(baseline) = baseline else {
            out.remove.push(removed.clone());
            out.notes.push(format!("{removed} was removed; the group has no baseline, so guard does not restore it"));
            continue;
        };
        let mut rule = removed.clone();
        if rule.description.is_none() {
            rule.description = baseline.iter().find(|b| b.rule.same_access(removed)).and_then(|b| b.rule.description.clone());
        }
        out.authorize.push(rule.clone());
        out.remove.push(rule);
    }
    for id in &changes.removed_ids {
        match by_id(id) {
            Some(rule) if rule.carries_marker(marker) => {}
            Some(rule) => {
                out.authorize.push(rule.clone());
                out.remove.push(rule.clone());
            }
            None if baseline.is_none() => {
                out.notes.push(format!("rule {id} was revoked; the group has no baseline, so guard does not restore it"))
            }
            None => out
                .notes
                .push(format!("rule {id} was revoked and its content is unknown (not in the baseline): it cannot be restored")),
        }
    }
    for edit in &changes.edits {
        let id = edit.rule_id.clone().unwrap_or_default();
        match by_id(&id) {
            Some(previous) if *previous == edit.rule => out.unchanged_edits.push(id),
            Some(previous) => {
                out.restore.push((id, previous.clone()));
                out.remove.push(previous.clone());
                out.add.push(edit.rule.clone());
                note_claim(&mut out, &edit.rule);
            }
            None if backing.owns(&edit.rule, marker) => {}
            None => {
                out.revoke_ids.push(id.clone());
                out.add.push(edit.rule.clone());
                let why = if baseline.is_none() { "the group has no baseline" } else { "not in the baseline" };
                out.notes.push(format!(
                    "rule {id} was edited and its previous content is unknown ({why}): it was revoked (fail closed)"
                ));
                note_claim(&mut out, &edit.rule);
            }
        }
    }
    out
}

/// How a group now differs from its baseline: rules that are new, rules that are gone, and
/// rules whose id is the same but whose content changed. Rules the store backs are the
/// reconcile's and left out; a marked rule nothing backs is compared like any other.
pub fn drift(baseline: &[GroupRule], observed: &[GroupRule], marker: &Marker, backing: &Backing) -> Changes {
    let baseline: Vec<GroupRule> = baseline.iter().filter(|r| !r.rule.carries_marker(marker)).cloned().collect();
    let observed: Vec<&GroupRule> = observed.iter().filter(|r| !backing.owns(&r.rule, marker)).collect();
    let mut matched = vec![false; baseline.len()];
    let mut changes = Changes::default();
    for rule in observed {
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

/// The baseline with the rules guard just restored under the ids they have now: a removal put
/// back by an authorize is a new rule with a new id. `None` when no id changed.
pub fn renumber(baseline: &[GroupRule], restored: &[GroupRule]) -> Option<Vec<GroupRule>> {
    let mut out = baseline.to_vec();
    let mut changed = false;
    for new in restored.iter().filter(|r| r.rule_id.is_some()) {
        let exact = out.iter().position(|b| b.rule == new.rule);
        let Some(i) = exact.or_else(|| out.iter().position(|b| b.rule.same_access(&new.rule))) else { continue };
        if out[i].rule_id != new.rule_id {
            out[i].rule_id = new.rule_id.clone();
            changed = true;
        }
    }
    changed.then_some(out)
}

fn key(group: &TargetId, what: impl fmt::Display) -> String {
    format!("{}/{} {what}", group.region, group.group_id)
}

/// The ledger keys of the steps guard is about to carry out on `group`: each names what its
/// call will look like in the event it causes.
pub fn step_keys(group: &TargetId, steps: &Steps) -> Vec<String> {
    let mut keys: Vec<String> = steps.revoke_ids.iter().map(|id| key(group, format_args!("-id {id}"))).collect();
    keys.extend(steps.revoke.iter().map(|r| key(group, format_args!("-rule {}", r.access()))));
    keys.extend(steps.authorize.iter().map(|r| key(group, format_args!("+rule {}", r.access()))));
    keys.extend(steps.restore.iter().map(|(id, r)| key(group, format_args!("~{id} {r}"))));
    keys
}

fn added_key(group: &TargetId, r: &GroupRule) -> String {
    key(group, format_args!("+rule {}", r.rule.access()))
}

fn removed_key(group: &TargetId, r: &GuardRule) -> String {
    key(group, format_args!("-rule {}", r.access()))
}

fn removed_id_key(group: &TargetId, id: &str) -> String {
    key(group, format_args!("-id {id}"))
}

fn edit_key(group: &TargetId, r: &GroupRule) -> String {
    key(group, format_args!("~{} {}", r.rule_id.as_deref().unwrap_or_default(), r.rule))
}

/// The ledger keys of every change an event reports on `group`.
pub fn change_keys(group: &TargetId, changes: &Changes) -> Vec<String> {
    let mut keys: Vec<String> = changes.added.iter().map(|r| added_key(group, r)).collect();
    keys.extend(changes.removed.iter().map(|r| removed_key(group, r)));
    keys.extend(changes.removed_ids.iter().map(|id| removed_id_key(group, id)));
    keys.extend(changes.edits.iter().map(|r| edit_key(group, r)));
    keys
}

/// The changes whose keys guard did not note: what someone else did.
pub fn unnoted(group: &TargetId, changes: &Changes, noted: &BTreeSet<String>) -> Changes {
    Changes {
        added: changes.added.iter().filter(|r| !noted.contains(&added_key(group, r))).cloned().collect(),
        removed: changes.removed.iter().filter(|r| !noted.contains(&removed_key(group, r))).cloned().collect(),
        removed_ids: changes.removed_ids.iter().filter(|id| !noted.contains(&removed_id_key(group, id))).cloned().collect(),
        edits: changes.edits.iter().filter(|r| !noted.contains(&edit_key(group, r))).cloned().collect(),
    }
}
