//! CloudTrail rule-change events (VoyagerInnovations' revert-and-approve tool, fixtures `cloudtrail-*.json`), as EventBridge
//! delivers them: `AuthorizeSecurityGroupIngress`, `RevokeSecurityGroupIngress` and
//! `ModifySecurityGroupRules`, from any identity type, read into a [`GuardEvent`].

use portcullis_core::guard::{Changes, GroupRule, GuardRule, RuleSource};
use portcullis_engine::GuardEvent;
use serde_json::Value;
use time::format_description::well_known::Rfc3339;

const DETAIL_TYPE: &str = "AWS API Call via CloudTrail";
const AUTHORIZE: &str = "AuthorizeSecurityGroupIngress";
const REVOKE: &str = "RevokeSecurityGroupIngress";
const MODIFY: &str = "ModifySecurityGroupRules";

/// Why a CloudTrail payload cannot be handled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid CloudTrail event: {0}")]
pub struct MalformedTrail(pub String);

/// What a CloudTrail payload is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trail {
    /// A rule change on some group (guarded or not: the engine decides).
    Change(Box<GuardEvent>),
    /// Another API call: nothing for guard, and why.
    Other(String),
}

fn bad(message: impl Into<String>) -> MalformedTrail {
    MalformedTrail(message.into())
}

fn text<'a>(value: &'a Value, pointer: &str) -> Result<&'a str, MalformedTrail> {
    match value.pointer(pointer) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        Some(Value::String(_)) | None => Err(bad(format!("{} is missing", pointer.trim_start_matches('/').replace('/', ".")))),
        Some(_) => Err(bad(format!("{} is not a string", pointer.trim_start_matches('/').replace('/', ".")))),
    }
}

fn optional<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str).filter(|s| !s.is_empty())
}

/// A port: CloudTrail writes numbers, sometimes as strings.
fn port(value: &Value, key: &str) -> Result<Option<i32>, MalformedTrail> {
    match value.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => {
            n.as_i64().and_then(|n| i32::try_from(n).ok()).map(Some).ok_or_else(|| bad(format!("{key} is out of range")))
        }
        Some(Value::String(s)) => s.parse().map(Some).map_err(|_| bad(format!("{key} {s:?} is not a number"))),
        Some(_) => Err(bad(format!("{key} is not a number"))),
    }
}

/// `{"items": [...]}` (or a bare list, or nothing) as a list.
fn items(value: Option<&Value>) -> Result<&[Value], MalformedTrail> {
    match value {
        None | Some(Value::Null) => Ok(&[]),
        Some(Value::Array(a)) => Ok(a),
        Some(Value::Object(o)) if o.is_empty() => Ok(&[]),
        Some(Value::Object(o)) => match o.get("items") {
            Some(Value::Array(a)) => Ok(a),
            None | Some(Value::Null) => Ok(&[]),
            Some(_) => Err(bad("items is not a list")),
        },
        Some(_) => Err(bad("a list of items was expected")),
    }
}

/// The rules one `ipPermissions` item grants: one per range, prefix list and group.
fn permission_rules(perm: &Value) -> Result<Vec<GuardRule>, MalformedTrail> {
    let protocol = text(perm, "/ipProtocol")?;
    let (from, to) = (port(perm, "fromPort")?, port(perm, "toPort")?);
    let mut out = Vec::new();
    let mut add =
        |source: RuleSource, item: &Value| out.push(GuardRule::new(protocol, from, to, source, optional(item, "description")));
    for r in items(perm.get("ipRanges"))? {
        add(RuleSource::Ipv4(text(r, "/cidrIp")?.to_string()), r);
    }
    for r in items(perm.get("ipv6Ranges"))? {
        add(RuleSource::Ipv6(text(r, "/cidrIpv6")?.to_string()), r);
    }
    for r in items(perm.get("prefixListIds"))? {
        add(RuleSource::PrefixList(text(r, "/prefixListId")?.to_string()), r);
    }
    for r in items(perm.get("groups"))? {
        let id = text(r, "/groupId")?;
        let source = match optional(r, "userId") {
            Some(user) => RuleSource::Group(format!("{user}/{id}")),
            None => RuleSource::Group(id.to_string()),
        };
        add(source, r);
    }
    Ok(out)
}

