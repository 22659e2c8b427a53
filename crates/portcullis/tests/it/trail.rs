//! CloudTrail, as the loopback proxy stands in for it: every security-group rule change the
//! proxy passed to moto (`AuthorizeSecurityGroupIngress`, `RevokeSecurityGroupIngress`,
//! `ModifySecurityGroupRules`) becomes the "AWS API Call via CloudTrail" event EventBridge
//! would deliver for it, in the fixtures' shapes: the request's parameters as CloudTrail writes
//! them (camelCase, lists as `{"items": [...]}`, the modify request's PascalCase wrapper) and,
//! for an authorize, the `securityGroupRuleSet` of the rules it made (ids from moto's answer).
//! moto produces no CloudTrail events; this is how a test hands guard its own calls' events.

use std::collections::BTreeMap;

use serde_json::{Value, json};

/// One rule change the proxy passed to moto: the region it was signed for, its form, and
/// moto's answer.
#[derive(Debug, Clone)]
pub struct Call {
    pub region: String,
    pub action: String,
    pub form: Vec<(String, String)>,
    pub answer: String,
}

/// The actions CloudTrail reports to guard.
pub const ACTIONS: [&str; 3] = ["AuthorizeSecurityGroupIngress", "RevokeSecurityGroupIngress", "ModifySecurityGroupRules"];

/// The form's fields under `prefix.` (`IpPermissions.1.` → `IpProtocol`, …), by index.
fn indexed<'a>(form: &'a BTreeMap<String, String>, prefix: &str) -> BTreeMap<usize, BTreeMap<&'a str, &'a str>> {
    let mut out: BTreeMap<usize, BTreeMap<&str, &str>> = BTreeMap::new();
    for (key, value) in form {
        let Some(rest) = key.strip_prefix(prefix).and_then(|r| r.strip_prefix('.')) else { continue };
        let (index, field) = rest.split_once('.').unwrap_or((rest, ""));
        if let Ok(i) = index.parse::<usize>() {
            out.entry(i).or_default().insert(field, value);
        }
    }
    out
}

/// `{"items": [...]}`, or `{}` for none, as CloudTrail writes a list.
fn items(list: Vec<Value>) -> Value {
    if list.is_empty() { json!({}) } else { json!({ "items": list }) }
}

fn number(text: Option<&&str>) -> Value {
    text.and_then(|t| t.parse::<i64>().ok()).map_or(Value::Null, Value::from)
}

/// The `ipPermissions` of an authorize or revoke request.
fn permissions(form: &BTreeMap<String, String>) -> Value {
    let mut out = Vec::new();
    for (i, fields) in indexed(form, "IpPermissions") {
        let base = format!("IpPermissions.{i}");
        let ranges = |kind: &str, key: &str, json_key: &str| {
            let list = indexed(form, &format!("{base}.{kind}"));
            items(
                list.values()
                    .map(|r| {
                        let mut item = json!({ json_key: r.get(key).copied().unwrap_or_default() });
                        if let Some(d) = r.get("Description") {
                            item["description"] = json!(d);
                        }
                        item
                    })
                    .collect(),
            )
        };
        out.push(json!({
            "ipProtocol": fields.get("IpProtocol").copied().unwrap_or_default(),
            "fromPort": number(fields.get("FromPort")),
            "toPort": number(fields.get("ToPort")),
            "ipRanges": ranges("IpRanges", "CidrIp", "cidrIp"),
            "ipv6Ranges": ranges("Ipv6Ranges", "CidrIpv6", "cidrIpv6"),
            "prefixListIds": ranges("PrefixListIds", "PrefixListId", "prefixListId"),
            "groups": ranges("Groups", "GroupId", "groupId"),
        }));
    }
    items(out)
}

/// The text of `<tag>…</tag>` in `xml`, if any.
fn tag<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{tag}>"))? + tag.len() + 2;
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(&xml[start..end])
}

