//! Selection: which security groups and prefix lists the configured specs mean. A decision,
//! so it lives here: the firewall adapters ask the cloud for what [`GroupQuery`] and
//! [`ListQuery`] say (a filter that narrows the answer, never below what some spec selects),
//! return everything they described, and [`selecting_spec`] decides which spec (so which
//! environment and ports) each one is; what no spec selects is left out.

use std::collections::BTreeSet;

use crate::{ObservedGroup, Route, TargetSelector, TargetSpec};

/// The owner AWS's own prefix lists have: never ours to change, whatever their tags.
pub const AWS_OWNER: &str = "AWS";

/// What one describe of security groups (one route) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupQuery {
    /// Only groups with this tag key and value: every spec there discovers by this one tag.
    Tagged { key: String, value: String },
    /// Only these groups: every spec there names its groups.
    Ids(BTreeSet<String>),
    /// Every group of the region: the specs select in more than one way.
    All,
}

/// What one describe of managed prefix lists (one route) asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListQuery {
    /// Only these lists: every spec there names its lists.
    Ids(BTreeSet<String>),
    /// Only lists with this tag key and value: the one spec there discovers by it.
    Tagged { key: String, value: String },
    /// Every list of the account: the specs select in more than one way.
    All,
}

/// The group query for one route's specs (`None`: no spec there selects groups).
pub fn group_query(specs: &[&TargetSpec]) -> Option<GroupQuery> {
    let specs: Vec<&&TargetSpec> = specs.iter().filter(|s| !s.selector.is_prefix_lists()).collect();
    if specs.is_empty() {
        return None;
    }
    let tags: BTreeSet<(&str, &str)> = specs
        .iter()
        .filter_map(|s| match &s.selector {
            TargetSelector::Discovery { tag_key, tag_value } => Some((tag_key.as_str(), tag_value.as_str())),
            _ => None,
        })
        .collect();
    let ids = named_groups(specs.iter().map(|s| **s));
    Some(match (tags.len(), ids.is_empty()) {
        (0, _) => GroupQuery::Ids(ids),
        (1, true) => {
            let (key, value) = tags.first().expect("one tag");
            GroupQuery::Tagged { key: key.to_string(), value: value.to_string() }
        }
        _ => GroupQuery::All,
    })
}

/// The list query for one route's specs (`None`: no spec there selects prefix lists).
pub fn list_query(specs: &[&TargetSpec]) -> Option<ListQuery> {
    let named = named_lists(specs.iter().copied());
    let tags: Vec<(&str, &str)> = specs
        .iter()
        .filter_map(|s| match &s.selector {
            TargetSelector::TaggedPrefixLists { tag_key, tag_value } => Some((tag_key.as_str(), tag_value.as_str())),
            _ => None,
        })
        .collect();
    match (tags.as_slice(), named.is_empty()) {
        ([], true) => None,
        ([], false) => Some(ListQuery::Ids(named)),
        ([(key, value)], true) => Some(ListQuery::Tagged { key: key.to_string(), value: value.to_string() }),
        _ => Some(ListQuery::All),
    }
}

/// The group ids the specs name: each one a describe does not find is reported missing.
pub fn named_groups<'a>(specs: impl IntoIterator<Item = &'a TargetSpec>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for spec in specs {
        if let TargetSelector::Ids(ids) = &spec.selector {
            out.extend(ids.iter().map(|id| id.as_str().to_string()));
        }
    }
    out
}

/// The prefix list ids the specs name: each one a describe does not find is reported missing.
pub fn named_lists<'a>(specs: impl IntoIterator<Item = &'a TargetSpec>) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for spec in specs {
        if let TargetSelector::PrefixLists(ids) = &spec.selector {
            out.extend(ids.iter().map(|id| id.as_str().to_string()));
        }
    }
    out
}

/// Whether `spec` selects `group`, as described through `group.route`: the same route, the
/// same kind (group or prefix list), and then by id or by tag. A prefix list AWS owns is never
/// selected by tag.
pub fn selects(spec: &TargetSpec, group: &ObservedGroup) -> bool {
    if spec.route() != group.route {
        return false;
    }
    let id = group.id.group_id.as_str();
    let tagged = |key: &str, value: &str| group.tags.get(key).is_some_and(|v| v == value);
    match (&spec.selector, group.list.is_some()) {
        (TargetSelector::Discovery { tag_key, tag_value }, false) => tagged(tag_key, tag_value),
        (TargetSelector::Ids(ids), false) => ids.iter().any(|i| i.as_str() == id),
        (TargetSelector::PrefixLists(ids), true) => ids.iter().any(|i| i.as_str() == id),
        (TargetSelector::TaggedPrefixLists { tag_key, tag_value }, true) => {
            group.owner.as_deref() != Some(AWS_OWNER) && tagged(tag_key, tag_value)
        }
        _ => false,
    }
}

/// The spec that makes `group` a target: one naming it by id first (so a list named in one
/// environment is that environment's even where another discovers it by tag), else the first
/// that selects it by tag; `None` when no spec selects it.
pub fn selecting_spec<'a>(group: &ObservedGroup, specs: &'a [TargetSpec]) -> Option<&'a TargetSpec> {
    let mut selecting = specs.iter().filter(|s| selects(s, group));
    let first = selecting.clone().next()?;
    Some(selecting.find(|s| !s.selector.discovers()).unwrap_or(first))
}

