//! Guard's view of the in-memory EC2 (`test-support`): [`MemoryFirewall`] as a
//! [`GuardFirewall`] too, one set of groups for both seams, so the reconcile and guard meet
//! as they do on EC2. Every rule has an id; rules guard sees but the grants' seam does not
//! (other protocols and sources) are kept beside the groups' CIDR rules.
//!
//! It also keeps a trail, as CloudTrail would: each call that changed a group's inbound rules
//! (the grants' applies and guard's own calls), readable as the [`GuardEvent`]s guard would
//! get ([`MemoryFirewall::take_trail`]), and people's changes made by hand
//! ([`MemoryFirewall::by_hand`]) come back as their event. So a test can feed guard its own
//! calls' events, as EventBridge would.

use std::sync::PoisonError;

use async_trait::async_trait;
use portcullis_core::guard::{Changes, GUARD_TAG, GroupRule, GuardDescribe, GuardRule, GuardScope, GuardedGroup, RuleSource};
use portcullis_core::{Cidr, ObservedRule, PortRange, Protocol, Route, TargetId};

use crate::{ErrorClass, FirewallError, GuardEvent, GuardFirewall, MemoryFirewall};

/// The account every in-memory group belongs to.
pub const MEMORY_ACCOUNT: &str = "123456789012";

/// A change a person makes by hand, as its API call names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HandChange {
    Authorize(GuardRule),
    Revoke(GuardRule),
    RevokeById(String),
    Modify(String, GuardRule),
}

/// One call that changed a group, as CloudTrail records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TrailRecord {
    pub(crate) event_name: &'static str,
    pub(crate) group: TargetId,
    pub(crate) changes: Changes,
}

/// The rule as the grants' seam keeps it, if it is one it can keep (TCP or UDP ports from a CIDR).
fn as_observed(rule: &GuardRule) -> Option<ObservedRule> {
    let protocol = match rule.protocol.as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return None,
    };
    let raw = match &rule.source {
        RuleSource::Ipv4(c) | RuleSource::Ipv6(c) => c.clone(),
        RuleSource::PrefixList(_) | RuleSource::Group(_) => return None,
    };
    let port = |p: Option<i32>| p.and_then(|p| u16::try_from(p).ok());
    let ports = PortRange { protocol, from: port(rule.from_port)?, to: port(rule.to_port)? };
    Some(ObservedRule { cidr: Cidr::parse(&raw).ok()?, raw_cidr: raw, ports, description: rule.description.clone() })
}

/// An observed CIDR rule as guard reads it.
fn as_guard(rule: &ObservedRule) -> GuardRule {
    let source = if rule.raw_cidr.contains(':') {
        RuleSource::Ipv6(rule.raw_cidr.clone())
    } else {
        RuleSource::Ipv4(rule.raw_cidr.clone())
    };
    let (from, to) = (Some(i32::from(rule.ports.from)), Some(i32::from(rule.ports.to)));
    GuardRule::new(rule.ports.protocol.as_str(), from, to, source, rule.description.as_deref())
}

impl MemoryFirewall {
    /// What `sts:GetCallerIdentity` answers (`None`: it fails).
    pub fn set_identity(&self, arn: Option<&str>) {
        *self.identity.lock().unwrap_or_else(PoisonError::into_inner) = arn.map(str::to_string);
    }

    fn new_id(&self) -> String {
        format!("sgr-{:017x}", self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1)
    }

    /// The id of a CIDR rule, given it when first seen.
    pub(crate) fn id_of(&self, group: &TargetId, rule: &ObservedRule) -> String {
        let key = (group.clone(), rule.raw_cidr.clone(), rule.ports);
        let mut ids = self.ids.lock().unwrap_or_else(PoisonError::into_inner);
        ids.entry(key).or_insert_with(|| self.new_id()).clone()
    }

    pub(crate) fn forget_id(&self, group: &TargetId, rule: &ObservedRule) {
        self.ids.lock().unwrap_or_else(PoisonError::into_inner).remove(&(group.clone(), rule.raw_cidr.clone(), rule.ports));
    }

    /// Every inbound rule of a group, with its id, as guard sees it (sorted).
    pub fn guard_rules(&self, region: &str, group_id: &str) -> Vec<GroupRule> {
        let id = TargetId { region: region.into(), group_id: group_id.into() };
        let cidr_rules = self.rules(region, group_id);
        let mut out: Vec<GroupRule> =
            cidr_rules.iter().map(|r| GroupRule { rule_id: Some(self.id_of(&id, r)), rule: as_guard(r) }).collect();
        out.extend(self.others.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned().unwrap_or_default());
        out.sort();
        out
    }

