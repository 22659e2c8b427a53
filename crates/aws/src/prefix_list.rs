//! Managed prefix lists as targets: grants are the lists' entries (description behind our
//! marker), and the groups that reference a list let them in. Observed with one
//! `DescribeManagedPrefixLists` per region and `GetManagedPrefixListEntries` per list; changed
//! with `ModifyManagedPrefixList` calls of at most 100 additions and 100 removals, each naming
//! the version it was planned over (a list another writer changed fails the call with
//! `PrefixListVersionMismatch`, and the engine observes again and plans anew), each waiting for
//! the previous modification to complete.

use std::time::Duration;

use aws_sdk_ec2::Client;
use aws_sdk_ec2::types::{AddPrefixListEntry, PrefixListState, RemovePrefixListEntry};
use portcullis_core::select::{self, ListQuery};
use portcullis_core::{
    AppliedRule, Cidr, Family, FamilyCounts, GroupChange, ListInfo, ObservedGroup, ObservedRule, PortRange, Route, TargetId,
    TargetSpec,
};
use portcullis_engine::{Applied, FirewallError, Observation, ObserveFailure};

use crate::errors::firewall_error;

/// EC2's limit on the entries one `ModifyManagedPrefixList` may add (and, apart, remove).
pub const ENTRIES_PER_CALL: usize = 100;

/// How long a modification may take to complete before the next call gives up waiting.
const SETTLE: Duration = Duration::from_secs(30);

/// One route's prefix lists, as `query` asks, with the entries of those a spec selects
/// (`select`, which decides; entries cost a call per list, so only selected lists are read);
/// a list a spec names that is not there is a failure.
pub(crate) async fn describe_lists(client: &Client, route: &Route, specs: &[&TargetSpec], query: ListQuery) -> Observation {
    let mut out = Observation::default();
    let region = route.region.as_str();
    let request = match query {
        ListQuery::Ids(ids) => client.describe_managed_prefix_lists().set_prefix_list_ids(Some(ids.into_iter().collect())),
        ListQuery::Tagged { key, value } => client
            .describe_managed_prefix_lists()
            .filters(aws_sdk_ec2::types::Filter::builder().name(format!("tag:{key}")).values(value).build()),
        ListQuery::All => client.describe_managed_prefix_lists(),
    };
    let failure = |id: Option<&str>, err: FirewallError| ObserveFailure::new(region, id.map(str::to_string), err);
    let mut lists = Vec::new();
    let mut pages = request.into_paginator().send();
    while let Some(page) = pages.next().await {
        match page {
            Ok(page) => lists.extend(page.prefix_lists.unwrap_or_default()),
            Err(err) => {
                out.failures.push(failure(None, firewall_error(err)));
                return out;
            }
        }
    }
    let specs: Vec<TargetSpec> = specs.iter().map(|s| (*s).clone()).collect();
    for named in select::named_lists(&specs) {
        if !lists.iter().any(|l| l.prefix_list_id() == Some(named.as_str())) {
            let err = crate::errors::coded("InvalidPrefixListID.NotFound", "prefix list not found");
            out.failures.push(failure(Some(&named), err));
        }
    }
    for list in &lists {
        let Some(id) = list.prefix_list_id() else { continue };
        let family = if list.address_family() == Some("IPv6") { Family::Ipv6 } else { Family::Ipv4 };
        let info = ListInfo {
            version: list.version().unwrap_or(0),
            max_entries: list.max_entries().and_then(|m| usize::try_from(m).ok()).unwrap_or(0),
            family,
        };
        let mut described = ObservedGroup {
            id: TargetId { region: region.to_string(), group_id: id.to_string() },
            route: route.clone(),
            owner: list.owner_id().map(str::to_string),
            name: list.prefix_list_name().unwrap_or_default().to_string(),
            tags: list
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                .collect(),
            rules: vec![],
            counts: FamilyCounts::default(),
            list: Some(info),
        };
        if select::selecting_spec(&described, &specs).is_none() {
            continue;
        }
        match entries(client, id).await {
            Ok(rules) => {
                described.counts.add(family, rules.len() as isize);
                described.rules = rules;
                out.groups.push(described);
            }
            Err(err) => out.failures.push(failure(Some(id), err)),
        }
    }
    out
}

