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
use portcullis_core::{
    AppliedRule, Cidr, Family, FamilyCounts, GroupChange, ListInfo, ObservedGroup, ObservedRule, PortRange, TargetId,
    TargetSelector, TargetSpec,
};
use portcullis_engine::{Applied, FirewallError, Observation, ObserveFailure};

use crate::ec2::firewall_error;

/// EC2's limit on the entries one `ModifyManagedPrefixList` may add (and, apart, remove).
pub const ENTRIES_PER_CALL: usize = 100;

/// How long a modification may take to complete before the next call gives up waiting.
const SETTLE: Duration = Duration::from_secs(30);

/// The prefix lists the specs of one route name, with their entries.
pub(crate) async fn describe_lists(client: &Client, region: &str, specs: &[(usize, TargetSpec)]) -> Observation {
    let mut out = Observation::default();
    let named: Vec<(usize, String)> = specs
        .iter()
        .flat_map(|(i, s)| match &s.selector {
            TargetSelector::PrefixLists(ids) => ids.iter().map(|id| (*i, id.as_str().to_string())).collect(),
            _ => vec![],
        })
        .collect();
    let tagged: Vec<(usize, &str, &str)> = specs
        .iter()
        .filter_map(|(i, s)| match &s.selector {
            TargetSelector::TaggedPrefixLists { tag_key, tag_value } => Some((*i, tag_key.as_str(), tag_value.as_str())),
            _ => None,
        })
        .collect();
    if named.is_empty() && tagged.is_empty() {
        return out;
    }
    // Named lists by id; tagged ones by the tag filter when only one tag is asked, else all
    // of the account's lists, picked here.
    let mut request = client.describe_managed_prefix_lists();
    if tagged.is_empty() {
        request = request.set_prefix_list_ids(Some(named.iter().map(|(_, id)| id.clone()).collect()));
    } else if named.is_empty() && tagged.len() == 1 {
        let (_, key, value) = tagged[0];
        request = request.filters(aws_sdk_ec2::types::Filter::builder().name(format!("tag:{key}")).values(value).build());
    }
    let failure = |id: Option<&str>, err: FirewallError| ObserveFailure {
        region: region.to_string(),
        group_id: id.map(str::to_string),
        error: err.message,
        code: err.code,
    };
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
    // AWS's own lists (owner "AWS") are never ours to change.
    let found_by_tag = lists.iter().filter(|l| l.owner_id() != Some("AWS")).filter_map(|l| {
        let tags = l.tags();
        let spec = tagged.iter().find(|(_, k, v)| tags.iter().any(|t| t.key() == Some(*k) && t.value() == Some(*v)))?.0;
        Some((spec, l.prefix_list_id()?.to_string()))
    });
    let mut wanted: Vec<(usize, String)> = named.clone();
    wanted.extend(found_by_tag.filter(|(_, id)| !named.iter().any(|(_, n)| n == id)).collect::<Vec<_>>());
    for (spec, id) in &wanted {
        let Some(list) = lists.iter().find(|l| l.prefix_list_id() == Some(id.as_str())) else {
            let err =
                FirewallError { code: Some("InvalidPrefixListID.NotFound".into()), message: "prefix list not found".into() };
            out.failures.push(failure(Some(id), err));
            continue;
        };
        let family = if list.address_family() == Some("IPv6") { Family::Ipv6 } else { Family::Ipv4 };
        let info = ListInfo {
            version: list.version().unwrap_or(0),
            max_entries: list.max_entries().and_then(|m| usize::try_from(m).ok()).unwrap_or(0),
            family,
        };
        let mut rules = Vec::new();
        let mut pages = client.get_managed_prefix_list_entries().prefix_list_id(id).into_paginator().send();
        let mut failed = None;
        while let Some(page) = pages.next().await {
            match page {
                Ok(page) => {
                    for entry in page.entries() {
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
                Err(err) => {
                    failed = Some(firewall_error(err));
                    break;
                }
            }
        }
        if let Some(err) = failed {
            out.failures.push(failure(Some(id), err));
            continue;
        }
        let mut counts = FamilyCounts::default();
        counts.add(family, rules.len() as isize);
        out.groups.push(ObservedGroup {
            id: TargetId { region: region.to_string(), group_id: id.clone() },
            name: list.prefix_list_name().unwrap_or_default().to_string(),
            tags: list
                .tags()
                .iter()
                .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
                .collect(),
            rules,
            counts,
            spec: *spec,
            list: Some(info),
        });
    }
    out
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
                return Err(FirewallError {
                    code: Some("IncorrectState".into()),
                    message: format!("prefix list {id} is still being modified after {SETTLE:?}"),
                });
            }
            _ => return Ok(()),
        }
    }
}

/// Applies one planned change to a prefix list: removals (revokes, and the old form of each
/// description update) and additions in calls of at most 100 each, every call over the version
/// the last one made.
pub(crate) async fn apply_list(client: &Client, change: &GroupChange, list: ListInfo) -> Result<Applied, FirewallError> {
    let id = change.target.group_id.as_str();
    let add = |r: &AppliedRule| AddPrefixListEntry::builder().cidr(&r.ec2_cidr).description(&r.description).build();
    let remove = |r: &AppliedRule| RemovePrefixListEntry::builder().cidr(&r.ec2_cidr).build();
    let adds: Vec<AddPrefixListEntry> = change.authorize.iter().chain(&change.update_descriptions).map(add).collect();
    let removes: Vec<RemovePrefixListEntry> = change.revoke.iter().chain(&change.update_descriptions).map(remove).collect();
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
    Ok(Applied {
        authorized: change.authorize.len(),
        revoked: change.revoke.len(),
        updated: change.update_descriptions.len(),
        already_done: 0,
    })
}