    /// Adds `rule` unless the same access is there; its new id, or `None` (a duplicate).
    fn add_rule(&self, group: &TargetId, rule: &GuardRule, id: Option<String>) -> Option<String> {
        if self.guard_rules(&group.region, &group.group_id).iter().any(|r| r.rule.same_access(rule)) {
            return None;
        }
        let id = id.unwrap_or_else(|| self.new_id());
        match as_observed(rule) {
            Some(observed) => {
                self.ids
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert((group.clone(), observed.raw_cidr.clone(), observed.ports), id.clone());
                self.put_rule(&group.region, &group.group_id, observed);
            }
            None => self
                .others
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(group.clone())
                .or_default()
                .push(GroupRule { rule_id: Some(id.clone()), rule: rule.clone() }),
        }
        Some(id)
    }

    /// Removes the rule with this id, or this access; what it removed.
    fn remove_rule(&self, group: &TargetId, id: Option<&str>, access: Option<&GuardRule>) -> Option<GroupRule> {
        let found = self
            .guard_rules(&group.region, &group.group_id)
            .into_iter()
            .find(|r| id.is_some_and(|id| r.rule_id.as_deref() == Some(id)) || access.is_some_and(|a| r.rule.same_access(a)))?;
        match as_observed(&found.rule) {
            Some(observed) => {
                self.delete_rule(&group.region, &group.group_id, &observed.raw_cidr, observed.ports);
                self.forget_id(group, &observed);
            }
            None => {
                let mut others = self.others.lock().unwrap_or_else(PoisonError::into_inner);
                others.entry(group.clone()).or_default().retain(|r| r.rule_id != found.rule_id);
            }
        }
        Some(found)
    }

    pub(crate) fn record_trail(&self, event_name: &'static str, group: &TargetId, changes: Changes) {
        if !changes.is_empty() {
            let record = TrailRecord { event_name, group: group.clone(), changes };
            self.trail.lock().unwrap_or_else(PoisonError::into_inner).push(record);
        }
    }

    fn event(&self, record: TrailRecord, principal: &str) -> GuardEvent {
        let n = self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        GuardEvent {
            event_id: format!("mem-event-{n}"),
            event_name: record.event_name.to_string(),
            account: MEMORY_ACCOUNT.to_string(),
            region: record.group.region.clone(),
            group_id: record.group.group_id.clone(),
            principal: principal.to_string(),
            error_code: None,
            at: self.clock.now(),
            changes: record.changes,
        }
    }

    /// The events of every change portcullis's own calls made since the last take, as
    /// CloudTrail would deliver them with `principal` as the caller.
    pub fn take_trail(&self, principal: &str) -> Vec<GuardEvent> {
        let records = std::mem::take(&mut *self.trail.lock().unwrap_or_else(PoisonError::into_inner));
        records.into_iter().map(|r| self.event(r, principal)).collect()
    }

    /// A person's change, made on the group now; its event, as CloudTrail would deliver it.
    pub fn by_hand(&self, region: &str, group_id: &str, change: HandChange, principal: &str) -> GuardEvent {
        let group = TargetId { region: region.into(), group_id: group_id.into() };
        let (name, changes) = match change {
            HandChange::Authorize(rule) => {
                let id = self.add_rule(&group, &rule, None).expect("by_hand: the rule is there already");
                (
                    "AuthorizeSecurityGroupIngress",
                    Changes { added: vec![GroupRule { rule_id: Some(id), rule }], ..Changes::default() },
                )
            }
            HandChange::Revoke(rule) => {
                self.remove_rule(&group, None, Some(&rule)).expect("by_hand: no such rule");
                ("RevokeSecurityGroupIngress", Changes { removed: vec![rule], ..Changes::default() })
            }
            HandChange::RevokeById(id) => {
                self.remove_rule(&group, Some(&id), None).expect("by_hand: no rule with that id");
                ("RevokeSecurityGroupIngress", Changes { removed_ids: vec![id], ..Changes::default() })
            }
            HandChange::Modify(id, rule) => {
                self.remove_rule(&group, Some(&id), None).expect("by_hand: no rule with that id");
                self.add_rule(&group, &rule, Some(id.clone()));
                ("ModifySecurityGroupRules", Changes { edits: vec![GroupRule { rule_id: Some(id), rule }], ..Changes::default() })
            }
        };
        self.event(TrailRecord { event_name: name, group, changes }, principal)
    }