/// A list's entries, as rules on [`PortRange::ENTRY`].
async fn entries(client: &Client, id: &str) -> Result<Vec<ObservedRule>, FirewallError> {
    let mut rules = Vec::new();
    let mut pages = client.get_managed_prefix_list_entries().prefix_list_id(id).into_paginator().send();
    while let Some(page) = pages.next().await {
        for entry in page.map_err(firewall_error)?.entries() {
            let Some(raw) = entry.cidr() else { continue };
            let Ok(cidr) = Cidr::parse(raw) else { continue };
            rules.push(ObservedRule {
                cidr,
                raw_cidr: raw.to_string(),
                ports: PortRange::ENTRY,
                description: entry.description().map(str::to_string),
            });
        }
    }
    Ok(rules)
}

/// The `i`th call's share of `items`: at most [`ENTRIES_PER_CALL`].
fn part<T>(items: &[T], i: usize) -> &[T] {
    let start = (i * ENTRIES_PER_CALL).min(items.len());
    &items[start..(start + ENTRIES_PER_CALL).min(items.len())]
}

/// Waits until the list's last modification completed (EC2 refuses another meanwhile).
async fn settled(client: &Client, id: &str) -> Result<(), FirewallError> {
    let started = std::time::Instant::now();
    let mut pause = Duration::from_millis(100);
    loop {
        let out = client.describe_managed_prefix_lists().prefix_list_ids(id).send().await.map_err(firewall_error)?;
        let state = out.prefix_lists().first().and_then(|l| l.state()).cloned();
        match state {
            Some(PrefixListState::ModifyInProgress | PrefixListState::CreateInProgress) if started.elapsed() < SETTLE => {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(2));
            }
            Some(PrefixListState::ModifyInProgress | PrefixListState::CreateInProgress) => {
                return Err(crate::errors::coded(
                    "IncorrectState",
                    format!("prefix list {id} is still being modified after {SETTLE:?}"),
                ));
            }
            _ => return Ok(()),
        }
    }
}

/// Applies one planned change to a prefix list: removals and additions in calls of at most 100
/// each, every call over the version the last one made.
pub(crate) async fn apply_list(client: &Client, change: &GroupChange, list: ListInfo) -> Result<Applied, FirewallError> {
    let id = change.target.group_id.as_str();
    let add = |r: &AppliedRule| AddPrefixListEntry::builder().cidr(&r.ec2_cidr).description(&r.description).build();
    let remove = |r: &AppliedRule| RemovePrefixListEntry::builder().cidr(&r.ec2_cidr).build();
    // Never a description update: EC2 documents none but a remove and an add of the entry,
    // which would cut access in between (the planner reports such entries instead).
    let adds: Vec<AddPrefixListEntry> = change.authorize.iter().map(add).collect();
    let removes: Vec<RemovePrefixListEntry> = change.revoke.iter().map(remove).collect();
    let calls = adds.len().max(removes.len()).div_ceil(ENTRIES_PER_CALL);
    let mut version = list.version;
    for i in 0..calls {
        if i > 0 {
            settled(client, id).await?;
        }
        let (a, r) = (part(&adds, i), part(&removes, i));
        let out = client
            .modify_managed_prefix_list()
            .prefix_list_id(id)
            .current_version(version)
            .set_add_entries((!a.is_empty()).then(|| a.to_vec()))
            .set_remove_entries((!r.is_empty()).then(|| r.to_vec()))
            .send()
            .await
            .map_err(firewall_error)?;
        version = out.prefix_list().and_then(|l| l.version()).unwrap_or(version + 1);
    }
    Ok(Applied { authorized: change.authorize.len(), revoked: change.revoke.len(), updated: 0, already_done: 0 })
}
