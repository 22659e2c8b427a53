//! Guard (out-of-band changes reverted and approved, as VoyagerInnovations' tool did) end to end on moto: an out-of-band change made with the SDK, the CloudTrail
//! event built from the fixture's shape with the real group and rule ids, handed to
//! `portcullis invoke`; decisions through the CLI.

use std::path::PathBuf;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, SecurityGroupRuleRequest, SecurityGroupRuleUpdate};
use serde_json::{Value, json};

use crate::support::{World, fixture, text, unique, within};

pub(crate) const ALICE: &str = "arn:aws:iam::123456789012:user/alice";

/// A world with guarded groups (by id) and a configuration guarding them.
pub(crate) struct Guarded {
    pub(crate) world: World,
    pub(crate) config: PathBuf,
}

pub(crate) async fn guarded(groups: &[&str], min_approvals: usize) -> Guarded {
    let world = World::new().await;
    let config = world.dir.path().join("portcullis.toml");
    let g = Guarded { world, config };
    g.guard(groups, min_approvals);
    g
}

impl Guarded {
    /// (Re)writes the configuration: guard these groups, with this quorum.
    pub(crate) fn guard(&self, groups: &[&str], min_approvals: usize) {
        self.write(groups, min_approvals, "");
    }

    /// The same, with `top` (other sections) before `[guard]`.
    pub(crate) fn write(&self, groups: &[&str], min_approvals: usize, top: &str) {
        let ids = groups.iter().map(|g| format!("{g:?}")).collect::<Vec<_>>().join(", ");
        std::fs::write(
            &self.config,
            format!(
                r#"
                {top}
                [guard]
                groups = [{ids}]
                own_principals = ["arn:aws:sts::123456789012:assumed-role/portcullis/*"]
                approvers = ["ubob", "ucarol", "ualice"]
                min_approvals = {min_approvals}
                [[guard.targets]]
                region = "us-east-1"
                [guard.people]
                ualice = ["{ALICE}"]
                "#
            ),
        )
        .unwrap();
    }

    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        self.world.command(args).env("PORTCULLIS_CONFIG", &self.config).output().unwrap()
    }

    pub(crate) async fn cli_async(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.world.command(args);
        cmd.env("PORTCULLIS_CONFIG", &self.config);
        tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
    }

    pub(crate) async fn invoke(&self, event: &Value) -> (i32, Value, String) {
        let path = self.world.dir.path().join(format!("{}.json", unique("event")));
        std::fs::write(&path, event.to_string()).unwrap();
        let out = self.cli_async(&["invoke", "--event", path.to_str().unwrap()]).await;
        (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), text(&out))
    }

    pub(crate) fn requests(&self, status: &str) -> Vec<Value> {
        let out = self.cli(&["requests", "--status", status, "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    /// Every inbound rule of a group (see [`rules_by_id`]).
    pub(crate) async fn rules(&self, group: &str) -> Vec<(String, i32, String, Option<String>)> {
        rules_by_id(&self.world, group).await
    }

    /// Adds a rule out of band and returns its id.
    pub(crate) async fn authorize(&self, group: &str, cidr: &str, port: i32, description: Option<&str>) -> String {
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port)
            .to_port(port)
            .ip_ranges(IpRange::builder().cidr_ip(cidr).set_description(description.map(str::to_string)).build())
            .build();
        self.world.ec2.authorize_security_group_ingress().group_id(group).ip_permissions(perm).send().await.unwrap();
        self.rules(group).await.into_iter().find(|r| r.1 == port && r.2 == cidr).unwrap().0
    }

    /// Revokes tcp `port` from `cidr` by its permissions, out of band.
    pub(crate) async fn revoke(&self, group: &str, cidr: &str, port: i32) {
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port)
            .to_port(port)
            .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
            .build();
        self.world.ec2.revoke_security_group_ingress().group_id(group).ip_permissions(perm).send().await.unwrap();
    }
}

/// The fixture's event, made about `group` now, with a fresh event id.
pub(crate) fn event(name: &str, group: &str) -> Value {
    let mut e = fixture(name);
    let now = time::OffsetDateTime::now_utc().format(&time::format_description::well_known::Rfc3339).unwrap();
    e["detail"]["eventID"] = json!(unique("evt"));
    e["detail"]["eventTime"] = json!(now);
    if let Some(params) = e["detail"]["requestParameters"].get_mut("ModifySecurityGroupRulesRequest") {
        params["GroupId"] = json!(group);
    } else {
        e["detail"]["requestParameters"]["groupId"] = json!(group);
    }
    e
}