    fn guard_failing(&self, route: &Route) -> Result<(), FirewallError> {
        if self.failing(&route.region) {
            return Err(FirewallError::new(ErrorClass::Transient, "region unreachable"));
        }
        Ok(())
    }
}

#[async_trait]
impl GuardFirewall for MemoryFirewall {
    async fn guarded(&self, scope: &GuardScope) -> Result<Vec<GuardedGroup>, FirewallError> {
        self.guard_failing(&scope.route)?;
        let groups: Vec<(TargetId, bool)> = {
            let groups = self.groups.lock().unwrap_or_else(PoisonError::into_inner);
            groups
                .values()
                .filter(|g| g.id.region == scope.route.region && g.list.is_none())
                .map(|g| (g.id.clone(), g.tags.get(GUARD_TAG).is_some_and(|v| v == "true")))
                .collect()
        };
        // The describe EC2 would answer (`GroupSelection::describe` says what to ask).
        let describe = scope.selection.describe();
        let selected = groups.into_iter().filter(|(id, tagged)| match &describe {
            GuardDescribe::Known(ids) => ids.contains(&id.group_id),
            GuardDescribe::Describe { ids, tagged: only_tagged } => {
                ids.as_ref().is_none_or(|ids| ids.contains(&id.group_id)) && (*tagged || !only_tagged)
            }
        });
        Ok(selected
            .map(|(id, _)| GuardedGroup {
                rules: self.guard_rules(&id.region, &id.group_id),
                id,
                account: MEMORY_ACCOUNT.to_string(),
            })
            .collect())
    }

    async fn revoke(&self, route: &Route, group_id: &str, ids: &[String], rules: &[GuardRule]) -> Result<(), FirewallError> {
        self.guard_failing(route)?;
        let group = TargetId { region: route.region.clone(), group_id: group_id.into() };
        let mut changes = Changes::default();
        for id in ids {
            if self.remove_rule(&group, Some(id), None).is_some() {
                changes.removed_ids.push(id.clone());
            }
        }
        for rule in rules {
            if self.remove_rule(&group, None, Some(rule)).is_some() {
                changes.removed.push(rule.clone());
            }
        }
        self.record_trail("RevokeSecurityGroupIngress", &group, changes);
        Ok(())
    }

    async fn authorize(&self, route: &Route, group_id: &str, rules: &[GuardRule]) -> Result<Vec<GroupRule>, FirewallError> {
        self.guard_failing(route)?;
        let group = TargetId { region: route.region.clone(), group_id: group_id.into() };
        let mut created = Vec::new();
        for rule in rules {
            if let Some(id) = self.add_rule(&group, rule, None) {
                created.push(GroupRule { rule_id: Some(id), rule: rule.clone() });
            }
        }
        self.record_trail("AuthorizeSecurityGroupIngress", &group, Changes { added: created.clone(), ..Changes::default() });
        Ok(created)
    }

    async fn modify(&self, route: &Route, group_id: &str, rule_id: &str, rule: &GuardRule) -> Result<(), FirewallError> {
        self.guard_failing(route)?;
        let group = TargetId { region: route.region.clone(), group_id: group_id.into() };
        self.remove_rule(&group, Some(rule_id), None)
            .ok_or_else(|| FirewallError::new(ErrorClass::Conflict, format!("no rule {rule_id}")))?;
        self.add_rule(&group, rule, Some(rule_id.to_string()));
        let edit = GroupRule { rule_id: Some(rule_id.to_string()), rule: rule.clone() };
        self.record_trail("ModifySecurityGroupRules", &group, Changes { edits: vec![edit], ..Changes::default() });
        Ok(())
    }

    async fn identity(&self, route: &Route) -> Result<String, FirewallError> {
        self.guard_failing(route)?;
        let identity = self.identity.lock().unwrap_or_else(PoisonError::into_inner).clone();
        identity.ok_or_else(|| FirewallError::new(ErrorClass::Denied, "sts:GetCallerIdentity refused"))
    }
}

/// What the grants' apply of `rules` looks like in the trail, and the ids they got.
pub(crate) fn added(fw: &MemoryFirewall, group: &TargetId, rules: &[ObservedRule]) -> Changes {
    let added = rules.iter().map(|r| GroupRule { rule_id: Some(fw.id_of(group, r)), rule: as_guard(r) }).collect();
    Changes { added, ..Changes::default() }
}

/// What the grants' revoke of `rules` looks like in the trail (they are revoked by content).
pub(crate) fn removed(rules: &[ObservedRule]) -> Changes {
    Changes { removed: rules.iter().map(as_guard).collect(), ..Changes::default() }
}
