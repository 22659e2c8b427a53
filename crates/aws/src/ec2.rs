use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, Ipv6Range, SecurityGroup};
use portcullis_core::select::{self, GroupQuery};
use portcullis_core::{
    AppliedRule, Cidr, FamilyCounts, GroupChange, ObservedGroup, ObservedRule, PortRange, Protocol, Route, TargetId, TargetSpec,
};
use portcullis_engine::{Applied, ErrorClass, Firewall, FirewallError, Observation, ObserveFailure};

use crate::errors::firewall_error;

use crate::CallCounter;

const DUPLICATE: &str = "InvalidPermission.Duplicate";
const NOT_FOUND: &str = "InvalidPermission.NotFound";

/// EC2 security groups as a [`Firewall`].
pub struct Ec2Firewall {
    base: SdkConfig,
    counter: CallCounter,
    clients: Mutex<HashMap<Route, Client>>,
}

impl Ec2Firewall {
    pub fn new(base: &SdkConfig) -> Ec2Firewall {
        Ec2Firewall { base: base.clone(), counter: CallCounter::default(), clients: Mutex::default() }
    }

    /// Counts of the EC2 operations this firewall has made.
    pub fn calls(&self) -> &CallCounter {
        &self.counter
    }

    pub(crate) async fn client(&self, route: &Route) -> Client {
        if let Some(client) = self.clients.lock().expect("client cache poisoned").get(route) {
            return client.clone();
        }
        let region = Region::new(route.region.clone());
        let mut config = aws_sdk_ec2::config::Builder::from(&self.base).region(region.clone()).interceptor(self.counter.clone());
        if let Some(url) = &route.endpoint_url {
            config = config.endpoint_url(url);
        }
        if let Some(provider) = self.assumed(route).await {
            config = config.credentials_provider(provider);
        }
        let client = Client::from_conf(config.build());
        self.clients.lock().expect("client cache poisoned").entry(route.clone()).or_insert(client).clone()
    }

    /// Credentials for a route's other account, from STS with this process's own; renewed by
    /// the provider before they lapse. `None` for the process's own account.
    async fn assumed(&self, route: &Route) -> Option<aws_config::sts::AssumeRoleProvider> {
        let role = route.role_arn.as_ref()?;
        Some(
            aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name("portcullis")
                .region(Region::new(route.region.clone()))
                .configure(&self.base)
                .build()
                .await,
        )
    }

    /// The identity calls on `route` are made as: `sts:GetCallerIdentity` with that route's
    /// credentials (the assumed role's, for another account).
    pub(crate) async fn caller_identity(&self, route: &Route) -> Result<String, FirewallError> {
        let mut config = aws_sdk_sts::config::Builder::from(&self.base)
            .region(Region::new(route.region.clone()))
            .interceptor(self.counter.clone());
        if let Some(provider) = self.assumed(route).await {
            config = config.credentials_provider(provider);
        }
        let out = aws_sdk_sts::Client::from_conf(config.build()).get_caller_identity().send().await;
        let out = out.map_err(crate::errors::firewall_error)?;
        out.arn().map(str::to_string).ok_or_else(|| FirewallError::new(ErrorClass::Permanent, "STS named no identity"))
    }
}

fn port_range(perm: &IpPermission) -> Option<PortRange> {
    let protocol = Protocol::from_ec2(perm.ip_protocol()?)?;
    let from = u16::try_from(perm.from_port()?).ok()?;
    let to = u16::try_from(perm.to_port()?).ok()?;
    Some(PortRange { protocol, from, to })
}

fn observed_group(sg: &SecurityGroup, route: &Route) -> ObservedGroup {
    let mut rules = Vec::new();
    let mut counts = FamilyCounts::default();
    for perm in sg.ip_permissions() {
        let ports = port_range(perm);
        let cidrs = perm
            .ip_ranges()
            .iter()
            .map(|r| (r.cidr_ip(), r.description()))
            .chain(perm.ipv6_ranges().iter().map(|r| (r.cidr_ipv6(), r.description())));
        for (raw, description) in cidrs {
            let Some(raw) = raw else { continue };
            let parsed = Cidr::parse(raw).ok();
            counts.add(if raw.contains(':') { portcullis_core::Family::Ipv6 } else { portcullis_core::Family::Ipv4 }, 1);
            if let (Some(cidr), Some(ports)) = (parsed, ports) {
                rules.push(ObservedRule { cidr, raw_cidr: raw.to_string(), ports, description: description.map(str::to_string) });
            }
        }
        // Group references and prefix lists count against the quota too.
        counts.ipv4 += perm.user_id_group_pairs().len() + perm.prefix_list_ids().len();
    }
    ObservedGroup {
        list: None,
        id: TargetId { region: route.region.clone(), group_id: sg.group_id().unwrap_or_default().to_string() },
        route: route.clone(),
        owner: sg.owner_id().map(str::to_string),
        name: sg.group_name().unwrap_or_default().to_string(),
        tags: sg.tags().iter().filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string()))).collect(),
        rules,
        counts,
    }
}

