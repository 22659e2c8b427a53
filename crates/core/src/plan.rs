use std::collections::{BTreeSet, HashMap, HashSet};

use serde::Serialize;

use crate::{
    Cidr, Environment, Family, FamilyCounts, Grant, ListInfo, Marker, ObservedRule, PortRange, Route, Target, TargetId, Timestamp,
};

/// How many inbound rules a group may hold per address family (EC2's default is 60 each).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct RuleQuota {
    pub ipv4: usize,
    pub ipv6: usize,
}

impl Default for RuleQuota {
    fn default() -> Self {
        RuleQuota { ipv4: 60, ipv6: 60 }
    }
}

impl RuleQuota {
    pub(crate) fn get(&self, family: Family) -> usize {
        match family {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }
}

/// Everything `plan()` decides from: the desired grants, the observed targets, and the time.
pub struct PlanInput<'a> {
    pub grants: &'a [Grant],
    pub targets: &'a [Target],
    pub marker: &'a Marker,
    /// Environments the store has ever recorded anything for; owned rules are revoked only there.
    pub environments_with_history: &'a BTreeSet<Environment>,
    pub quota: RuleQuota,
    pub now: Timestamp,
}

/// One rule in an operation: what to send to the firewall.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct AppliedRule {
    pub cidr: Cidr,
    /// The CIDR text to send: canonical for new rules, as observed for existing ones.
    pub ec2_cidr: String,
    pub ports: PortRange,
    pub description: String,
}

/// What to do to one security group: at most one call of each kind.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupChange {
    pub target: TargetId,
    /// How the group is reached (the target's route), so applying needs no earlier observe.
    #[serde(skip)]
    pub route: Route,
    pub environment: Environment,
    /// For a managed prefix list: the version the change is made over, and its capacity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub list: Option<ListInfo>,
    pub authorize: Vec<AppliedRule>,
    pub revoke: Vec<AppliedRule>,
    pub update_descriptions: Vec<AppliedRule>,
}

impl GroupChange {
    /// No change yet to one group.
    pub fn none(target: &Target, environment: &Environment) -> GroupChange {
        GroupChange {
            target: target.id.clone(),
            route: target.route.clone(),
            environment: environment.clone(),
            list: target.list,
            authorize: vec![],
            revoke: vec![],
            update_descriptions: vec![],
        }
    }

    pub fn is_empty(&self) -> bool {
        self.authorize.is_empty() && self.revoke.is_empty() && self.update_descriptions.is_empty()
    }
}

/// A rule on a managed group that is not ours (for this environment): reported, never touched.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Foreign {
    pub target: TargetId,
    pub cidr: String,
    pub ports: PortRange,
    pub description: Option<String>,
}

/// A prefix-list entry of ours whose description should change, left as it is: EC2 documents
/// no way to change an entry's description but to remove the entry and add it again, and
/// between the two (or if the add fails) the address would have no access. Reported instead.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaleDescription {
    pub target: TargetId,
    pub cidr: String,
    pub description: Option<String>,
    pub wanted: String,
}

/// An owned rule that would be revoked, held back because the store has no history for its
/// environment (a wrong or new store must not wipe access).
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Withheld {
    pub target: TargetId,
    pub environment: Environment,
    pub rule: AppliedRule,
}

/// A group whose quota the desired rules would exceed; its authorizations of that family are
/// dropped from the plan.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Overflow {
    pub target: TargetId,
    pub environment: Environment,
    pub family: Family,
    pub would_hold: usize,
    pub quota: usize,
}

/// The operations that bring the firewall to the desired state, and what was left alone.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub changes: Vec<GroupChange>,
    /// Desired rules already in place (ours, or covered by an identical foreign rule).
    pub unchanged: usize,
    pub foreign: Vec<Foreign>,
    pub withheld: Vec<Withheld>,
    pub overflows: Vec<Overflow>,
    pub stale_descriptions: Vec<StaleDescription>,
}

impl Plan {
    /// True when applying this plan would make no call.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn authorize_count(&self) -> usize {
        self.changes.iter().map(|c| c.authorize.len()).sum()
    }

    pub fn revoke_count(&self) -> usize {
        self.changes.iter().map(|c| c.revoke.len()).sum()
    }

    pub fn update_count(&self) -> usize {
        self.changes.iter().map(|c| c.update_descriptions.len()).sum()
    }
}

type RuleKey = (Cidr, PortRange);

