//! `[guard]` (out-of-band changes reverted and approved, as VoyagerInnovations' tool did): which groups are guarded where, who approves, and for how long a
//! request waits.

use std::collections::{BTreeMap, BTreeSet};

use portcullis_core::guard::{Approvers, GroupSelection, GuardScope};
use portcullis_core::{GroupId, PrincipalPattern, Route, Ttl};
use serde::Deserialize;

use super::{ConfigError, error};

/// `[guard]`, as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileGuard {
    groups: Option<FileGroups>,
    #[serde(default)]
    own_principals: Vec<String>,
    #[serde(default)]
    approvers: Vec<String>,
    #[serde(default)]
    approver_groups: Vec<String>,
    min_approvals: Option<usize>,
    request_ttl: Option<String>,
    temporary_approval: Option<String>,
    max_event_age: Option<String>,
    #[serde(default)]
    targets: Vec<FileGuardTarget>,
    #[serde(default)]
    people: BTreeMap<String, Vec<String>>,
    #[serde(default)]
    break_glass: bool,
    break_glass_ttl: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileGroups {
    Kind(String),
    Ids(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileGuardTarget {
    region: String,
    role_arn: Option<String>,
    endpoint_url: Option<String>,
}

/// Guard, resolved and checked.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardConfig {
    pub scopes: Vec<GuardScope>,
    pub own_principals: Vec<PrincipalPattern>,
    pub approvers: Approvers,
    pub request_ttl: time::Duration,
    /// What "Approve for 24 h" grants (kept for the timed rules to come; see the README).
    pub temporary_approval: time::Duration,
    pub max_event_age: time::Duration,
}

/// How long a break-glass lasts at most when `break_glass_ttl` is not set.
const BREAK_GLASS_TTL: time::Duration = time::Duration::hours(4);

fn duration(key: &str, text: Option<&str>, default: time::Duration) -> Result<time::Duration, ConfigError> {
    match text {
        None => Ok(default),
        Some(t) => Ok(Ttl::parse_or_seconds(t).map_err(|e| error(format!("guard.{key}"), e))?.duration()),
    }
}

fn principals(key: &str, texts: &[String]) -> Result<Vec<PrincipalPattern>, ConfigError> {
    texts.iter().map(|t| PrincipalPattern::parse(t).map_err(|e| error(key, e))).collect()
}

pub(super) fn guard(file: &FileGuard) -> Result<GuardConfig, ConfigError> {
    let selection = match &file.groups {
        None => GroupSelection::Tagged,
        Some(FileGroups::Kind(k)) if k == "tagged" => GroupSelection::Tagged,
        Some(FileGroups::Kind(k)) if k == "all" => GroupSelection::All,
        Some(FileGroups::Kind(k)) => {
            return Err(error("guard.groups", format!("{k:?} is not \"tagged\", \"all\" or a list of group ids")));
        }
        Some(FileGroups::Ids(ids)) if ids.is_empty() => {
            return Err(error("guard.groups", "is empty: name at least one group id, or \"tagged\" or \"all\""));
        }
        Some(FileGroups::Ids(ids)) => {
            let ids = ids.iter().map(|id| GroupId::parse(id).map(|g| g.to_string()).map_err(|e| error("guard.groups", e)));
            GroupSelection::Ids(ids.collect::<Result<BTreeSet<_>, _>>()?)
        }
    };
    if file.targets.is_empty() {
        return Err(error("guard.targets", "name at least one region to guard ([[guard.targets]] region = \"…\")"));
    }
    let mut scopes = Vec::new();
    for (i, t) in file.targets.iter().enumerate() {
        if t.region.trim().is_empty() {
            return Err(error(format!("guard.targets[{i}].region"), "is empty"));
        }
        if let Some(role) = &t.role_arn
            && !(role.starts_with("arn:") && role.contains(":role/"))
        {
            return Err(error(
                format!("guard.targets[{i}].role_arn"),
                format!("{role:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
            ));
        }
        let route = Route { region: t.region.clone(), endpoint_url: t.endpoint_url.clone(), role_arn: t.role_arn.clone() };
        scopes.push(GuardScope { route, selection: selection.clone() });
    }
    for (key, names) in [("guard.approvers", &file.approvers), ("guard.approver_groups", &file.approver_groups)] {
        if names.iter().any(|n| n.trim().is_empty()) {
            return Err(error(key, "names an empty user; give a Slack user id or user name"));
        }
    }
    if file.approvers.is_empty() && file.approver_groups.is_empty() {
        return Err(error("guard.approvers", "name at least one approver (a Slack user id or user name) or approver group"));
    }
    let min_approvals = file.min_approvals.unwrap_or(1);
    if min_approvals == 0 {
        return Err(error("guard.min_approvals", "must be at least 1"));
    }
    if file.approver_groups.is_empty() && min_approvals > file.approvers.len() {
        return Err(error(
            "guard.min_approvals",
            format!("{min_approvals} approvals can never be reached by {} approvers", file.approvers.len()),
        ));
    }
    let mut people = BTreeMap::new();
    for (user, arns) in &file.people {
        people.insert(user.clone(), principals(&format!("guard.people.{user}"), arns)?);
    }
    let hours = time::Duration::hours;
    let own_principals = principals("guard.own_principals", &file.own_principals)?;
    if let Some((p, why)) = own_principals.iter().find_map(|p| p.too_wide().map(|why| (p, why))) {
        return Err(error(
            "guard.own_principals",
            format!("{p} is too wide: {why}; events of these identities are never reverted"),
        ));
    }
    let temporary_approval = duration("temporary_approval", file.temporary_approval.as_deref(), hours(24))?;
    let break_glass = match (file.break_glass, &file.break_glass_ttl) {
        (false, Some(_)) => return Err(error("guard.break_glass_ttl", "is set, but break_glass is not true")),
        (false, None) => None,
        (true, ttl) => Some(duration("break_glass_ttl", ttl.as_deref(), BREAK_GLASS_TTL)?),
    };
    Ok(GuardConfig {
        scopes,
        own_principals,
        approvers: Approvers {
            users: file.approvers.iter().cloned().collect(),
            groups: file.approver_groups.iter().cloned().collect(),
            min_approvals,
            people,
            max_term: temporary_approval,
            break_glass,
        },
        request_ttl: duration("request_ttl", file.request_ttl.as_deref(), hours(24))?,
        temporary_approval,
        max_event_age: duration("max_event_age", file.max_event_age.as_deref(), time::Duration::minutes(15))?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<GuardConfig, ConfigError> {
        guard(&toml::from_str::<FileGuard>(text).unwrap())
    }

    #[test]
    fn the_issue_s_example_reads_with_its_defaults() {
        let g = read(
            r#"
            groups = "tagged"
            own_principals = ["arn:aws:sts::123456789012:assumed-role/portcullis/*"]
            approvers = ["U0APPROVER1"]
            [[targets]]
            region = "us-east-1"
            [people]
            U0ALICE = ["arn:aws:iam::123456789012:user/alice", "arn:aws:sts::123456789012:assumed-role/*/alice@example.com"]
            "#,
        )
        .unwrap();
        assert_eq!(g.scopes[0].selection, GroupSelection::Tagged);
        assert_eq!(
            (g.approvers.min_approvals, g.request_ttl, g.max_event_age),
            (1, time::Duration::hours(24), time::Duration::minutes(15))
        );
        assert_eq!(g.approvers.user_of("arn:aws:sts::123456789012:assumed-role/Admin/alice@example.com"), Some("U0ALICE"));
        assert!(g.own_principals[0].matches("arn:aws:sts::123456789012:assumed-role/portcullis/i-0abc"));
    }

    #[test]
    fn mistakes_name_their_key() {
        let base = "approvers = [\"U1\"]\n[[targets]]\nregion = \"us-east-1\"\n";
        let refused = |extra: &str| read(&format!("{extra}\n{base}")).unwrap_err().key;
        assert_eq!(refused("groups = \"some\""), "guard.groups");
        assert_eq!(refused("groups = [\"nope\"]"), "guard.groups");
        assert_eq!(refused("min_approvals = 2"), "guard.min_approvals");
        assert_eq!(refused("own_principals = [\"alice\"]"), "guard.own_principals");
        assert_eq!(refused("request_ttl = \"soon\""), "guard.request_ttl");
        assert_eq!(read("[[targets]]\nregion = \"us-east-1\"\n").unwrap_err().key, "guard.approvers");
        assert_eq!(read("approvers = [\"U1\"]\n").unwrap_err().key, "guard.targets");
    }

    #[test]
    fn footguns_are_refused_by_name() {
        let target = "[[targets]]\nregion = \"us-east-1\"\n";
        let refused = |text: &str| read(&format!("{text}\n{target}")).unwrap_err();
        assert_eq!(refused("approvers = [\"\"]").key, "guard.approvers");
        assert_eq!(refused("approvers = [\"U1\"]\napprover_groups = [\" \"]").key, "guard.approver_groups");
        assert_eq!(refused("approvers = [\"U1\"]\ngroups = []").key, "guard.groups");
        for wide in [
            "arn:*:*:*:*:*",
            "arn:aws:sts::*:assumed-role/portcullis/*",
            "arn:aws:sts::123456789012:assumed-role/*",
            "arn:aws:ec2::123456789012:role/x",
        ] {
            let e = refused(&format!("approvers = [\"U1\"]\nown_principals = [\"{wide}\"]"));
            assert_eq!(e.key, "guard.own_principals", "{wide}");
            assert!(e.to_string().contains("too wide"), "{e}");
        }
        assert_eq!(refused("approvers = [\"U1\"]\nbreak_glass_ttl = \"1h\"").key, "guard.break_glass_ttl");
        let on = read(&format!("approvers = [\"U1\"]\nbreak_glass = true\n{target}")).unwrap();
        assert_eq!(on.approvers.break_glass, Some(time::Duration::hours(4)));
        assert_eq!(on.approvers.max_term, time::Duration::hours(24));
    }
}
