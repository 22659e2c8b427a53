use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::Serialize;

use crate::{Cidr, Environment, Family, Policy, PortRange, PortSet};

/// The tag that ties a discovered group to one environment.
pub const ENVIRONMENT_TAG: &str = "WhitelistEnvironment";
/// The tag naming a group's port set (`alb`, `nlb`, or a list); untrusted input.
pub const PORTS_TAG: &str = "WhitelistPorts";

/// A security group, by region and id.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct TargetId {
    pub region: String,
    pub group_id: String,
}

impl fmt::Display for TargetId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.group_id, self.region)
    }
}

/// A security group's id (`sg-` and letters or digits), checked when it is made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupId(String);

impl GroupId {
    pub fn parse(text: &str) -> Result<GroupId, crate::InvalidInput> {
        let ok = text.strip_prefix("sg-").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        if ok { Ok(GroupId(text.to_string())) } else { Err(crate::InvalidInput::InvalidGroupId { input: text.to_string() }) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a group is reached: its region, an API endpoint override, and a role to assume (for a
/// group in another account). Observations carry it to every change, so applying a change
/// never depends on an earlier observe.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct Route {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub endpoint_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role_arn: Option<String>,
}

impl Route {
    /// A region reached with the process's own credentials and AWS's endpoint.
    pub fn region(region: &str) -> Route {
        Route { region: region.to_string(), endpoint_url: None, role_arn: None }
    }
}

/// How the configuration names the groups of a region.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetSelector {
    /// Every group carrying this tag key and value.
    Discovery { tag_key: String, tag_value: String },
    /// These group ids.
    Ids(Vec<GroupId>),
    /// These managed prefix lists (`pl-…`): grants become their entries, and the groups that
    /// reference a list (set up by the operator) let its entries in.
    PrefixLists(Vec<PrefixListId>),
    /// Every managed prefix list carrying this tag key and value (environment from its
    /// `WhitelistEnvironment` tag, as for groups).
    TaggedPrefixLists { tag_key: String, tag_value: String },
}

impl TargetSelector {
    /// Whether it finds its targets by tag (so one may belong to any environment).
    pub fn discovers(&self) -> bool {
        matches!(self, TargetSelector::Discovery { .. } | TargetSelector::TaggedPrefixLists { .. })
    }

    /// Whether its targets are managed prefix lists.
    pub fn is_prefix_lists(&self) -> bool {
        matches!(self, TargetSelector::PrefixLists(_) | TargetSelector::TaggedPrefixLists { .. })
    }
}

/// A managed prefix list's id (`pl-` and letters or digits), checked when it is made.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PrefixListId(String);

impl PrefixListId {
    pub fn parse(text: &str) -> Result<PrefixListId, crate::InvalidInput> {
        let ok = text.strip_prefix("pl-").is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric()));
        if ok {
            Ok(PrefixListId(text.to_string()))
        } else {
            Err(crate::InvalidInput::InvalidPrefixListId { input: text.to_string() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What a managed prefix list is beyond its entries: the version a change must name, how many
/// entries it may hold, and the one address family it holds.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ListInfo {
    pub version: i64,
    pub max_entries: usize,
    pub family: Family,
}

/// One configured source of targets: groups of one region, for one environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetSpec {
    pub region: String,
    pub selector: TargetSelector,
    /// The environment of explicit ids, and of discovered groups without an environment tag.
    pub environment: Environment,
    /// Ports of groups without a `WhitelistPorts` tag.
    pub default_ports: PortSet,
    /// An API endpoint override for this region (tests, VPC endpoints).
    pub endpoint_url: Option<String>,
    /// A role to assume for these groups (another account).
    pub role_arn: Option<String>,
}

/// A group or prefix list that two environments' specs both name by id: it would be
/// reconciled as one environment's, and the other's rules would show as unowned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    pub region: String,
    pub id: String,
    pub first: Environment,
    pub second: Environment,
}

/// The first target named by id in two environments' specs, if any (discovery decides each
/// group's environment by its tag, so it cannot make one).
pub fn shared_target(specs: &[TargetSpec]) -> Option<SharedTarget> {
    let mut seen: BTreeMap<(&str, &str), &Environment> = BTreeMap::new();
    for spec in specs {
        let ids: Vec<&str> = match &spec.selector {
            TargetSelector::Ids(ids) => ids.iter().map(GroupId::as_str).collect(),
            TargetSelector::PrefixLists(ids) => ids.iter().map(PrefixListId::as_str).collect(),
            TargetSelector::Discovery { .. } | TargetSelector::TaggedPrefixLists { .. } => vec![],
        };
        for id in ids {
            match seen.get(&(spec.region.as_str(), id)) {
                Some(first) if **first != spec.environment => {
                    return Some(SharedTarget {
                        region: spec.region.clone(),
                        id: id.to_string(),
                        first: (*first).clone(),
                        second: spec.environment.clone(),
                    });
                }
                Some(_) => {}
                None => {
                    seen.insert((spec.region.as_str(), id), &spec.environment);
                }
            }
        }
    }
    None
}

impl TargetSpec {
    /// How this spec's groups are reached.
    pub fn route(&self) -> Route {
        Route { region: self.region.clone(), endpoint_url: self.endpoint_url.clone(), role_arn: self.role_arn.clone() }
    }
}

/// One inbound CIDR rule as the firewall reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObservedRule {
    pub cidr: Cidr,
    /// The CIDR exactly as the firewall stores it, which a revoke must repeat.
    pub raw_cidr: String,
    pub ports: PortRange,
    pub description: Option<String>,
}

/// Inbound rules per address family, as counted against the group's quota.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FamilyCounts {
    pub ipv4: usize,
    pub ipv6: usize,
}

