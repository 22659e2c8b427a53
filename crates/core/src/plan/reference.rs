//! The planner as first written: one pass per group over every grant, a `BTreeMap` of desired
//! rules, every authorization built before the quota check. Slow at scale, plainly right; the
//! property tests hold the fast [`super::plan`] to exactly its output.

use std::collections::{BTreeMap, BTreeSet};

use super::*;

/// What `plan()` decides, decided the simple way.
///
/// Level-triggered and idempotent: applying the result and planning again yields no changes.
/// Only rules whose description carries our marker for the target's environment are ever
/// revoked or edited.
pub fn reference_plan(input: &PlanInput<'_>) -> Plan {
    let mut out = Plan::default();
    for target in input.targets {
        let env = &target.environment;
        let mut desired: BTreeMap<RuleKey, (Cidr, String)> = BTreeMap::new();
        for grant in input.grants.iter().filter(|g| &g.environment == env && g.is_live(input.now) && target.accepts(&g.cidr)) {
            let description = input.marker.encode(env, &grant.owner.name, &grant.description);
            for ports in target.ports.iter() {
                desired.insert((grant.cidr, *ports), (grant.cidr, description.clone()));
            }
        }

        let mut owned: BTreeMap<RuleKey, Vec<&ObservedRule>> = BTreeMap::new();
        let mut foreign_keys: BTreeSet<RuleKey> = BTreeSet::new();
        for rule in &target.rules {
            let ours = rule.description.as_deref().and_then(|d| input.marker.decode(d)).as_ref() == Some(env);
            if ours {
                owned.entry((rule.cidr, rule.ports)).or_default().push(rule);
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

        for (key, (cidr, description)) in &desired {
            match owned.get(key).map(Vec::as_slice) {
                Some([first, extra @ ..]) => {
                    if first.description.as_deref() == Some(description.as_str()) {
                        out.unchanged += 1;
                    } else if target.list.is_some() {
                        out.unchanged += 1;
                        out.stale_descriptions.push(stale(target, first, description));
                    } else {
                        change.update_descriptions.push(existing(first, description));
                    }
                    for rule in extra {
                        revoke(rule, &mut change, &mut out);
                    }
                }
                _ if foreign_keys.contains(key) => out.unchanged += 1,
                _ => change.authorize.push(AppliedRule {
                    cidr: *cidr,
                    ec2_cidr: cidr.to_string(),
                    ports: key.1,
                    description: description.clone(),
                }),
            }
        }
        for (key, rules) in &owned {
            if !desired.contains_key(key) {
                for rule in rules {
                    revoke(rule, &mut change, &mut out);
                }
            }
        }

        for family in [Family::Ipv4, Family::Ipv6] {
            let count = |rules: &[AppliedRule]| rules.iter().filter(|r| r.cidr.family() == family).count();
            let would_hold =
                target.counts.get(family) + count(&change.authorize) - count(&change.revoke).min(target.counts.get(family));
            let quota = target.quota(input.quota).get(family);
            if count(&change.authorize) > 0 && would_hold > quota {
                change.authorize.retain(|r| r.cidr.family() != family);
                out.overflows.push(Overflow { target: target.id.clone(), environment: env.clone(), family, would_hold, quota });
            }
        }

        if !change.is_empty() {
            out.changes.push(change);
        }
    }
    out
}