/// Each environment's live grants, by address, with the rule description each gets: worked
/// out once per environment, not once per group. Where two grants name one address (the store
/// never holds two), the later wins.
fn desired_by_environment<'a>(input: &'a PlanInput<'_>) -> HashMap<&'a Environment, Vec<Desired>> {
    let mut by_env: HashMap<&Environment, Vec<Desired>> = HashMap::new();
    for grant in input.grants.iter().filter(|g| g.is_live(input.now)) {
        let description = input.marker.encode(&grant.environment, &grant.owner.name, &grant.description);
        by_env.entry(&grant.environment).or_default().push(Desired {
            cidr: grant.cidr,
            text: grant.cidr.to_string(),
            description,
        });
    }
    for grants in by_env.values_mut() {
        // Stable sort of the reversed list: the first of each address is the last given.
        grants.reverse();
        grants.sort_by_key(|d| d.cidr);
        grants.dedup_by_key(|d| d.cidr);
    }
    by_env
}

/// A live grant as every group of its environment wants it: its address (and its text, for
/// EC2) and its rule description.
struct Desired {
    cidr: Cidr,
    text: String,
    description: String,
}

/// Decides what changes: the single place that does.
///
/// Level-triggered and idempotent: applying the result and planning again yields no changes.
/// Only rules whose description carries our marker for the target's environment are ever
/// revoked or edited.
///
/// Cost: descriptions are encoded once per environment; each group then walks its
/// environment's sorted grants against hash lookups of its own rules, and builds an
/// authorization only once the quota check has kept its family.
pub fn plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    let by_env = desired_by_environment(input);
    let none: Vec<Desired> = Vec::new();
    for target in input.targets {
        let env = &target.environment;
        let grants = by_env.get(env).unwrap_or(&none);
        let ports: Vec<PortRange> = target.ports.iter().copied().collect();
        let is_desired = |(cidr, ports_of): &RuleKey| {
            ports.contains(ports_of) && target.accepts(cidr) && grants.binary_search_by_key(cidr, |d| d.cidr).is_ok()
        };

        // Each owned key's first rule, and any duplicates (rare: they are revoked).
        let mut owned: HashMap<RuleKey, (&ObservedRule, Vec<&ObservedRule>)> = HashMap::with_capacity(target.rules.len());
        let mut foreign_keys: HashSet<RuleKey> = HashSet::new();
        for rule in &target.rules {
            let ours = rule.description.as_deref().is_some_and(|d| input.marker.is_for(d, env));
            if ours {
                owned.entry((rule.cidr, rule.ports)).and_modify(|(_, extra)| extra.push(rule)).or_insert((rule, Vec::new()));
            } else {
                foreign_keys.insert((rule.cidr, rule.ports));
                out.foreign.push(Foreign {
                    target: target.id.clone(),
                    cidr: rule.raw_cidr.clone(),
                    ports: rule.ports,
                    description: rule.description.clone(),
                });
            }
        }

        let mut change = GroupChange::none(target, env);
        let existing = |rule: &ObservedRule, description: &str| AppliedRule {
            cidr: rule.cidr,
            ec2_cidr: rule.raw_cidr.clone(),
            ports: rule.ports,
            description: description.to_string(),
        };
        let may_revoke = input.environments_with_history.contains(env);
        let revoke = |rule: &ObservedRule, change: &mut GroupChange, out: &mut Plan| {
            let applied = existing(rule, rule.description.as_deref().unwrap_or_default());
            if may_revoke {
                change.revoke.push(applied);
            } else {
                out.withheld.push(Withheld { target: target.id.clone(), environment: env.clone(), rule: applied });
            }
        };

        // Missing rules, by reference only: built below once their family is within quota.
        let mut missing: Vec<(&Desired, PortRange)> = Vec::new();
        for wanted in grants.iter().filter(|d| target.accepts(&d.cidr)) {
            for ports in &ports {
                let key = (wanted.cidr, *ports);
                match owned.get(&key) {
                    Some((first, extra)) => {
                        if first.description.as_deref() == Some(wanted.description.as_str()) {
                            out.unchanged += 1;
                        } else if target.list.is_some() {
                            out.unchanged += 1;
                            out.stale_descriptions.push(stale(target, first, &wanted.description));
                        } else {
                            change.update_descriptions.push(existing(first, &wanted.description));
                        }
                        for rule in extra {
                            revoke(rule, &mut change, &mut out);
                        }
                    }
                    None if foreign_keys.contains(&key) => out.unchanged += 1,
                    None => missing.push((wanted, *ports)),
                }
            }
        }
        let mut unwanted: Vec<&RuleKey> = owned.keys().filter(|k| !is_desired(k)).collect();
        unwanted.sort();
        for key in unwanted {
            let (first, extra) = &owned[key];
            for rule in std::iter::once(first).chain(extra) {
                revoke(rule, &mut change, &mut out);
            }
        }

        let mut kept = [true, true];
        for (i, family) in [Family::Ipv4, Family::Ipv6].into_iter().enumerate() {
            let adding = missing.iter().filter(|(d, _)| d.cidr.family() == family).count();
            let revoking = change.revoke.iter().filter(|r| r.cidr.family() == family).count();
            let held = target.counts.get(family);
            let would_hold = held + adding - revoking.min(held);
            let quota = target.quota(input.quota).get(family);
            if adding > 0 && would_hold > quota {
                kept[i] = false;
                out.overflows.push(Overflow { target: target.id.clone(), environment: env.clone(), family, would_hold, quota });
            }
        }
        change.authorize = missing
            .into_iter()
            .filter(|(d, _)| kept[usize::from(d.cidr.family() == Family::Ipv6)])
            .map(|(d, ports)| AppliedRule { cidr: d.cidr, ec2_cidr: d.text.clone(), ports, description: d.description.clone() })
            .collect();

        if !change.is_empty() {
            out.changes.push(change);
        }
    }
    out
}