/// The rules an authorize made, from moto's answer (`securityGroupRuleSet`).
fn rule_set(answer: &str) -> Value {
    let Some(set) = tag(answer, "securityGroupRuleSet") else { return json!({}) };
    let mut rules = Vec::new();
    for part in set.split("<item>").skip(1) {
        let item = part.split("</item>").next().unwrap_or_default();
        let mut rule = json!({
            "securityGroupRuleId": tag(item, "securityGroupRuleId"),
            "groupId": tag(item, "groupId"),
            "isEgress": tag(item, "isEgress") == Some("true"),
            "ipProtocol": tag(item, "ipProtocol"),
            "fromPort": tag(item, "fromPort").and_then(|p| p.parse::<i64>().ok()),
            "toPort": tag(item, "toPort").and_then(|p| p.parse::<i64>().ok()),
        });
        for key in ["cidrIpv4", "cidrIpv6", "prefixListId", "description"] {
            if let Some(v) = tag(item, key) {
                rule[key] = json!(v);
            }
        }
        rules.push(rule);
    }
    items(rules)
}

/// The event CloudTrail would deliver for `call`, made by `principal`.
pub fn event(call: &Call, principal: &str, account: &str, n: usize) -> Value {
    let form: BTreeMap<String, String> = call.form.iter().cloned().collect();
    let group = form.get("GroupId").cloned().unwrap_or_default();
    let (request, response) = match call.action.as_str() {
        "AuthorizeSecurityGroupIngress" => (
            json!({"groupId": group, "ipPermissions": permissions(&form)}),
            json!({"_return": true, "securityGroupRuleSet": rule_set(&call.answer)}),
        ),
        "RevokeSecurityGroupIngress" => {
            let ids: Vec<Value> = indexed(&form, "SecurityGroupRuleId")
                .values()
                .filter_map(|f| f.get("").map(|id| json!({"securityGroupRuleId": id})))
                .collect();
            let mut request = json!({"groupId": group, "ipPermissions": permissions(&form)});
            if !ids.is_empty() {
                request["securityGroupRuleIds"] = items(ids);
            }
            (request, json!({"_return": true}))
        }
        _ => {
            let rules: Vec<Value> = indexed(&form, "SecurityGroupRule")
                .into_iter()
                .map(|(i, fields)| {
                    let inner: BTreeMap<&str, &str> = form
                        .iter()
                        .filter_map(|(k, v)| {
                            k.strip_prefix(&format!("SecurityGroupRule.{i}.SecurityGroupRule.")).map(|f| (f, v.as_str()))
                        })
                        .collect();
                    let mut body = json!({"IpProtocol": inner.get("IpProtocol"), "FromPort": number(inner.get("FromPort")), "ToPort": number(inner.get("ToPort"))});
                    for key in ["CidrIpv4", "CidrIpv6", "PrefixListId", "ReferencedGroupId", "Description"] {
                        if let Some(v) = inner.get(key) {
                            body[key] = json!(v);
                        }
                    }
                    json!({"SecurityGroupRuleId": fields.get("SecurityGroupRuleId"), "SecurityGroupRule": body})
                })
                .collect();
            let one = if rules.len() == 1 { rules[0].clone() } else { Value::Array(rules) };
            (json!({"ModifySecurityGroupRulesRequest": {"GroupId": group, "SecurityGroupRule": one}}), json!({"_return": true}))
        }
    };
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    json!({
        "version": "0",
        "id": format!("trail-{n}"),
        "detail-type": "AWS API Call via CloudTrail",
        "source": "aws.ec2",
        "account": account,
        "time": now,
        "region": call.region,
        "resources": [],
        "detail": {
            "eventVersion": "1.08",
            "userIdentity": {"type": "AssumedRole", "arn": principal, "accountId": account},
            "eventTime": now,
            "eventSource": "ec2.amazonaws.com",
            "eventName": call.action,
            "awsRegion": call.region,
            "requestParameters": request,
            "responseElements": response,
            "eventID": crate::support::unique("trail"),
            "readOnly": false,
            "eventType": "AwsApiCall",
            "recipientAccountId": account,
        }
    })
}