/// An addition event for the rule `id` (tcp `port` from `cidr`), as CloudTrail writes it.
pub(crate) fn added(group: &str, id: &str, cidr: &str, port: i32, by: &str) -> Value {
    let mut e = event("cloudtrail-authorize-ingress.json", group);
    e["detail"]["userIdentity"]["arn"] = json!(by);
    let perm = &mut e["detail"]["requestParameters"]["ipPermissions"]["items"][0];
    perm["fromPort"] = json!(port);
    perm["toPort"] = json!(port);
    perm["ipRanges"]["items"][0] = json!({"cidrIp": cidr});
    let rule = &mut e["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0];
    rule["groupId"] = json!(group);
    rule["securityGroupRuleId"] = json!(id);
    rule["cidrIpv4"] = json!(cidr);
    rule["fromPort"] = json!(port);
    rule["toPort"] = json!(port);
    rule.as_object_mut().unwrap().remove("description");
    e
}

/// Every inbound rule of a group: (rule id, port, cidr, description), by port and cidr.
pub(crate) async fn rules_by_id(world: &World, group: &str) -> Vec<(String, i32, String, Option<String>)> {
    let filter = Filter::builder().name("group-id").values(group).build();
    let out = world.ec2.describe_security_group_rules().filters(filter).send().await.unwrap();
    let mut rules: Vec<_> = out
        .security_group_rules()
        .iter()
        .filter(|r| r.is_egress() != Some(true))
        .map(|r| {
            (
                r.security_group_rule_id().unwrap().to_string(),
                r.from_port().unwrap_or(-1),
                r.cidr_ipv4().unwrap_or_default().to_string(),
                r.description().map(str::to_string),
            )
        })
        .collect();
    rules.sort_by(|a, b| (a.1, &a.2).cmp(&(b.1, &b.2)));
    rules
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_addition_a_removal_and_an_edit_are_each_reverted_exactly_and_filed_once() {
    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let g = guarded(&[&group], 1).await;
        g.authorize(&group, "198.51.100.0/24", 443, Some("office")).await;
        let out = g.cli(&["guard", "baseline"]);
        assert!(out.status.success(), "{}", text(&out));
        let before = g.rules(&group).await;

        // An addition: revoked by the rule id the event names, and filed.
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let add = added(&group, &id, "203.0.113.0/24", 22, ALICE);
        let (code, answer, out) = g.invoke(&add).await;
        assert_eq!((code, answer["outcome"].as_str()), (0, Some("reverted")), "{out}");
        assert_eq!(g.rules(&group).await, before, "the addition is gone, the rest untouched");
        let pending = g.requests("pending");
        assert_eq!(pending.len(), 1);
        assert_eq!((pending[0]["requester"].as_str(), pending[0]["requester_user"].as_str()), (Some(ALICE), Some("ualice")));
        assert_eq!(pending[0]["add"][0]["source"]["ipv4"], "203.0.113.0/24");
        assert_eq!(pending[0]["event_id"], add["detail"]["eventID"]);

        // The same event again: nothing happens, nothing new is filed.
        g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (code, answer, out) = g.invoke(&add).await;
        assert_eq!((code, answer["outcome"].as_str()), (0, Some("duplicate")), "{out}");
        assert_eq!(g.requests("all").len(), 1);
        assert_eq!(g.rules(&group).await.len(), before.len() + 1, "a redelivery reverts nothing");
        g.world
            .ec2
            .revoke_security_group_ingress()
            .group_id(&group)
            .security_group_rule_ids(g.rules(&group).await.iter().find(|r| r.1 == 22).unwrap().0.clone())
            .send()
            .await
            .unwrap();

        // A removal: restored, with the description the baseline remembers.
        g.revoke(&group, "198.51.100.0/24", 443).await;
        assert!(g.rules(&group).await.is_empty());
        let (code, answer, out) = g.invoke(&event("cloudtrail-revoke-ingress.json", &group)).await;
        assert_eq!((code, answer["outcome"].as_str()), (0, Some("reverted")), "{out}");
        let restored = g.rules(&group).await;
        assert_eq!(
            restored.iter().map(|r| (r.1, r.2.as_str(), r.3.as_deref())).collect::<Vec<_>>(),
            [(443, "198.51.100.0/24", Some("office"))]
        );
        assert_eq!(answer["request"]["requester"], "arn:aws:sts::123456789012:assumed-role/Admin/bob@example.com");

        // An edit of a rule the baseline knows by id: put back as it was, under the same id.
        // (Recorded at a terminal: the baseline's progress is drawn there.)
        let shown = g.world.on_terminal(&["guard", "baseline"], &[("PORTCULLIS_CONFIG", g.config.to_str().unwrap())]);
        assert!(shown.contains("groups' baselines recorded: 1/1"), "{shown}");
        let rule_id = g.rules(&group).await[0].0.clone();
        let edit = SecurityGroupRuleRequest::builder()
            .ip_protocol("tcp")
            .from_port(443)
            .to_port(443)
            .cidr_ipv4("0.0.0.0/0")
            .description("open to all")
            .build();
        let update = SecurityGroupRuleUpdate::builder().security_group_rule_id(&rule_id).security_group_rule(edit).build();
        g.world.ec2.modify_security_group_rules().group_id(&group).security_group_rules(update).send().await.unwrap();
        let mut modify = event("cloudtrail-modify-rules.json", &group);
        modify["detail"]["requestParameters"]["ModifySecurityGroupRulesRequest"]["SecurityGroupRule"]["SecurityGroupRuleId"] =
            json!(rule_id);
        let (code, answer, out) = g.invoke(&modify).await;
        assert_eq!((code, answer["outcome"].as_str()), (0, Some("reverted")), "{out}");
        let now = g.rules(&group).await;
        assert_eq!(
            now.iter().map(|r| (r.0.as_str(), r.1, r.2.as_str(), r.3.as_deref())).collect::<Vec<_>>(),
            [(rule_id.as_str(), 443, "198.51.100.0/24", Some("office"))]
        );
        let request = &answer["request"];
        assert_eq!(
            (request["remove"][0]["source"]["ipv4"].as_str(), request["add"][0]["source"]["ipv4"].as_str()),
            (Some("198.51.100.0/24"), Some("0.0.0.0/0"))
        );

        let audit = g.cli(&["audit", "--json"]);
        let audit: Value = serde_json::from_slice(&audit.stdout).unwrap();
        let count = |action: &str| audit.as_array().unwrap().iter().filter(|e| e["action"] == action).count();
        assert_eq!((count("change-requested"), count("change-reverted")), (3, 3), "{audit}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_failed_unguarded_ours_and_other_events_are_ignored_and_change_nothing() {
    within(async {
        let w = World::new().await;
        let other = w.group(false, &[]).await;
        let g = guarded(&[], 1).await;
        // A dev target that is guarded too: a grant's rules on it are the reconcile's.
        let group = g.world.group(true, &[]).await;
        g.guard(&[&group], 1);
        assert!(g.cli(&["guard", "baseline"]).status.success());
        let out = g.cli(&["add", "203.0.113.0/24", "--description", "laptop"]);
        assert!(out.status.success(), "{}", text(&out));
        let ours = g.rules(&group).await.into_iter().find(|r| r.1 == 443).unwrap();
        assert_eq!(ours.3.as_deref(), Some("pc:dev tester: laptop"));
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let cases = [
            (
                "own principal",
                "portcullis's own identity",
                added(&group, &id, "203.0.113.0/24", 22, "arn:aws:sts::123456789012:assumed-role/portcullis/i-0abc"),
            ),
            ("failed call", "the call failed (Client.UnauthorizedOperation)", {
                let mut e = added(&group, &id, "203.0.113.0/24", 22, ALICE);
                e["detail"]["errorCode"] = json!("Client.UnauthorizedOperation");
                e
            }),
            ("unguarded group", "is not a guarded group", added(&other, &id, "203.0.113.0/24", 22, ALICE)),
            ("a rule the store backs", "only rules the store backs", {
                let mut e = added(&group, &ours.0, "203.0.113.0/24", 443, ALICE);
                e["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["description"] =
                    json!("pc:dev tester: laptop");
                e
            }),
            ("another call", "AuthorizeSecurityGroupEgress is not an inbound rule change", {
                let mut e = added(&group, &id, "203.0.113.0/24", 22, ALICE);
                e["detail"]["eventName"] = json!("AuthorizeSecurityGroupEgress");
                e
            }),
        ];
        for (case, why, e) in cases {
            let (code, answer, out) = g.invoke(&e).await;
            assert_eq!(code, 0, "{case}: {out}");
            // Each case is stopped by its own filter, not by whichever came first.
            let said = answer["reason"].as_str().or(answer["ignored"].as_str()).unwrap_or_default();
            assert!(said.contains(why), "{case}: expected {why:?}, answered {answer}");
        }
        assert_eq!(g.rules(&group).await.len(), 3, "every ignored event left the rules in place");
        assert!(g.requests("all").is_empty());
        let mut malformed = added(&group, &id, "203.0.113.0/24", 22, ALICE);
        malformed["detail"].as_object_mut().unwrap().remove("eventID");
        let (code, _, out) = g.invoke(&malformed).await;
        assert_eq!(code, 2, "{out}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approvals_need_distinct_approvers_never_the_requester_and_apply_the_change() {
    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let g = guarded(&[&group], 2).await;
        assert!(g.cli(&["guard", "baseline"]).status.success());
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (_, answer, out) = g.invoke(&added(&group, &id, "203.0.113.0/24", 22, ALICE)).await;
        let request = answer["request"]["id"].as_str().unwrap_or_else(|| panic!("{out}")).to_string();

        let refused = |who: &str| {
            let out = g.cli(&["approve", &request, "--as", who]);
            assert_eq!(out.status.code(), Some(3), "{who}: {}", text(&out));
            String::from_utf8_lossy(&out.stderr).to_string()
        };
        assert!(refused("ualice").contains("made this change"), "no self-approval");
        assert!(refused("mallory").contains("not an approver"));
        let out = g.cli(&["approve", &request, "--as", "ubob"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(g.rules(&group).await.is_empty(), "one approval of two applies nothing");
        assert!(refused("ubob").contains("already approved"));
        let out = g.cli(&["approve", &request, "--as", "ucarol", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let rules = g.rules(&group).await;
        assert_eq!(
            rules.iter().map(|r| (r.1, r.2.as_str(), r.3.clone())).collect::<Vec<_>>(),
            [(22, "203.0.113.0/24", None)],
            "applied as made, without our marker"
        );
        assert!(g.requests("approved").is_empty(), "applied, no longer only approved");
        let approved = g.requests("applied");
        assert_eq!(approved[0]["approvals"], json!(["ubob", "ucarol"]));
        assert!(approved[0]["applied_at"].is_string(), "{approved:?}");
        let out = g.cli(&["guard", "sweep", "--json"]);
        let sweep: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(sweep["reverted"], json!([]), "the approved rule is in the baseline now: {sweep}");

        // A deny ends a request; the revert stays, and nobody can approve it afterwards.
        let id = g.authorize(&group, "192.0.2.0/24", 3389, None).await;
        let (_, answer, _) = g.invoke(&added(&group, &id, "192.0.2.0/24", 3389, "arn:aws:iam::123456789012:user/dave")).await;
        let second = answer["request"]["id"].as_str().unwrap().to_string();
        let out = g.cli(&["deny", &second, "--as", "ucarol", "--reason", "RDP stays closed"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(refused_for(&g, &second, "ubob").contains("already denied by ucarol"));
        assert_eq!(g.rules(&group).await.len(), 1);
        let audit: Value = serde_json::from_slice(&g.cli(&["audit", "--json"]).stdout).unwrap();
        let actions: Vec<&str> = audit.as_array().unwrap().iter().filter_map(|e| e["action"].as_str()).collect();
        assert!(actions.contains(&"change-approved") && actions.contains(&"change-denied"), "{actions:?}");
        assert_eq!(actions.iter().filter(|a| **a == "refused").count(), 4, "each refusal is audited: {actions:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_for_a_time_puts_an_addition_on_as_a_timed_rule_and_refuses_a_removal() {
    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let g = guarded(&[&group], 1).await;
        g.authorize(&group, "198.51.100.0/24", 443, Some("office")).await;
        assert!(g.cli(&["guard", "baseline"]).status.success());

        // A removal, reverted: it can be approved, but not for a time.
        g.revoke(&group, "198.51.100.0/24", 443).await;
        let (_, answer, out) = g.invoke(&event("cloudtrail-revoke-ingress.json", &group)).await;
        let removal = answer["request"]["id"].as_str().unwrap_or_else(|| panic!("{out}")).to_string();
        let out = g.cli(&["approve", &removal, "--as", "ubob", "--for", "2h"]);
        assert_eq!(out.status.code(), Some(3), "a refusal: {}", text(&out));
        assert!(text(&out).contains("only an addition can be approved for a time"), "{}", text(&out));
        let out = g.cli(&["approve", &removal, "--as", "ubob", "--for", "forever"]);
        assert_eq!(out.status.code(), Some(2), "a bad term is a usage error: {}", text(&out));
        assert_eq!(g.requests("pending").len(), 1, "nothing was decided");

        // An addition, approved for 2 h: on again, under our timed-rule marker.
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (_, answer, out) = g.invoke(&added(&group, &id, "203.0.113.0/24", 22, ALICE)).await;
        let addition = answer["request"]["id"].as_str().unwrap_or_else(|| panic!("{out}")).to_string();
        let out = g.cli(&["approve", &addition, "--as", "ubob", "--for", "2h"]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(text(&out).contains("temporary: a timed rule until"), "{}", text(&out));
        let rules: Vec<_> = g.rules(&group).await.into_iter().map(|r| (r.1, r.2, r.3)).collect();
        let marker = format!("pc:timed/{addition} ubob:");
        assert_eq!(
            rules,
            [(22, "203.0.113.0/24".to_string(), Some(marker)), (443, "198.51.100.0/24".to_string(), Some("office".to_string()))],
            "the timed rule's rule beside the untouched hand-made one"
        );
        let approved = g.requests("applied");
        assert!(approved[0]["temporary"]["until"].is_string() && approved[0]["applied_at"].is_string(), "{approved:?}");
        let sweep: Value = serde_json::from_slice(&g.cli(&["guard", "sweep", "--json"]).stdout).unwrap();
        assert_eq!((sweep["reverted"].clone(), sweep["timed_rules"]["authorized"].clone()), (json!([]), json!(0)), "{sweep}");
    })
    .await;
}

fn refused_for(g: &Guarded, request: &str, who: &str) -> String {
    let out = g.cli(&["approve", request, "--as", who]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_approvals_apply_the_change_once() {
    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let g = guarded(&[&group], 1).await;
        assert!(g.cli(&["guard", "baseline"]).status.success());
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (_, answer, _) = g.invoke(&added(&group, &id, "203.0.113.0/24", 22, ALICE)).await;
        let request = answer["request"]["id"].as_str().unwrap().to_string();
        let (bob, carol) = (["approve", &request, "--as", "ubob"], ["approve", &request, "--as", "ucarol"]);
        let (a, b) = tokio::join!(g.cli_async(&bob), g.cli_async(&carol));
        let codes = [a.status.code(), b.status.code()];
        assert!(codes.contains(&Some(0)) && codes.contains(&Some(3)), "{}\n{}", text(&a), text(&b));
        let loser = if a.status.success() { &b } else { &a };
        assert!(String::from_utf8_lossy(&loser.stderr).contains("already approved by"), "{}", text(loser));
        let audit: Value = serde_json::from_slice(&g.cli(&["audit", "--json"]).stdout).unwrap();
        assert_eq!(audit.as_array().unwrap().iter().filter(|e| e["action"] == "change-approved").count(), 1);
        assert_eq!(g.rules(&group).await.len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_reverts_a_change_no_event_reported_and_only_reports_a_group_without_baseline() {
    within(async {
        let w = World::new().await;
        let (group, fresh) = (w.group(false, &[]).await, w.group(false, &[]).await);
        let g = guarded(&[&group], 1).await;
        let out = g.cli(&["guard", "baseline", "--dry-run", "--json"]);
        let dry: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(dry["groups"].as_array().map(Vec::len), Some(1), "{dry}");
        let out = g.cli(&["guard", "sweep", "--json"]);
        let sweep: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(sweep["without_baseline"][0]["group_id"], group, "a dry run records nothing: {sweep}");

        assert!(g.cli(&["guard", "baseline"]).status.success());
        g.authorize(&group, "203.0.113.0/24", 22, None).await;
        g.guard(&[&group, &fresh], 1);
        let g2 = &g;
        g2.authorize(&fresh, "198.51.100.0/24", 80, None).await;
        let out = g2.cli(&["refresh", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        let report: Value = serde_json::from_slice(&out.stdout).unwrap();
        let guard = &report["guard"];
        assert_eq!(guard["reverted"][0]["requester"], "unknown (no event)", "{report}");
        assert_eq!(guard["without_baseline"][0]["group_id"], fresh, "{report}");
        assert!(g2.rules(&group).await.is_empty(), "the change no event reported is reverted");
        assert_eq!(g2.rules(&fresh).await.len(), 1, "a group without a baseline is only reported");
        assert_eq!(g2.requests("pending").len(), 1);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagged_selection_guards_a_tagged_group_and_ignores_an_untagged_one() {
    within(async {
        let w = World::new().await;
        let (tagged, plain) = (w.group(false, &[("PortcullisGuard", "true")]).await, w.group(false, &[]).await);
        let g = guarded(&[], 1).await;
        let config = std::fs::read_to_string(&g.config).unwrap().replace("groups = []", "groups = \"tagged\"");
        std::fs::write(&g.config, config).unwrap();
        for (group, outcome) in [(&tagged, "reverted"), (&plain, "ignored")] {
            let id = g.authorize(group, "203.0.113.0/24", 22, None).await;
            let (code, answer, out) = g.invoke(&added(group, &id, "203.0.113.0/24", 22, ALICE)).await;
            assert_eq!(code, 0, "{out}");
            assert_eq!(answer["outcome"], outcome, "{group}: {answer}");
        }
        assert!(g.rules(&tagged).await.is_empty(), "the tagged group's change is reverted");
        assert_eq!(g.rules(&plain).await.len(), 1, "the untagged group is not guard's");
    })
    .await;
}

/// Guard in another account, reached through its role, over every group there
/// (`groups = "all"`): the baseline is that account's, and a hand-made rule there is reverted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_watches_every_group_of_another_account_through_its_role() {
    within(async {
        // An account no other test uses, so "all" is this test's groups alone.
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
        let account = format!("4{:011}", (nanos + u128::from(std::process::id())) % 100_000_000_000);
        let role = format!("arn:aws:iam::{account}:role/portcullis-guard");
        let region = "eu-central-1";
        let other = crate::connection::ec2_as(&role, region).await;
        let group = other.create_security_group().group_name(unique("sg")).description("guarded").send().await.unwrap();
        let group = group.group_id.unwrap();
        let ssh = IpPermission::builder().ip_protocol("tcp").from_port(22).to_port(22);
        let office = ssh.clone().ip_ranges(IpRange::builder().cidr_ip("10.0.0.0/8").description("ops").build()).build();
        other.authorize_security_group_ingress().group_id(&group).ip_permissions(office).send().await.unwrap();
        let w = World::new().await;
        let config = w.dir.path().join("portcullis.toml");
        std::fs::write(
            &config,
            format!(
                "[guard]\ngroups = \"all\"\nown_principals = [\"arn:aws:sts::{account}:assumed-role/portcullis-guard/*\"]\n\
                 approvers = [\"ubob\"]\n[[guard.targets]]\nregion = \"{region}\"\nrole_arn = \"{role}\"\n"
            ),
        )
        .unwrap();
        let g = Guarded { world: w, config };
        let out = g.cli_async(&["guard", "baseline", "--json"]).await;
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(&group),
            "the other account's group is in the baseline: {}",
            text(&out)
        );

        let wide = ssh.ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build()).build();
        other.authorize_security_group_ingress().group_id(&group).ip_permissions(wide).send().await.unwrap();
        let out = g.cli_async(&["guard", "sweep", "--json"]).await;
        assert!(out.status.success(), "{}", text(&out));
        let sweep: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(sweep["reverted"].as_array().map(Vec::len), Some(1), "{sweep}");
        let described = other.describe_security_groups().group_ids(&group).send().await.unwrap();
        let cidrs: Vec<&str> = described.security_groups()[0]
            .ip_permissions()
            .iter()
            .flat_map(|p| p.ip_ranges())
            .filter_map(|r| r.cidr_ip())
            .collect();
        assert_eq!(cidrs, ["10.0.0.0/8"], "reverted in the other account, and only the hand-made rule");
    })
    .await;
}