impl FamilyCounts {
    pub fn get(&self, family: Family) -> usize {
        match family {
            Family::Ipv4 => self.ipv4,
            Family::Ipv6 => self.ipv6,
        }
    }

    pub fn add(&mut self, family: Family, delta: isize) {
        let slot = match family {
            Family::Ipv4 => &mut self.ipv4,
            Family::Ipv6 => &mut self.ipv6,
        };
        *slot = slot.saturating_add_signed(delta);
    }
}

/// A security group as one describe call saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedGroup {
    pub id: TargetId,
    pub name: String,
    pub tags: BTreeMap<String, String>,
    /// CIDR rules on TCP or UDP ports; the only ones portcullis may ever own.
    pub rules: Vec<ObservedRule>,
    /// Every inbound rule, including ones on other protocols or sources.
    pub counts: FamilyCounts,
    /// How it was described (its region and account): only that route's specs select it.
    pub route: Route,
    /// Its owner as the firewall reports it (an account id, or `AWS` for AWS's own prefix
    /// lists); `None` where the firewall does not say.
    pub owner: Option<String>,
    /// For a managed prefix list: its version, capacity and family (its entries are `rules`,
    /// on [`crate::PortRange::ENTRY`]).
    pub list: Option<ListInfo>,
}

/// A managed group with its environment, port set and observed rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub id: TargetId,
    /// How its changes are applied: its spec's route.
    pub route: Route,
    pub name: String,
    pub environment: Environment,
    pub ports: PortSet,
    pub rules: Vec<ObservedRule>,
    pub counts: FamilyCounts,
    /// For a managed prefix list: its version, capacity and family.
    pub list: Option<ListInfo>,
}

impl Target {
    /// Whether it takes addresses of `family`: a group takes both, a prefix list its own.
    pub fn takes(&self, family: Family) -> bool {
        self.list.is_none_or(|l| l.family == family)
    }

    /// What this target may hold: the group quota, or a prefix list's `MaxEntries` in its
    /// family and nothing in the other.
    pub fn quota(&self, groups: crate::RuleQuota) -> crate::RuleQuota {
        match self.list {
            None => groups,
            Some(ListInfo { max_entries, family: Family::Ipv4, .. }) => crate::RuleQuota { ipv4: max_entries, ipv6: 0 },
            Some(ListInfo { max_entries, family: Family::Ipv6, .. }) => crate::RuleQuota { ipv4: 0, ipv6: max_entries },
        }
    }

    /// Whether an address can be on this target: a prefix list holds one family only.
    pub fn accepts(&self, cidr: &Cidr) -> bool {
        self.list.is_none_or(|l| l.family == cidr.family())
    }
}

/// A group that was found but is not managed, and why.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedGroup {
    pub id: TargetId,
    pub reason: String,
}