/// The routes the specs describe through, each with its specs (in the configured order).
pub fn by_route(specs: &[TargetSpec]) -> Vec<(Route, Vec<&TargetSpec>)> {
    let mut out: Vec<(Route, Vec<&TargetSpec>)> = Vec::new();
    for spec in specs {
        let route = spec.route();
        match out.iter_mut().find(|(r, _)| *r == route) {
            Some((_, specs)) => specs.push(spec),
            None => out.push((route, vec![spec])),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{Environment, FamilyCounts, GroupId, ListInfo, PortSet, PrefixListId, TargetId};

    fn spec(env: &str, selector: TargetSelector) -> TargetSpec {
        TargetSpec {
            region: "eu-west-1".into(),
            selector,
            environment: Environment::parse(env).unwrap(),
            default_ports: PortSet::parse("tcp:443").unwrap(),
            endpoint_url: None,
            role_arn: None,
        }
    }

    fn tag(key: &str, value: &str) -> TargetSelector {
        TargetSelector::Discovery { tag_key: key.into(), tag_value: value.into() }
    }

    fn ids(ids: &[&str]) -> TargetSelector {
        TargetSelector::Ids(ids.iter().map(|i| GroupId::parse(i).unwrap()).collect())
    }

    fn group(id: &str, tags: &[(&str, &str)]) -> ObservedGroup {
        ObservedGroup {
            id: TargetId { region: "eu-west-1".into(), group_id: id.into() },
            route: Route::region("eu-west-1"),
            owner: Some("123456789012".into()),
            name: id.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
            rules: vec![],
            counts: FamilyCounts::default(),
            list: None,
        }
    }

    fn list(id: &str, owner: &str, tags: &[(&str, &str)]) -> ObservedGroup {
        let info = ListInfo { version: 1, max_entries: 10, family: crate::Family::Ipv4 };
        ObservedGroup { owner: Some(owner.into()), list: Some(info), ..group(id, tags) }
    }

    #[test]
    fn one_tag_or_only_ids_narrow_the_describe_and_a_mix_describes_all() {
        let (a, b) = (spec("dev", tag("Whitelist", "true")), spec("prod", ids(&["sg-1", "sg-2"])));
        let tagged = GroupQuery::Tagged { key: "Whitelist".into(), value: "true".into() };
        assert_eq!(group_query(&[&a]), Some(tagged));
        assert_eq!(group_query(&[&b]), Some(GroupQuery::Ids(["sg-1".into(), "sg-2".into()].into())));
        assert_eq!(group_query(&[&a, &b]), Some(GroupQuery::All));
        let lists = spec("dev", TargetSelector::PrefixLists(vec![PrefixListId::parse("pl-1").unwrap()]));
        assert_eq!(group_query(&[&lists]), None, "prefix lists are not groups");
        assert_eq!(list_query(&[&lists, &a]), Some(ListQuery::Ids(["pl-1".into()].into())));
        let tagged_lists = spec("dev", TargetSelector::TaggedPrefixLists { tag_key: "k".into(), tag_value: "v".into() });
        assert_eq!(list_query(&[&tagged_lists]), Some(ListQuery::Tagged { key: "k".into(), value: "v".into() }));
        assert_eq!(list_query(&[&tagged_lists, &lists]), Some(ListQuery::All));
        assert_eq!(list_query(&[&a]), None);
    }

    #[test]
    fn a_group_is_selected_by_its_tag_or_id_on_its_own_route_only() {
        let specs = [spec("dev", tag("Whitelist", "true")), spec("prod", ids(&["sg-2"]))];
        let tagged = group("sg-1", &[("Whitelist", "true")]);
        assert_eq!(selecting_spec(&tagged, &specs).map(|s| s.environment.as_str()), Some("dev"));
        assert_eq!(selecting_spec(&group("sg-2", &[]), &specs).map(|s| s.environment.as_str()), Some("prod"));
        assert_eq!(selecting_spec(&group("sg-3", &[("Whitelist", "no")]), &specs), None, "described, not selected");
        let elsewhere = ObservedGroup { route: Route::region("us-east-1"), ..tagged.clone() };
        assert_eq!(selecting_spec(&elsewhere, &specs), None, "another route's group is not this spec's");
        let other_account =
            ObservedGroup { route: Route { role_arn: Some("arn:aws:iam::1:role/x".into()), ..tagged.route.clone() }, ..tagged };
        assert_eq!(selecting_spec(&other_account, &specs), None);
    }

    #[test]
    fn a_named_list_beats_a_tag_and_aws_lists_are_never_taken_by_tag() {
        let by_tag = spec("dev", TargetSelector::TaggedPrefixLists { tag_key: "k".into(), tag_value: "v".into() });
        let named = spec("prod", TargetSelector::PrefixLists(vec![PrefixListId::parse("pl-1").unwrap()]));
        let specs = [by_tag, named];
        let ours = list("pl-1", "123456789012", &[("k", "v")]);
        assert_eq!(selecting_spec(&ours, &specs).map(|s| s.environment.as_str()), Some("prod"));
        let theirs = list("pl-2", AWS_OWNER, &[("k", "v")]);
        assert_eq!(selecting_spec(&theirs, &specs), None);
        assert_eq!(selecting_spec(&group("pl-1", &[]), &specs), None, "a group is never a list spec's");
    }
}
