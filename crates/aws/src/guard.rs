//! Guard's view of security groups ([`GuardFirewall`] on [`Ec2Firewall`]): every inbound rule
//! of any protocol and source, by rule id, and the exact calls that undo or apply a change.
//!
//! Per scope and sweep: one `DescribeSecurityGroups` (tagged or all groups; none for a list of
//! ids) and one `DescribeSecurityGroupRules` per 200 groups. An event or an approval reads only
//! its own group (`GuardScope::only`).

use async_trait::async_trait;
use aws_sdk_ec2::types::{
    Filter, IpPermission, IpRange, Ipv6Range, PrefixListId, SecurityGroupRule, SecurityGroupRuleRequest, SecurityGroupRuleUpdate,
    UserIdGroupPair,
};
use portcullis_core::guard::{GUARD_TAG, GroupRule, GuardDescribe, GuardRule, GuardScope, GuardedGroup, RuleSource};
use portcullis_core::{Route, TargetId};
use portcullis_engine::{FirewallError, GuardFirewall};

use crate::Ec2Firewall;
use crate::errors::firewall_error;

/// Values one EC2 filter takes.
const FILTER_VALUES: usize = 200;

fn guard_rule(r: &SecurityGroupRule) -> Option<GuardRule> {
    let source = if let Some(c) = r.cidr_ipv4() {
        RuleSource::Ipv4(c.to_string())
    } else if let Some(c) = r.cidr_ipv6() {
        RuleSource::Ipv6(c.to_string())
    } else if let Some(p) = r.prefix_list_id() {
        RuleSource::PrefixList(p.to_string())
    } else {
        let g = r.referenced_group_info()?;
        let id = g.group_id()?;
        match g.user_id() {
            Some(user) if Some(user) != r.group_owner_id() => RuleSource::Group(format!("{user}/{id}")),
            _ => RuleSource::Group(id.to_string()),
        }
    };
    Some(GuardRule::new(r.ip_protocol()?, r.from_port(), r.to_port(), source, r.description()))
}

/// The one permission a rule is, as Authorize and Revoke take it.
fn permission(rule: &GuardRule) -> IpPermission {
    let d = rule.description.clone();
    let mut p = IpPermission::builder().ip_protocol(&rule.protocol);
    if rule.protocol != "-1" {
        p = p.from_port(rule.from_port.unwrap_or(-1)).to_port(rule.to_port.unwrap_or(-1));
    }
    p = match &rule.source {
        RuleSource::Ipv4(c) => p.ip_ranges(IpRange::builder().cidr_ip(c).set_description(d).build()),
        RuleSource::Ipv6(c) => p.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(c).set_description(d).build()),
        RuleSource::PrefixList(id) => p.prefix_list_ids(PrefixListId::builder().prefix_list_id(id).set_description(d).build()),
        RuleSource::Group(g) => {
            let (user, id) = g.split_once('/').map_or((None, g.as_str()), |(u, i)| (Some(u.to_string()), i));
            p.user_id_group_pairs(UserIdGroupPair::builder().group_id(id).set_user_id(user).set_description(d).build())
        }
    };
    p.build()
}

fn rule_request(rule: &GuardRule) -> SecurityGroupRuleRequest {
    let mut r = SecurityGroupRuleRequest::builder().ip_protocol(&rule.protocol).set_description(rule.description.clone());
    if rule.protocol != "-1" {
        r = r.from_port(rule.from_port.unwrap_or(-1)).to_port(rule.to_port.unwrap_or(-1));
    }
    match &rule.source {
        RuleSource::Ipv4(c) => r.cidr_ipv4(c),
        RuleSource::Ipv6(c) => r.cidr_ipv6(c),
        RuleSource::PrefixList(id) => r.prefix_list_id(id),
        RuleSource::Group(g) => r.referenced_group_id(g.rsplit('/').next().unwrap_or(g)),
    }
    .build()
}

/// Already done: the rule is there (authorize) or gone (revoke).
fn already(e: &FirewallError) -> bool {
    matches!(
        e.code.as_deref(),
        Some("InvalidPermission.Duplicate" | "InvalidPermission.NotFound" | "InvalidSecurityGroupRuleId.NotFound")
    )
}