/// Turns observed groups into targets: each a spec selects (`select::selecting_spec`) gets one
/// environment (its `WhitelistEnvironment` tag if discovered, else its spec's) and one port set
/// (its `WhitelistPorts` tag, which must lie within that environment's `allowed_ports`, else
/// its spec's default). Groups no spec selects are left out; groups in unknown environments or
/// with refused port tags are skipped, never touched.
pub fn resolve_targets(
    groups: &[ObservedGroup],
    specs: &[TargetSpec],
    policies: &BTreeMap<Environment, Policy>,
) -> (Vec<Target>, Vec<SkippedGroup>) {
    let mut seen = BTreeSet::new();
    let mut targets = Vec::new();
    let mut skipped = Vec::new();
    for group in groups {
        if !seen.insert(group.id.clone()) {
            continue;
        }
        let Some(spec) = crate::select::selecting_spec(group, specs) else { continue };
        let skip = |reason: String| SkippedGroup { id: group.id.clone(), reason };
        let environment = match (&spec.selector, group.tags.get(ENVIRONMENT_TAG)) {
            (selector, Some(tag)) if selector.discovers() => match Environment::parse(tag.trim()) {
                Ok(env) => env,
                Err(_) => {
                    skipped.push(skip(format!("its {ENVIRONMENT_TAG} tag {tag:?} is not an environment name")));
                    continue;
                }
            },
            _ => spec.environment.clone(),
        };
        let Some(policy) = policies.get(&environment) else {
            skipped.push(skip(format!("it belongs to environment {environment}, which is not configured here")));
            continue;
        };
        let ports = match group.tags.get(PORTS_TAG) {
            _ if group.list.is_some() => PortSet::entries(),
            None => spec.default_ports.clone(),
            Some(tag) => match PortSet::parse(tag) {
                Ok(ports) if ports.within(policy.allowed_ports()) => ports,
                Ok(ports) => {
                    skipped.push(skip(format!(
                        "its {PORTS_TAG} tag names {ports}, outside environment {environment}'s allowed ports {}",
                        policy.allowed_ports()
                    )));
                    continue;
                }
                Err(err) => {
                    skipped.push(skip(format!("its {PORTS_TAG} tag is refused: {err}")));
                    continue;
                }
            },
        };
        targets.push(Target {
            id: group.id.clone(),
            route: spec.route(),
            name: group.name.clone(),
            environment,
            ports,
            rules: group.rules.clone(),
            counts: group.counts,
            list: group.list,
        });
    }
    (targets, skipped)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A group as described: tagged for discovery (`by_tag`), or not (named by id).
    fn group(id: &str, tags: &[(&str, &str)], by_tag: bool) -> ObservedGroup {
        let mut tags: BTreeMap<String, String> = tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        if by_tag {
            tags.insert("WhitelistManaged".into(), "true".into());
        }
        ObservedGroup {
            id: TargetId { region: "us-east-1".into(), group_id: id.into() },
            route: Route::region("us-east-1"),
            owner: None,
            name: id.into(),
            tags,
            rules: vec![],
            counts: FamilyCounts::default(),
            list: None,
        }
    }

    #[test]
    fn environment_and_port_tags() {
        let dev = Environment::parse("dev").unwrap();
        let prod = Environment::parse("prod").unwrap();
        let specs = vec![
            TargetSpec {
                region: "us-east-1".into(),
                selector: TargetSelector::Discovery { tag_key: "WhitelistManaged".into(), tag_value: "true".into() },
                environment: dev.clone(),
                default_ports: PortSet::alb(),
                endpoint_url: None,
                role_arn: None,
            },
            TargetSpec {
                region: "us-east-1".into(),
                selector: TargetSelector::Ids(vec![GroupId::parse("sg-x").unwrap()]),
                environment: dev.clone(),
                default_ports: PortSet::alb(),
                endpoint_url: None,
                role_arn: None,
            },
        ];
        let policies: BTreeMap<_, _> = [(dev.clone(), Policy::default())].into();
        let groups = vec![
            group("sg-plain", &[], true),
            group("sg-nlb", &[(PORTS_TAG, "nlb")], true),
            group("sg-prod", &[(ENVIRONMENT_TAG, "prod")], true),
            group("sg-ssh", &[(PORTS_TAG, "tcp:22")], true),
            group("sg-junk", &[(PORTS_TAG, "lots")], true),
            group("sg-x", &[(ENVIRONMENT_TAG, "prod")], false),
            group("sg-unselected", &[], false),
        ];
        let (targets, skipped) = resolve_targets(&groups, &specs, &policies);
        let names: Vec<_> = targets.iter().map(|t| (t.id.group_id.as_str(), t.ports.to_string())).collect();
        assert_eq!(
            names,
            [("sg-plain", "tcp:80,tcp:443".to_string()), ("sg-nlb", "tcp:7233".into()), ("sg-x", "tcp:80,tcp:443".into())]
        );
        assert!(targets.iter().all(|t| t.environment == dev));
        let skipped: Vec<_> = skipped.iter().map(|s| s.id.group_id.as_str()).collect();
        assert_eq!(skipped, ["sg-prod", "sg-ssh", "sg-junk"]);
        let with_prod: BTreeMap<_, _> = [(dev, Policy::default()), (prod.clone(), Policy::default())].into();
        let (targets, _) = resolve_targets(&groups[2..3], &specs, &with_prod);
        assert_eq!(targets[0].environment, prod);
    }
}
