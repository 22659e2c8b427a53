//! Timed rules: the added rules of a change approved for a time ("Approve for 24 h"), held on
//! their group under our marker until the term ends. What to authorize and what to revoke is
//! decided here, from the approved requests and the observed groups, level-triggered like
//! `plan()` for environment grants: planning again after applying yields no change.

use std::collections::BTreeSet;

use serde::Serialize;

use super::{ChangeRequest, GuardRule, GuardedGroup, RuleSource, Steps};
use crate::{Family, Marker, RuleQuota, TargetId, Timestamp};

/// What to do to one group's timed-rule rules, as the firewall steps guard carries out:
/// `authorize` the live timed rules' rules that are missing (under our marker); revoke, by
/// `revoke_ids` (or by content in `revoke` where the firewall named no id), the timed-rule
/// rules no live grant wants (expired, or their request is gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedRuleChange {
    pub group: TargetId,
    pub steps: Steps,
}

/// A group whose quota the timed rules would exceed: that family's authorizations are dropped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TimedRuleOverflow {
    pub group: TargetId,
    pub family: Family,
    pub would_hold: usize,
    pub quota: usize,
}

/// The changes that bring timed-rule rules to what the approved requests want.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TimedRulePlan {
    pub changes: Vec<TimedRuleChange>,
    /// Wanted rules already in place.
    pub unchanged: usize,
    pub overflows: Vec<TimedRuleOverflow>,
}

/// The rule a timed rule puts on its group: the approved rule, its description behind our
/// marker (the request and its approvers), so it is ours to revoke when the term ends.
pub fn timed_rule(request: &ChangeRequest, rule: &GuardRule, marker: &Marker) -> GuardRule {
    let mut ours = rule.clone();
    ours.description = Some(marker.encode_timed_rule(&request.id, &request.approvals.join(", "), rule.description.as_deref()));
    ours
}

/// The quota families a rule counts against. A rule naming a group or a prefix list counts
/// against both (EC2 counts it once for IPv4 and once for IPv6).
fn families(source: &RuleSource) -> &'static [Family] {
    match source {
        RuleSource::Ipv4(_) => &[Family::Ipv4],
        RuleSource::Ipv6(_) => &[Family::Ipv6],
        RuleSource::PrefixList(_) | RuleSource::Group(_) => &[Family::Ipv4, Family::Ipv6],
    }
}

/// What brings each observed group's timed-rule rules to the live timed rules of `requests`
/// at `now`. Only rules carrying our timed-rule marker are ever revoked; a wanted rule that
/// would take its group past `quota` is not authorized, and the overflow is reported.
pub fn plan_timed_rules(
    requests: &[ChangeRequest],
    groups: &[GuardedGroup],
    marker: &Marker,
    quota: RuleQuota,
    now: Timestamp,
) -> TimedRulePlan {
    let mut out = TimedRulePlan::default();
    for group in groups {
        let mut desired: Vec<GuardRule> = Vec::new();
        for request in requests.iter().filter(|r| r.timed_live(now) && r.group() == group.id) {
            for rule in &request.add {
                let ours = timed_rule(request, rule, marker);
                if !desired.contains(&ours) {
                    desired.push(ours);
                }
            }
        }
        let owned: Vec<_> = group
            .rules
            .iter()
            .filter(|r| r.rule.description.as_deref().and_then(|d| marker.decode_timed_rule(d)).is_some())
            .collect();
        let mut change = Steps::default();
        for rule in &desired {
            if owned.iter().any(|o| o.rule == *rule) {
                out.unchanged += 1;
            } else {
                change.authorize.push(rule.clone());
            }
        }
        let mut revoked = Vec::new();
        for o in owned.iter().filter(|o| !desired.contains(&o.rule)) {
            match &o.rule_id {
                Some(id) => change.revoke_ids.push(id.clone()),
                None => change.revoke.push(o.rule.clone()),
            }
            revoked.push(&o.rule);
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            let counts = |rule: &GuardRule| families(&rule.source).contains(&family);
            let adding = change.authorize.iter().filter(|r| counts(r)).count();
            let held = group.rules.iter().filter(|r| counts(&r.rule)).count();
            let would_hold = held + adding - revoked.iter().filter(|r| counts(r)).count().min(held);
            if adding > 0 && would_hold > quota.get(family) {
                change.authorize.retain(|r| !counts(r));
                out.overflows.push(TimedRuleOverflow { group: group.id.clone(), family, would_hold, quota: quota.get(family) });
            }
        }
        if !(change.authorize.is_empty() && change.revoke_ids.is_empty() && change.revoke.is_empty()) {
            out.changes.push(TimedRuleChange { group: group.id.clone(), steps: change });
        }
    }
    out
}