/// A rule as `securityGroupRuleSet` (camelCase) or a modify request (PascalCase) writes it.
fn rule_of(r: &Value, pascal: bool) -> Result<GuardRule, MalformedTrail> {
    let key = |camel: &'static str, pascal_key: &'static str| if pascal { pascal_key } else { camel };
    let protocol = r.get(key("ipProtocol", "IpProtocol")).and_then(Value::as_str).ok_or_else(|| bad("a rule has no protocol"))?;
    let group = if pascal {
        optional(r, "ReferencedGroupId").map(str::to_string)
    } else {
        r.get("referencedGroupInfo").and_then(|g| optional(g, "groupId")).map(str::to_string)
    };
    let source = match (
        optional(r, key("cidrIpv4", "CidrIpv4")),
        optional(r, key("cidrIpv6", "CidrIpv6")),
        optional(r, key("prefixListId", "PrefixListId")),
        group,
    ) {
        (Some(c), ..) => RuleSource::Ipv4(c.to_string()),
        (_, Some(c), ..) => RuleSource::Ipv6(c.to_string()),
        (_, _, Some(p), _) => RuleSource::PrefixList(p.to_string()),
        (_, _, _, Some(g)) => RuleSource::Group(g),
        _ => return Err(bad("a rule names no source")),
    };
    let (from, to) = (port(r, key("fromPort", "FromPort"))?, port(r, key("toPort", "ToPort"))?);
    Ok(GuardRule::new(protocol, from, to, source, optional(r, key("description", "Description"))))
}

fn changes(name: &str, detail: &Value) -> Result<(String, Changes), MalformedTrail> {
    let params =
        detail.get("requestParameters").filter(|p| p.is_object()).ok_or_else(|| bad("detail.requestParameters is missing"))?;
    let mut changes = Changes::default();
    if name == MODIFY {
        let request = params.get("ModifySecurityGroupRulesRequest").unwrap_or(params);
        let group = text(request, "/GroupId")?.to_string();
        let edits = match request.get("SecurityGroupRule") {
            Some(Value::Array(list)) => list.iter().collect::<Vec<_>>(),
            Some(one @ Value::Object(_)) => vec![one],
            _ => return Err(bad("ModifySecurityGroupRulesRequest.SecurityGroupRule is missing")),
        };
        for edit in edits {
            let id = text(edit, "/SecurityGroupRuleId")?.to_string();
            let rule = edit.get("SecurityGroupRule").ok_or_else(|| bad("an edit has no SecurityGroupRule"))?;
            changes.edits.push(GroupRule { rule_id: Some(id), rule: rule_of(rule, true)? });
        }
        return Ok((group, changes));
    }
    let group = text(params, "/groupId")?.to_string();
    let mut requested = Vec::new();
    for perm in items(params.get("ipPermissions"))? {
        requested.extend(permission_rules(perm)?);
    }
    if name == AUTHORIZE {
        let set = detail.pointer("/responseElements/securityGroupRuleSet");
        let named: Vec<&Value> = items(set)?.iter().filter(|r| r.get("isEgress") != Some(&Value::Bool(true))).collect();
        if named.is_empty() {
            changes.added = requested.into_iter().map(|rule| GroupRule { rule_id: None, rule }).collect();
        } else {
            for r in named {
                let id = optional(r, "securityGroupRuleId").map(str::to_string);
                changes.added.push(GroupRule { rule_id: id, rule: rule_of(r, false)? });
            }
        }
    } else {
        changes.removed = requested;
        for id in items(params.get("securityGroupRuleIds"))? {
            let id =
                id.as_str().or_else(|| optional(id, "securityGroupRuleId")).ok_or_else(|| bad("a rule id is not a string"))?;
            changes.removed_ids.push(id.to_string());
        }
    }
    if changes.is_empty() {
        return Err(bad(format!("{name} names no rule")));
    }
    Ok((group, changes))
}

/// Whether a payload is a CloudTrail API-call event (`None`: it is not), and what it says.
pub fn read(value: &Value) -> Option<Result<Trail, MalformedTrail>> {
    (value.get("detail-type").and_then(Value::as_str) == Some(DETAIL_TYPE)).then(|| read_trail(value))
}