/// One route's describe: its prefix lists and its groups, as `select` asks for them.
async fn describe_route(client: Client, route: Route, specs: Vec<TargetSpec>) -> Observation {
    let specs: Vec<&TargetSpec> = specs.iter().collect();
    let mut out = match select::list_query(&specs) {
        Some(query) => crate::prefix_list::describe_lists(&client, &route, &specs, query).await,
        None => Observation::default(),
    };
    if let Some(query) = select::group_query(&specs) {
        let groups = describe_groups(&client, &route, query, select::named_groups(specs.iter().copied())).await;
        out.groups.extend(groups.groups);
        out.failures.extend(groups.failures);
    }
    out
}

/// One route's security groups, as `query` asks: all it described (selection is `select`'s);
/// a `named` group it did not find is a failure.
async fn describe_groups(client: &Client, route: &Route, query: GroupQuery, named: BTreeSet<String>) -> Observation {
    let request = match query {
        GroupQuery::Tagged { key, value } => {
            client.describe_security_groups().filters(Filter::builder().name(format!("tag:{key}")).values(value).build())
        }
        GroupQuery::Ids(ids) => client
            .describe_security_groups()
            .filters(Filter::builder().name("group-id").set_values(Some(ids.into_iter().collect())).build()),
        GroupQuery::All => client.describe_security_groups(),
    };
    let mut out = Observation::default();
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => out.groups.extend(page.security_groups().iter().map(|sg| observed_group(sg, route))),
            Err(err) => {
                out.groups.clear();
                out.failures.push(ObserveFailure::new(route.region.clone(), None, firewall_error(err)));
                return out;
            }
        }
    }
    for id in named.iter().filter(|id| !out.groups.iter().any(|g| g.id.group_id == **id)) {
        let err = crate::errors::coded("InvalidGroup.NotFound", "security group not found");
        out.failures.push(ObserveFailure::new(route.region.clone(), Some(id.clone()), err));
    }
    out
}