/// The groups whose timed-rule rules a reconcile must look at: those of every timed rule not
/// yet recorded as ended (live, or due for its revoke).
pub fn timed_rule_groups(requests: &[ChangeRequest]) -> BTreeSet<(String, TargetId)> {
    requests.iter().filter(|r| r.timed_until().is_some()).map(|r| (r.account.clone(), r.group())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guard::{GroupRule, RequestStatus, Temporary};
    use time::macros::datetime;

    const NOW: Timestamp = datetime!(2026-12-04 12:00 UTC);

    fn rule(cidr: &str, port: i32, description: Option<&str>) -> GuardRule {
        GuardRule::new("tcp", Some(port), Some(port), RuleSource::Ipv4(cidr.into()), description)
    }

    fn group(rules: Vec<GroupRule>) -> GuardedGroup {
        GuardedGroup { id: TargetId { region: "us-east-1".into(), group_id: "sg-1".into() }, account: "123".into(), rules }
    }

    fn approved(id: &str, add: Vec<GuardRule>, until: Timestamp) -> ChangeRequest {
        let g = group(vec![]);
        let mut r =
            ChangeRequest::pending(id, &format!("e-{id}"), "arn:aws:iam::123:user/alice", &g, NOW, time::Duration::hours(1));
        r.add = add;
        r.status = RequestStatus::Approved;
        r.approvals = vec!["U0BOB".into()];
        r.temporary = Some(Temporary { seconds: 3600, until: Some(until), ended_at: None });
        r
    }

    fn on(rule: GuardRule, id: &str) -> GroupRule {
        GroupRule { rule_id: Some(id.into()), rule }
    }

    #[test]
    fn a_live_timed_rule_is_authorized_under_our_marker_once() {
        let m = Marker::default();
        let r = approved("r-1", vec![rule("203.0.113.0/24", 22, Some("vendor"))], NOW + time::Duration::hours(1));
        let p = plan_timed_rules(std::slice::from_ref(&r), &[group(vec![])], &m, RuleQuota::default(), NOW);
        assert_eq!(p.changes.len(), 1);
        let added = &p.changes[0].steps.authorize;
        assert_eq!(added.len(), 1);
        assert_eq!(added[0].description.as_deref(), Some("pc:timed/r-1 U0BOB: vendor"));
        assert!(added[0].same_access(&r.add[0]));

        let applied = group(vec![on(added[0].clone(), "sgr-1")]);
        let again = plan_timed_rules(&[r], &[applied], &m, RuleQuota::default(), NOW);
        assert!(again.changes.is_empty(), "level-triggered: nothing more to do");
        assert_eq!(again.unchanged, 1);
    }

    #[test]
    fn an_expired_timed_rule_is_revoked_and_nothing_else_is_touched() {
        let m = Marker::default();
        let until = NOW + time::Duration::hours(1);
        let r = approved("r-1", vec![rule("203.0.113.0/24", 22, None)], until);
        let ours = timed_rule(&r, &r.add[0], &m);
        let theirs = on(rule("203.0.113.0/24", 22, Some("hand-made")), "sgr-2");
        let reconciled = on(rule("198.51.100.1/32", 443, Some("pc:dev alice: laptop")), "sgr-3");
        let g = group(vec![on(ours, "sgr-1"), theirs, reconciled]);
        let live = plan_timed_rules(std::slice::from_ref(&r), std::slice::from_ref(&g), &m, RuleQuota::default(), NOW);
        assert!(live.changes.is_empty());
        let p = plan_timed_rules(&[r], &[g], &m, RuleQuota::default(), until);
        assert_eq!(p.changes[0].steps.revoke_ids, ["sgr-1"], "only the timed rule's own rule");
        assert!(p.changes[0].steps.authorize.is_empty() && p.changes[0].steps.revoke.is_empty());
    }

    #[test]
    fn a_stray_timed_rule_is_revoked_but_an_ended_grant_is_no_longer_wanted() {
        let m = Marker::default();
        let mut r = approved("r-1", vec![rule("203.0.113.0/24", 22, None)], NOW + time::Duration::hours(1));
        let ours = timed_rule(&r, &r.add[0], &m);
        r.temporary.as_mut().unwrap().ended_at = Some(NOW);
        assert_eq!(r.timed_until(), None);
        let p = plan_timed_rules(
            &[r],
            &[group(vec![GroupRule { rule_id: None, rule: ours.clone() }])],
            &m,
            RuleQuota::default(),
            NOW,
        );
        assert_eq!(p.changes[0].steps.revoke, [ours], "no id: revoked by content");
    }

    #[test]
    fn the_quota_holds_timed_rules_back_and_says_so() {
        let m = Marker::default();
        let held: Vec<GroupRule> = (0..60).map(|i| on(rule(&format!("10.0.{i}.0/24"), 22, None), &format!("sgr-{i}"))).collect();
        let mut by_group = rule("x", 22, None);
        by_group.source = RuleSource::Group("sg-2".into());
        let r = approved("r-1", vec![rule("203.0.113.0/24", 22, None), by_group], NOW + time::Duration::hours(1));
        let p = plan_timed_rules(&[r], &[group(held)], &m, RuleQuota::default(), NOW);
        assert!(p.changes.is_empty(), "{p:?}");
        assert_eq!(p.overflows.len(), 1);
        assert_eq!((p.overflows[0].family, p.overflows[0].would_hold, p.overflows[0].quota), (Family::Ipv4, 62, 60));
    }

    #[test]
    fn the_groups_to_look_at_are_those_of_unended_timed_rules() {
        let live = approved("r-1", vec![], NOW + time::Duration::hours(1));
        let mut ended = approved("r-2", vec![], NOW);
        ended.group_id = "sg-2".into();
        ended.temporary.as_mut().unwrap().ended_at = Some(NOW);
        let groups = timed_rule_groups(&[live, ended]);
        assert_eq!(groups.into_iter().map(|(_, g)| g.group_id).collect::<Vec<_>>(), ["sg-1"]);
    }
}
