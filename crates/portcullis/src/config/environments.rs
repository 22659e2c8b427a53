//! `[environments.NAME]`: each environment's policy, its targets (`[[…targets]]`) and the Auto
//! Scaling groups whose members it admits (`[[…members]]`); and, without a file's targets for
//! the default environment, the IP Whitelist Manager's variables (`ENABLE_SG_DISCOVERY`,
//! `MANAGED_SECURITY_GROUP_IDS`).

use std::collections::BTreeMap;

use portcullis_core::{
    AddressKind, Environment, GroupId, MemberSource, OnFailure, Policy, PolicyRules, PortSet, PrefixListId, PrincipalPattern,
    Route, TargetSelector, TargetSpec, Ttl,
};
use serde::Deserialize;

use super::{ConfigError, Env, error};

/// A duration given as TTL text (`1h`) or whole seconds (`3600`), as the authenticating security group does.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(super) enum TtlOrSeconds {
    Seconds(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileEnvironment {
    pub(super) max_ttl: Option<String>,
    pub(super) max_grants_per_user: Option<usize>,
    min_prefix_v4: Option<u8>,
    min_prefix_v6: Option<u8>,
    pub(super) allowed_ports: Option<String>,
    pub(super) users: Option<Vec<String>>,
    pub(super) user_groups: Option<Vec<String>>,
    pub(super) refuse_special_purpose: Option<bool>,
    /// IAM principals (ARNs, `*` wildcards) that may authenticate here.
    pub(super) principals: Option<Vec<String>>,
    /// How long `/connection` grants last (the authenticating security group's API).
    pub(super) time_to_expire: Option<TtlOrSeconds>,
    #[serde(default)]
    pub(super) targets: Vec<FileTarget>,
    /// Auto Scaling groups whose members are admitted (lifecycle hooks and true-ups, as the AWS Auto Scaling sync did).
    #[serde(default)]
    pub(super) members: Vec<FileMember>,
}

/// One `[[environments.NAME.members]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMember {
    pub(super) asg: String,
    pub(super) region: String,
    pub(super) address: Option<String>,
    pub(super) role_arn: Option<String>,
    pub(super) endpoint_url: Option<String>,
    /// `continue` (the default) or `abandon`: a launch its own region could not admit.
    pub(super) on_failure: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileTarget {
    pub(super) region: String,
    #[serde(default)]
    pub(super) discovery: bool,
    pub(super) group_ids: Option<Vec<String>>,
    /// Managed prefix lists whose entries are the grants (the groups reference them).
    pub(super) prefix_list_ids: Option<Vec<String>>,
    /// With `discovery = true`: discover managed prefix lists by the discovery tag, not groups.
    #[serde(default)]
    pub(super) prefix_lists: bool,
    pub(super) ports: Option<String>,
    pub(super) endpoint_url: Option<String>,
    /// A role to assume for these groups (another account).
    pub(super) role_arn: Option<String>,
}

/// What targets get when they say nothing themselves.
pub(super) struct TargetDefaults {
    pub(super) ports: PortSet,
    /// The tag discovered groups carry (`SG_DISCOVERY_TAG_KEY` / `_VALUE`).
    pub(super) discovery: TargetSelector,
}

/// Every `[environments.NAME]`: its policy and its targets. Without any, the default
/// environment alone, with the default policy; else the default must be among them.
pub(super) fn environments(
    file: &BTreeMap<String, FileEnvironment>,
    defaults: &TargetDefaults,
    default_environment: &Environment,
) -> Result<(BTreeMap<Environment, Policy>, Vec<TargetSpec>), ConfigError> {
    let mut policies = BTreeMap::new();
    let mut specs = Vec::new();
    for (name, fe) in file {
        let key = format!("environments.{name}");
        let environment = Environment::parse(name).map_err(|e| error(&key, e))?;
        let policy = policy(&key, fe)?;
        for (i, t) in fe.targets.iter().enumerate() {
            specs.push(target(&format!("{key}.targets[{i}]"), t, &environment, &policy, defaults)?);
        }
        policies.insert(environment, policy);
    }
    if let Some(shared) = portcullis_core::shared_target(&specs) {
        return Err(error(
            format!("environments.{}.targets", shared.second),
            format!(
                "{} ({}) is also a target of environment {}: a group or prefix list belongs to one environment only",
                shared.id, shared.region, shared.first
            ),
        ));
    }
    if policies.is_empty() {
        policies.insert(default_environment.clone(), Policy::default());
    } else if !policies.contains_key(default_environment) {
        let known = policies.keys().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        return Err(error("ENVIRONMENT", format!("{default_environment} is not one of the configured environments ({known})")));
    }
    Ok((policies, specs))
}

/// Every `[[environments.NAME.members]]`, checked against its environment's policy.
pub(super) fn members(
    file: &BTreeMap<String, FileEnvironment>,
    policies: &BTreeMap<Environment, Policy>,
) -> Result<Vec<MemberSource>, ConfigError> {
    let mut out: Vec<MemberSource> = Vec::new();
    for (name, fe) in file {
        let environment = Environment::parse(name).map_err(|e| error(format!("environments.{name}"), e))?;
        for (i, m) in fe.members.iter().enumerate() {
            let key = format!("environments.{name}.members[{i}]");
            if m.asg.trim().is_empty() || m.asg.len() > 255 {
                return Err(error(format!("{key}.asg"), "give the Auto Scaling group's name (1-255 characters)"));
            }
            if m.region.trim().is_empty() {
                return Err(error(format!("{key}.region"), "is empty"));
            }
            let address = match &m.address {
                None => AddressKind::Public,
                Some(text) => AddressKind::parse(text)
                    .ok_or_else(|| error(format!("{key}.address"), format!("{text:?} is not public, private or ipv6")))?,
            };
            if address == AddressKind::Private && policies.get(&environment).is_some_and(|p| p.rules().refuse_special_purpose) {
                return Err(error(
                    format!("{key}.address"),
                    format!(
                        "private addresses are special-purpose ranges, which environments.{name} refuses (refuse_special_purpose)"
                    ),
                ));
            }
            if let Some(role) = &m.role_arn
                && !(role.starts_with("arn:") && role.contains(":role/"))
            {
                return Err(error(
                    format!("{key}.role_arn"),
                    format!("{role:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
                ));
            }
            let on_failure = match m.on_failure.as_deref() {
                None => OnFailure::Continue,
                Some(text) => OnFailure::parse(text)
                    .ok_or_else(|| error(format!("{key}.on_failure"), format!("{text:?} is not \"continue\" or \"abandon\"")))?,
            };
            let source = MemberSource {
                environment: environment.clone(),
                asg: m.asg.clone(),
                route: Route { region: m.region.clone(), endpoint_url: m.endpoint_url.clone(), role_arn: m.role_arn.clone() },
                address,
                on_failure,
            };
            if out
                .iter()
                .any(|o| o.environment == source.environment && o.asg == source.asg && o.route.region == source.route.region)
            {
                return Err(error(key, format!("{} in {} is listed twice", m.asg, m.region)));
            }
            out.push(source);
        }
    }
    Ok(out)
}

/// One `[[environments.NAME.targets]]`.
pub(super) fn target(
    key: &str,
    t: &FileTarget,
    environment: &Environment,
    policy: &Policy,
    defaults: &TargetDefaults,
) -> Result<TargetSpec, ConfigError> {
    let selector = match (&t.group_ids, &t.prefix_list_ids, t.discovery) {
        (None, None, false) => return Err(error(key, "give discovery = true, group_ids or prefix_list_ids")),
        (Some(ids), None, false) => TargetSelector::Ids(group_ids(&format!("{key}.group_ids"), ids)?),
        (None, Some(lists), false) => {
            let key = format!("{key}.prefix_list_ids");
            if lists.is_empty() {
                return Err(error(key, "is empty"));
            }
            let lists = lists.iter().map(|id| PrefixListId::parse(id).map_err(|e| error(key.as_str(), e)));
            TargetSelector::PrefixLists(lists.collect::<Result<_, _>>()?)
        }
        (None, None, true) => match (&defaults.discovery, t.prefix_lists) {
            (TargetSelector::Discovery { tag_key, tag_value }, true) => {
                TargetSelector::TaggedPrefixLists { tag_key: tag_key.clone(), tag_value: tag_value.clone() }
            }
            (selector, _) => selector.clone(),
        },
        _ => return Err(error(key, "give one of discovery = true, group_ids or prefix_list_ids")),
    };
    if t.prefix_lists && !t.discovery {
        return Err(error(format!("{key}.prefix_lists"), "needs discovery = true (name lists by id with prefix_list_ids)"));
    }
    let ports = match &t.ports {
        Some(text) => PortSet::parse(text).map_err(|e| error(format!("{key}.ports"), e))?,
        None => defaults.ports.clone(),
    };
    if !ports.within(policy.allowed_ports()) {
        return Err(error(format!("{key}.ports"), format!("{ports} is outside allowed_ports {}", policy.allowed_ports())));
    }
    if t.region.trim().is_empty() {
        return Err(error(format!("{key}.region"), "is empty"));
    }
    if let Some(role) = &t.role_arn
        && !(role.starts_with("arn:") && role.contains(":role/"))
    {
        return Err(error(format!("{key}.role_arn"), format!("{role:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)")));
    }
    Ok(TargetSpec {
        region: t.region.clone(),
        selector,
        environment: environment.clone(),
        default_ports: ports,
        endpoint_url: t.endpoint_url.clone(),
        role_arn: t.role_arn.clone(),
    })
}

/// The default environment's target from the IP Whitelist Manager's variables (`ENABLE_SG_DISCOVERY`,
/// `MANAGED_SECURITY_GROUP_IDS`, `AWS_REGION`), if they name one.
pub(super) fn whitelist_manager_target(
    env: Env<'_>,
    defaults: TargetDefaults,
    environment: &Environment,
) -> Result<Option<TargetSpec>, ConfigError> {
    let discovery = match env("ENABLE_SG_DISCOVERY").as_deref().map(str::trim) {
        None | Some("") => false,
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
        Some(v) => return Err(error("ENABLE_SG_DISCOVERY", format!("{v:?} is not true or false"))),
    };
    let ids = match env("MANAGED_SECURITY_GROUP_IDS").filter(|v| !v.trim().is_empty()) {
        None => vec![],
        Some(json) => {
            let ids: Vec<String> = serde_json::from_str(&json)
                .map_err(|e| error("MANAGED_SECURITY_GROUP_IDS", format!("must be a JSON array of group ids: {e}")))?;
            group_ids("MANAGED_SECURITY_GROUP_IDS", &ids)?
        }
    };
    let selector = match (discovery, ids.is_empty()) {
        (true, _) => defaults.discovery,
        (false, false) => TargetSelector::Ids(ids),
        (false, true) => return Ok(None),
    };
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| error("AWS_REGION", "is required when ENABLE_SG_DISCOVERY or MANAGED_SECURITY_GROUP_IDS is set"))?;
    Ok(Some(TargetSpec {
        region,
        selector,
        environment: environment.clone(),
        default_ports: defaults.ports,
        endpoint_url: None,
        role_arn: None,
    }))
}

pub(super) fn positive(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 { Err(error(key, "must be at least 1")) } else { Ok(value) }
}

pub(super) fn group_ids(key: &str, ids: &[String]) -> Result<Vec<GroupId>, ConfigError> {
    ids.iter().map(|id| GroupId::parse(id).map_err(|e| error(key, e))).collect()
}

pub(super) fn policy(key: &str, fe: &FileEnvironment) -> Result<Policy, ConfigError> {
    let defaults = PolicyRules::default();
    let rules = PolicyRules {
        max_ttl: match &fe.max_ttl {
            Some(text) => Ttl::parse(text).map_err(|e| error(format!("{key}.max_ttl"), e))?,
            None => defaults.max_ttl,
        },
        max_grants_per_user: fe.max_grants_per_user.unwrap_or(defaults.max_grants_per_user),
        min_prefix_v4: fe.min_prefix_v4.unwrap_or(defaults.min_prefix_v4),
        min_prefix_v6: fe.min_prefix_v6.unwrap_or(defaults.min_prefix_v6),
        allowed_ports: match &fe.allowed_ports {
            Some(text) => PortSet::parse(text).map_err(|e| error(format!("{key}.allowed_ports"), e))?,
            None => defaults.allowed_ports,
        },
        allowed_users: fe.users.as_ref().map(|u| u.iter().cloned().collect()),
        allowed_groups: fe.user_groups.iter().flatten().cloned().collect(),
        refuse_special_purpose: fe.refuse_special_purpose.unwrap_or(false),
        allowed_principals: fe
            .principals
            .iter()
            .flatten()
            .map(|p| PrincipalPattern::parse(p).map_err(|e| error(format!("{key}.principals"), e)))
            .collect::<Result<_, _>>()?,
        connection_ttl: match &fe.time_to_expire {
            None => defaults.connection_ttl,
            Some(TtlOrSeconds::Seconds(n)) => Ttl::from_seconds(u64::try_from(*n).unwrap_or(0))
                .map_err(|_| error(format!("{key}.time_to_expire"), "seconds must be from 60 to 31536000 (365 days)"))?,
            Some(TtlOrSeconds::Text(text)) => {
                Ttl::parse_or_seconds(text).map_err(|e| error(format!("{key}.time_to_expire"), e))?
            }
        },
    };
    Policy::new(rules).map_err(|e| error(format!("{key}.{}", e.field()), e))
}