fn read_trail(value: &Value) -> Result<Trail, MalformedTrail> {
    let detail = value.get("detail").filter(|d| d.is_object()).ok_or_else(|| bad("detail is missing"))?;
    let name = text(detail, "/eventName")?;
    if ![AUTHORIZE, REVOKE, MODIFY].contains(&name) {
        return Ok(Trail::Other(format!("{name} is not an inbound rule change")));
    }
    let event_id = text(detail, "/eventID")?.to_string();
    let at =
        time::OffsetDateTime::parse(text(detail, "/eventTime")?, &Rfc3339).map_err(|e| bad(format!("detail.eventTime: {e}")))?;
    let account = text(detail, "/recipientAccountId").or_else(|_| text(value, "/account"))?.to_string();
    let region = text(detail, "/awsRegion").or_else(|_| text(value, "/region"))?.to_string();
    let identity = detail.get("userIdentity").ok_or_else(|| bad("detail.userIdentity is missing"))?;
    let principal = match optional(identity, "arn") {
        Some(arn) => arn.to_string(),
        None => format!(
            "{}:{}",
            optional(identity, "type").unwrap_or("unknown"),
            optional(identity, "invokedBy").or(optional(identity, "principalId")).unwrap_or("unknown")
        ),
    };
    let error_code = optional(detail, "errorCode").map(str::to_string);
    // A failed call changed nothing, and its request may be what made it fail.
    let (group_id, changes) = match changes(name, detail) {
        Ok(read) => read,
        Err(_) if error_code.is_some() => {
            let group = detail.pointer("/requestParameters/groupId").and_then(Value::as_str).unwrap_or("-").to_string();
            (group, Changes::default())
        }
        Err(e) => return Err(e),
    };
    Ok(Trail::Change(Box::new(GuardEvent {
        event_id,
        event_name: name.to_string(),
        account,
        region,
        group_id,
        principal,
        error_code,
        at,
        changes,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> Value {
        let path = format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    fn change(name: &str) -> GuardEvent {
        match read(&fixture(name)) {
            Some(Ok(Trail::Change(event))) => *event,
            other => panic!("{name}: {other:?}"),
        }
    }

    #[test]
    fn the_fixtures_read_as_their_changes() {
        let add = change("cloudtrail-authorize-ingress.json");
        assert_eq!(
            (add.group_id.as_str(), add.account.as_str(), add.region.as_str()),
            ("sg-0123456789abcdef0", "123456789012", "us-east-1")
        );
        assert_eq!(add.principal, "arn:aws:iam::123456789012:user/alice");
        assert_eq!(add.changes.added[0].rule_id.as_deref(), Some("sgr-0a1b2c3d4e5f60718"));
        assert_eq!(add.changes.added[0].rule.to_string(), "tcp 22 from 203.0.113.0/24 (\"temp ssh\")");

        let revoke = change("cloudtrail-revoke-ingress.json");
        assert_eq!(revoke.principal, "arn:aws:sts::123456789012:assumed-role/Admin/bob@example.com");
        assert_eq!(revoke.changes.removed[0].to_string(), "tcp 443 from 198.51.100.0/24");

        let edit = change("cloudtrail-modify-rules.json");
        assert_eq!(edit.changes.edits[0].rule_id.as_deref(), Some("sgr-0f1e2d3c4b5a69788"));
        assert_eq!(edit.changes.edits[0].rule.to_string(), "tcp 443 from 0.0.0.0/0 (\"open to all\")");
    }

    #[test]
    fn other_calls_are_not_changes_and_broken_ones_are_malformed() {
        let mut other = fixture("cloudtrail-authorize-ingress.json");
        other["detail"]["eventName"] = "AuthorizeSecurityGroupEgress".into();
        assert!(matches!(read(&other), Some(Ok(Trail::Other(_)))));
        assert_eq!(read(&fixture("asg-launch.json")), None);
        for (pointer, value) in [
            ("/detail/eventID", Value::Null),
            ("/detail/eventTime", "yesterday".into()),
            ("/detail/requestParameters/groupId", 7.into()),
        ] {
            let mut broken = fixture("cloudtrail-authorize-ingress.json");
            *broken.pointer_mut(pointer).unwrap() = value;
            assert!(matches!(read(&broken), Some(Err(_))), "{pointer}");
        }
        let mut failed = fixture("cloudtrail-authorize-ingress.json");
        failed["detail"]["errorCode"] = "Client.InvalidPermission.Duplicate".into();
        failed["detail"]["responseElements"] = Value::Null;
        assert_eq!(change_of(&failed).error_code.as_deref(), Some("Client.InvalidPermission.Duplicate"));
    }

    fn change_of(value: &Value) -> GuardEvent {
        match read(value) {
            Some(Ok(Trail::Change(event))) => *event,
            other => panic!("{other:?}"),
        }
    }
}