/// Rules grouped into one permission per port range, IPv4 and IPv6 apart.
fn permissions(rules: &[AppliedRule], with_descriptions: bool) -> Vec<IpPermission> {
    let mut by_ports: BTreeMap<PortRange, (Vec<IpRange>, Vec<Ipv6Range>)> = BTreeMap::new();
    for r in rules {
        let entry = by_ports.entry(r.ports).or_default();
        let description = with_descriptions.then(|| r.description.clone());
        if r.ec2_cidr.contains(':') {
            entry.1.push(Ipv6Range::builder().cidr_ipv6(&r.ec2_cidr).set_description(description).build());
        } else {
            entry.0.push(IpRange::builder().cidr_ip(&r.ec2_cidr).set_description(description).build());
        }
    }
    by_ports
        .into_iter()
        .map(|(ports, (v4, v6))| {
            IpPermission::builder()
                .ip_protocol(ports.protocol.as_str())
                .from_port(i32::from(ports.from))
                .to_port(i32::from(ports.to))
                .set_ip_ranges((!v4.is_empty()).then_some(v4))
                .set_ipv6_ranges((!v6.is_empty()).then_some(v6))
                .build()
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Call {
    Authorize,
    Revoke,
    UpdateDescriptions,
}

impl Call {
    /// The error code that means "already done" for this call.
    fn done_code(self) -> Option<&'static str> {
        match self {
            Call::Authorize => Some(DUPLICATE),
            Call::Revoke => Some(NOT_FOUND),
            Call::UpdateDescriptions => None,
        }
    }

    /// Sends one call; returns how many of its rules the service said were not there.
    ///
    /// EC2 behaviours this relies on (moto differs on the second; `tests/it/aws_proxy.rs`
    /// answers as EC2 does): an Authorize with a rule already present fails whole with
    /// `InvalidPermission.Duplicate` and adds nothing; a Revoke of rules some of which are
    /// gone succeeds, revokes the rest, and lists the gone ones in `UnknownIpPermissions` (moto
    /// fails it whole with `InvalidPermission.NotFound`, which is handled too); an
    /// UpdateDescriptions of a missing rule fails whole.
    async fn send(self, client: &Client, group: &str, perms: Vec<IpPermission>) -> Result<usize, FirewallError> {
        let perms = Some(perms);
        match self {
            Call::Authorize => client
                .authorize_security_group_ingress()
                .group_id(group)
                .set_ip_permissions(perms)
                .send()
                .await
                .map(|_| 0)
                .map_err(firewall_error),
            Call::Revoke => client
                .revoke_security_group_ingress()
                .group_id(group)
                .set_ip_permissions(perms)
                .send()
                .await
                .map(|out| out.unknown_ip_permissions().iter().map(|p| p.ip_ranges().len() + p.ipv6_ranges().len()).sum())
                .map_err(firewall_error),
            Call::UpdateDescriptions => client
                .update_security_group_rule_descriptions_ingress()
                .group_id(group)
                .set_ip_permissions(perms)
                .send()
                .await
                .map(|_| 0)
                .map_err(firewall_error),
        }
    }

    /// Sends every rule in one call; if some were already done, retries the rest one by one.
    /// Returns (done now, already done).
    async fn batch(self, client: &Client, group: &str, rules: &[AppliedRule]) -> Result<(usize, usize), FirewallError> {
        if rules.is_empty() {
            return Ok((0, 0));
        }
        let with_descriptions = !matches!(self, Call::Revoke);
        match self.send(client, group, permissions(rules, with_descriptions)).await {
            // Only what really changed counts: rules EC2 reports unknown were gone already.
            Ok(unknown) => {
                let unknown = unknown.min(rules.len());
                Ok((rules.len() - unknown, unknown))
            }
            Err(err) if err.code.is_some() && err.code.as_deref() == self.done_code() => {
                let (mut done, mut already) = (0, 0);
                for rule in rules {
                    match self.send(client, group, permissions(std::slice::from_ref(rule), with_descriptions)).await {
                        Ok(0) => done += 1,
                        Ok(_) => already += 1,
                        Err(e) if e.code.as_deref() == self.done_code() => already += 1,
                        Err(e) => return Err(e),
                    }
                }
                Ok((done, already))
            }
            Err(err) => Err(err),
        }
    }
}

#[async_trait]
impl Firewall for Ec2Firewall {
    async fn observe(&self, specs: &[TargetSpec]) -> Observation {
        // One describe per region and account (route); regions are described concurrently, so
        // an unreachable one delays nothing but itself.
        let mut tasks = tokio::task::JoinSet::new();
        for (route, specs) in select::by_route(specs) {
            let client = self.client(&route).await;
            let specs: Vec<TargetSpec> = specs.into_iter().cloned().collect();
            tasks.spawn(async move { describe_route(client, route, specs).await });
        }
        let mut out = Observation::default();
        while let Some(joined) = tasks.join_next().await {
            match joined {
                Ok(part) => {
                    out.groups.extend(part.groups);
                    out.failures.extend(part.failures);
                }
                Err(err) => out.failures.push(ObserveFailure::new(
                    "?",
                    None,
                    FirewallError::new(ErrorClass::Transient, format!("describe task failed: {err}")),
                )),
            }
        }
        out.groups.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    async fn apply(&self, change: &GroupChange) -> Result<Applied, FirewallError> {
        // The change names its route: a group in another account is changed with that
        // account's role whether or not this process observed it first.
        let client = self.client(&change.route).await;
        if let Some(list) = change.list {
            return crate::prefix_list::apply_list(&client, change, list).await;
        }
        let group = change.target.group_id.as_str();
        // Revoke first: it frees quota for what is authorized after.
        let (revoked, gone) = Call::Revoke.batch(&client, group, &change.revoke).await?;
        let (updated, _) = Call::UpdateDescriptions.batch(&client, group, &change.update_descriptions).await?;
        let (authorized, present) = Call::Authorize.batch(&client, group, &change.authorize).await?;
        Ok(Applied { authorized, revoked, updated, already_done: gone + present })
    }
}