/// The marker-less rules to take over: those matching a live grant exactly (same address,
/// group and port range) that carry no marker at all. Each becomes a description update to the
/// grant's marked description; nothing else is ever proposed, so every other unowned rule (and
/// every rule marked for another environment) is left alone.
pub fn plan_adoption(input: &PlanInput<'_>) -> Vec<GroupChange> {
    let mut out = Vec::new();
    // A prefix list's entry cannot be re-described without removing it (see
    // [`StaleDescription`]): its unmarked entries stay unowned.
    for target in input.targets.iter().filter(|t| t.list.is_none()) {
        let env = &target.environment;
        let mut change = GroupChange::none(target, env);
        for rule in &target.rules {
            // Marked of either kind: another environment's, or a timed rule's.
            let marked = rule.description.as_deref().is_some_and(|d| input.marker.is_ours(d));
            if marked || !target.ports.iter().any(|p| *p == rule.ports) {
                continue;
            }
            let grant = input.grants.iter().find(|g| &g.environment == env && g.cidr == rule.cidr && g.is_live(input.now));
            if let Some(g) = grant {
                change.update_descriptions.push(AppliedRule {
                    cidr: rule.cidr,
                    ec2_cidr: rule.raw_cidr.clone(),
                    ports: rule.ports,
                    description: input.marker.encode(env, &g.owner.name, &g.description),
                });
            }
        }
        if !change.is_empty() {
            out.push(change);
        }
    }
    out
}

/// What adding `input.grants` changes, planned from the observation alone: the rules of those
/// addresses only. Every other rule is out of view, so nothing else is revoked or edited, while
/// each group's quota still counts every rule it holds. An add needs no other grant: the whole
/// environment's plan belongs to the reconcile.
pub fn plan_additions(input: &PlanInput<'_>) -> Plan {
    let cidrs: HashSet<Cidr> = input.grants.iter().map(|g| g.cidr).collect();
    let targets: Vec<Target> = input
        .targets
        .iter()
        .map(|t| Target { rules: t.rules.iter().filter(|r| cidrs.contains(&r.cidr)).cloned().collect(), ..t.clone() })
        .collect();
    plan(&PlanInput { targets: &targets, ..*input })
}

/// Rule counts after a change, for callers that keep an observation up to date.
pub fn counts_after(counts: FamilyCounts, change: &GroupChange) -> FamilyCounts {
    let mut counts = counts;
    for r in &change.authorize {
        counts.add(r.cidr.family(), 1);
    }
    for r in &change.revoke {
        counts.add(r.cidr.family(), -1);
    }
    counts
}

#[cfg(any(test, feature = "reference-planner"))]
mod reference;
#[cfg(feature = "reference-planner")]
pub use reference::reference_plan;
#[cfg(test)]
mod tests;

/// A prefix-list entry whose description is `wanted`'s no longer.
fn stale(target: &Target, entry: &ObservedRule, wanted: &str) -> StaleDescription {
    StaleDescription {
        target: target.id.clone(),
        cidr: entry.raw_cidr.clone(),
        description: entry.description.clone(),
        wanted: wanted.to_string(),
    }
}