#[async_trait]
impl GuardFirewall for Ec2Firewall {
    async fn guarded(&self, scope: &GuardScope) -> Result<Vec<GuardedGroup>, FirewallError> {
        let client = self.client(&scope.route).await;
        let mut groups: Vec<(String, String)> = Vec::new();
        match scope.selection.describe() {
            GuardDescribe::Known(ids) => groups.extend(ids.into_iter().map(|id| (id, String::new()))),
            GuardDescribe::Describe { ids, tagged } => {
                let filter = tagged.then(|| vec![Filter::builder().name(format!("tag:{GUARD_TAG}")).values("true").build()]);
                let ids = ids.map(|ids| ids.into_iter().collect());
                let mut pages = client.describe_security_groups().set_group_ids(ids).set_filters(filter).into_paginator().send();
                while let Some(page) = pages.next().await {
                    let page = match page.map_err(firewall_error) {
                        Ok(page) => page,
                        // A group named by id that is gone is not guarded.
                        Err(e) if e.code.as_deref() == Some("InvalidGroup.NotFound") => break,
                        Err(e) => return Err(e),
                    };
                    for sg in page.security_groups() {
                        if let Some(id) = sg.group_id() {
                            groups.push((id.to_string(), sg.owner_id().unwrap_or_default().to_string()));
                        }
                    }
                }
            }
        }
        let mut out: Vec<GuardedGroup> = groups
            .iter()
            .map(|(id, owner)| GuardedGroup {
                id: TargetId { region: scope.route.region.clone(), group_id: id.clone() },
                account: owner.clone(),
                rules: vec![],
            })
            .collect();
        for chunk in groups.chunks(FILTER_VALUES) {
            let ids: Vec<String> = chunk.iter().map(|(id, _)| id.clone()).collect();
            let filter = Filter::builder().name("group-id").set_values(Some(ids)).build();
            let mut pages = client.describe_security_group_rules().filters(filter).into_paginator().send();
            while let Some(page) = pages.next().await {
                let page = page.map_err(firewall_error)?;
                for r in page.security_group_rules().iter().filter(|r| r.is_egress() != Some(true)) {
                    let (Some(group), Some(rule)) =
                        (out.iter_mut().find(|g| Some(g.id.group_id.as_str()) == r.group_id()), guard_rule(r))
                    else {
                        continue;
                    };
                    if group.account.is_empty() {
                        group.account = r.group_owner_id().unwrap_or_default().to_string();
                    }
                    group.rules.push(GroupRule { rule_id: r.security_group_rule_id().map(str::to_string), rule });
                }
            }
        }
        for g in &mut out {
            g.rules.sort();
        }
        Ok(out)
    }

    async fn revoke(&self, route: &Route, group_id: &str, ids: &[String], rules: &[GuardRule]) -> Result<(), FirewallError> {
        let client = self.client(route).await;
        if !ids.is_empty() {
            let call = client.revoke_security_group_ingress().group_id(group_id).set_security_group_rule_ids(Some(ids.to_vec()));
            match call.send().await.map_err(firewall_error) {
                Err(e) if !already(&e) => return Err(e),
                _ => {}
            }
        }
        if !rules.is_empty() {
            let call = client
                .revoke_security_group_ingress()
                .group_id(group_id)
                .set_ip_permissions(Some(rules.iter().map(permission).collect()));
            match call.send().await.map_err(firewall_error) {
                Err(e) if !already(&e) => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    async fn authorize(&self, route: &Route, group_id: &str, rules: &[GuardRule]) -> Result<Vec<GroupRule>, FirewallError> {
        let client = self.client(route).await;
        let mut created = Vec::new();
        for rule in rules {
            // One rule a call: a Duplicate (already there) must not stop the rest.
            let call = client.authorize_security_group_ingress().group_id(group_id).ip_permissions(permission(rule));
            match call.send().await.map_err(firewall_error) {
                Ok(out) => created.extend(out.security_group_rules().iter().filter_map(|r| {
                    let id = r.security_group_rule_id()?.to_string();
                    Some(GroupRule { rule_id: Some(id), rule: guard_rule(r)? })
                })),
                Err(e) if !already(&e) => return Err(e),
                Err(_) => {}
            }
        }
        Ok(created)
    }

    async fn identity(&self, route: &Route) -> Result<String, FirewallError> {
        self.caller_identity(route).await
    }

    async fn modify(&self, route: &Route, group_id: &str, rule_id: &str, rule: &GuardRule) -> Result<(), FirewallError> {
        let update =
            SecurityGroupRuleUpdate::builder().security_group_rule_id(rule_id).security_group_rule(rule_request(rule)).build();
        let call = self.client(route).await.modify_security_group_rules().group_id(group_id).security_group_rules(update);
        call.send().await.map(|_| ()).map_err(firewall_error)
    }
}
