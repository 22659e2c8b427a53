//! Guard (seed 003) end to end on moto: an out-of-band change made with the SDK, the CloudTrail
//! event built from the fixture's shape with the real group and rule ids, handed to
//! `portcullis invoke`; decisions through the CLI.

use std::path::PathBuf;

use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, SecurityGroupRuleRequest, SecurityGroupRuleUpdate};
use serde_json::{Value, json};

use crate::support::{World, fixture, text, unique, within};

const ALICE: &str = "arn:aws:iam::123456789012:user/alice";

/// A world with guarded groups (by id) and a configuration guarding them.
struct Guarded {
    world: World,
    config: PathBuf,
}

async fn guarded(groups: &[&str], min_approvals: usize) -> Guarded {
    let world = World::new().await;
    let config = world.dir.path().join("portcullis.toml");
    let g = Guarded { world, config };
    g.guard(groups, min_approvals);
    g
}

impl Guarded {
    /// (Re)writes the configuration: guard these groups, with this quorum.
    fn guard(&self, groups: &[&str], min_approvals: usize) {
        self.write(groups, min_approvals, "");
    }

    /// The same, with `top` (other sections) before `[guard]`.
    fn write(&self, groups: &[&str], min_approvals: usize, top: &str) {
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

    fn cli(&self, args: &[&str]) -> std::process::Output {
        self.world.command(args).env("PORTCULLIS_CONFIG", &self.config).output().unwrap()
    }

    async fn cli_async(&self, args: &[&str]) -> std::process::Output {
        let mut cmd = self.world.command(args);
        cmd.env("PORTCULLIS_CONFIG", &self.config);
        tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap()
    }

    async fn invoke(&self, event: &Value) -> (i32, Value, String) {
        let path = self.world.dir.path().join(format!("{}.json", unique("event")));
        std::fs::write(&path, event.to_string()).unwrap();
        let out = self.cli_async(&["invoke", "--event", path.to_str().unwrap()]).await;
        (out.status.code().unwrap_or(-1), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null), text(&out))
    }

    fn requests(&self, status: &str) -> Vec<Value> {
        let out = self.cli(&["requests", "--status", status, "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
    }

    /// Every inbound rule of a group: (rule id, protocol, port, cidr, description).
    async fn rules(&self, group: &str) -> Vec<(String, i32, String, Option<String>)> {
        let out = self
            .world
            .ec2
            .describe_security_group_rules()
            .filters(Filter::builder().name("group-id").values(group).build())
            .send()
            .await
            .unwrap();
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

    /// Adds a rule out of band and returns its id.
    async fn authorize(&self, group: &str, cidr: &str, port: i32, description: Option<&str>) -> String {
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port)
            .to_port(port)
            .ip_ranges(IpRange::builder().cidr_ip(cidr).set_description(description.map(str::to_string)).build())
            .build();
        self.world.ec2.authorize_security_group_ingress().group_id(group).ip_permissions(perm).send().await.unwrap();
        self.rules(group).await.into_iter().find(|r| r.1 == port && r.2 == cidr).unwrap().0
    }
}

/// The fixture's event, made about `group` now, with a fresh event id.
fn event(name: &str, group: &str) -> Value {
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
fn added(group: &str, id: &str, cidr: &str, port: i32, by: &str) -> Value {
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
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(443)
            .to_port(443)
            .ip_ranges(IpRange::builder().cidr_ip("198.51.100.0/24").build())
            .build();
        g.world.ec2.revoke_security_group_ingress().group_id(&group).ip_permissions(perm).send().await.unwrap();
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
        g.cli(&["guard", "baseline"]);
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
        let (group, other) = (w.group(false, &[]).await, w.group(false, &[]).await);
        let g = guarded(&[&group], 1).await;
        g.cli(&["guard", "baseline"]);
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let cases = [
            (
                "own principal",
                added(&group, &id, "203.0.113.0/24", 22, "arn:aws:sts::123456789012:assumed-role/portcullis/i-0abc"),
            ),
            ("failed call", {
                let mut e = added(&group, &id, "203.0.113.0/24", 22, ALICE);
                e["detail"]["errorCode"] = json!("Client.UnauthorizedOperation");
                e
            }),
            ("unguarded group", added(&other, &id, "203.0.113.0/24", 22, ALICE)),
            ("our own rule", {
                let mut e = added(&group, &id, "203.0.113.0/24", 22, ALICE);
                e["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["description"] =
                    json!("pc:dev alice: laptop");
                e
            }),
            ("another call", {
                let mut e = added(&group, &id, "203.0.113.0/24", 22, ALICE);
                e["detail"]["eventName"] = json!("AuthorizeSecurityGroupEgress");
                e
            }),
        ];
        for (case, e) in cases {
            let (code, answer, out) = g.invoke(&e).await;
            assert_eq!(code, 0, "{case}: {out}");
            assert!(answer["ignored"].is_string() || answer["reason"].is_string(), "{case}: {answer}");
        }
        assert_eq!(g.rules(&group).await.len(), 1, "every ignored event left the rule in place");
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
        g.cli(&["guard", "baseline"]);
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (_, answer, out) = g.invoke(&added(&group, &id, "203.0.113.0/24", 22, ALICE)).await;
        let request = answer["request"]["id"].as_str().unwrap_or_else(|| panic!("{out}")).to_string();

        let refused = |who: &str| {
            let out = g.cli(&["approve", &request, "--as", who]);
            assert_eq!(out.status.code(), Some(2), "{who}: {}", text(&out));
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
        let approved = g.requests("approved");
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

fn refused_for(g: &Guarded, request: &str, who: &str) -> String {
    let out = g.cli(&["approve", request, "--as", who]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_approvals_apply_the_change_once() {
    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let g = guarded(&[&group], 1).await;
        g.cli(&["guard", "baseline"]);
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (_, answer, _) = g.invoke(&added(&group, &id, "203.0.113.0/24", 22, ALICE)).await;
        let request = answer["request"]["id"].as_str().unwrap().to_string();
        let (bob, carol) = (["approve", &request, "--as", "ubob"], ["approve", &request, "--as", "ucarol"]);
        let (a, b) = tokio::join!(g.cli_async(&bob), g.cli_async(&carol));
        let codes = [a.status.code(), b.status.code()];
        assert!(codes.contains(&Some(0)) && codes.contains(&Some(2)), "{}\n{}", text(&a), text(&b));
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

        g.cli(&["guard", "baseline"]);
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

const SECRET: &str = "guard-test-signing-secret-0123456";

/// A signed `block_actions` post: `user` clicks `action` on request `id`.
fn click(user: &str, action: &str, id: &str, response_url: &str) -> String {
    let mut payload = fixture("slack-block-actions.json");
    payload["user"]["id"] = json!(user);
    payload["user"]["username"] = json!(user.to_lowercase());
    payload["actions"][0]["action_id"] = json!(action);
    payload["actions"][0]["value"] = json!(id);
    payload["response_url"] = json!(response_url);
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gets_the_approval_message_and_its_buttons_decide_through_the_same_rules() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use portcullis::app::App;
    use portcullis::config::{Config, Overrides};
    use portcullis::routes::router;
    use portcullis::wiring;

    use crate::support::{Receiver, post_signed_to, sdk_config};

    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let receiver = Receiver::start().await;
        let path = w.dir.path().join("portcullis.toml");
        std::fs::write(
            &path,
            format!(
                "[slack]\nresponse_url_prefixes = [\"{base}/\"]\n[guard]\ngroups = [\"{group}\"]\napprovers = [\"U0BOB\", \"U0ALICE\"]\n\
                 [[guard.targets]]\nregion = \"us-east-1\"\n[guard.people]\nU0ALICE = [\"{ALICE}\"]\n",
                base = receiver.base
            ),
        )
        .unwrap();
        let vars: BTreeMap<&str, String> = [
            ("SLACK_SIGNING_SECRET", SECRET.to_string()),
            ("APPROVAL_WEBHOOK_URL", receiver.url("/approval")),
            ("MONITORING_WEBHOOK_URL", receiver.url("/monitoring")),
            ("PORTCULLIS_FIREWALL", "aws".into()),
        ]
        .into();
        let overrides =
            Overrides { config_file: Some(path), store: Some(format!("sqlite:{}", w.store_path().display())), ..Overrides::default() };
        let config = Config::load(&overrides, &|k| vars.get(k).cloned()).unwrap();
        let store = wiring::open_store(&config).await.unwrap();
        let firewall = Arc::new(portcullis_aws::Ec2Firewall::new(&sdk_config().await));
        let clock = Arc::new(portcullis_engine::SystemClock);
        let engine = wiring::engine_with(&config, store, firewall.clone(), clock, wiring::notifier(&config))
            .with_guard(wiring::guard_with(&config, firewall).unwrap());
        let engine = Arc::new(engine);
        let slack = wiring::slack_endpoint(&config).await.unwrap().map(Arc::new);
        let app = Arc::new(App::new(engine.clone(), &config, slack));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(app)).await.unwrap() });
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let outbox = engine.outbox().unwrap().clone();
        tokio::spawn(async move { outbox.run(rx).await });

        engine.record_baseline(false, &portcullis_engine::Requester::named("ops", portcullis_core::Interface::Cli)).await.unwrap();
        let g = Guarded { world: w, config: std::path::PathBuf::new() };
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let Some(Ok(event)) = portcullis::events::read(&added(&group, &id, "203.0.113.0/24", 22, ALICE)) else { panic!("an event") };
        let answer = portcullis::events::handle(&engine, event, portcullis_core::Interface::Lambda).await.unwrap();
        let request = answer["request"]["id"].as_str().unwrap().to_string();
        assert!(g.rules(&group).await.is_empty());

        let approval: Value = serde_json::from_str(&receiver.wait_for("/approval", 1).await[0].body).unwrap();
        let buttons = approval["blocks"].as_array().unwrap().last().unwrap()["elements"].as_array().unwrap().clone();
        assert!(buttons.iter().all(|b| b["value"] == request.as_str()), "{approval}");
        assert!(approval.to_string().contains("tcp 22 from 203.0.113.0/24"), "{approval}");
        let notice = receiver.wait_for("/monitoring", 1).await;
        assert!(notice[0].body.contains("reverted") && notice[0].body.contains(&group), "{}", notice[0].body);

        let interactions = format!("{base}/slack/interactions");
        let now = || time::OffsetDateTime::now_utc().unix_timestamp();
        let (status, _) = post_signed_to(&interactions, "not-the-secret", now(), &click("U0BOB", "approve", &request, &receiver.url("/r/1"))).await;
        assert_eq!(status, 401, "the signature is checked first");
        let (status, _) = post_signed_to(&interactions, SECRET, now(), &click("U0ALICE", "approve", &request, &receiver.url("/r/alice"))).await;
        assert_eq!(status, 200);
        let refused = receiver.wait_for("/r/alice", 1).await;
        assert!(refused[0].body.contains("may not decide") && refused[0].body.contains("ephemeral"), "{}", refused[0].body);
        assert!(g.rules(&group).await.is_empty());

        let (status, _) = post_signed_to(&interactions, SECRET, now(), &click("U0BOB", "approve", &request, &receiver.url("/r/bob"))).await;
        assert_eq!(status, 200);
        let decided: Value = serde_json::from_str(&receiver.wait_for("/r/bob", 1).await[0].body).unwrap();
        assert_eq!(decided["replace_original"], true, "{decided}");
        assert!(decided.to_string().contains("Approved* by <@U0BOB>"), "{decided}");
        assert_eq!(g.rules(&group).await.len(), 1, "approved: the rule is back");
        receiver.wait_for("/monitoring", 2).await;
    })
    .await;
}

/// Guard over the engine on a virtual clock, on `store`, with `/v1/requests` over real HTTP:
/// a decision by an admin token's user, a non-approver refused, and a request that expires.
async fn decisions_over_v1_and_expiry_on_virtual_time(store: std::sync::Arc<dyn portcullis_store::Store>) {
    use std::sync::Arc;

    use portcullis::app::App;
    use portcullis::config::{Config, Overrides};
    use portcullis::routes::router;
    use portcullis::wiring;
    use portcullis_core::{Interface, Role, Timestamp};
    use portcullis_engine::{Clock, ManualClock, Requester};
    use portcullis_store::Actor;

    use crate::support::sdk_config;

    let w = World::new().await;
    let group = w.group(false, &[]).await;
    let path = w.dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        format!("[guard]\ngroups = [\"{group}\"]\napprovers = [\"ubob\"]\nrequest_ttl = \"2h\"\n[[guard.targets]]\nregion = \"us-east-1\"\n"),
    )
    .unwrap();
    let overrides = Overrides { config_file: Some(path), firewall: Some("aws".into()), ..Overrides::default() };
    let config = Config::load(&overrides, &|_| None).unwrap();
    let firewall = Arc::new(portcullis_aws::Ec2Firewall::new(&sdk_config().await));
    let clock = Arc::new(ManualClock::new(Timestamp::now_utc()));
    let engine =
        wiring::engine_with(&config, store.clone(), firewall.clone(), clock.clone(), Arc::new(portcullis_engine::LogNotifier))
            .with_guard(wiring::guard_with(&config, firewall).unwrap());
    let engine = Arc::new(engine);
    let app = Arc::new(App::new(engine.clone(), &config, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router(app).into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
    });
    let token = |user: &str| {
        let (secret, token) =
            portcullis::auth::issue(user, Role::Admin, Default::default(), Timestamp::now_utc(), None, "test").unwrap();
        (secret, token)
    };
    let actor = Actor { name: "test".into(), interface: Interface::Cli };
    let (bob, stored) = token("ubob");
    store.create_token(stored, &actor).await.unwrap();
    let (mallory, stored) = token("mallory");
    store.create_token(stored, &actor).await.unwrap();
    let http = reqwest::Client::new();
    let post = |secret: String, url: String| {
        let http = http.clone();
        async move {
            let r = http.post(url).bearer_auth(secret).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    engine.record_baseline(false, &Requester::named("ops", Interface::Cli)).await.unwrap();
    let g = Guarded { world: w, config: std::path::PathBuf::new() };
    let mut ids = Vec::new();
    for (cidr, port) in [("203.0.113.0/24", 22), ("192.0.2.0/24", 3389)] {
        let rule = g.authorize(&group, cidr, port, None).await;
        let mut e = added(&group, &rule, cidr, port, ALICE);
        let at = clock.now().format(&time::format_description::well_known::Rfc3339).unwrap();
        e["detail"]["eventTime"] = json!(at);
        let Some(Ok(event)) = portcullis::events::read(&e) else { panic!("an event") };
        let answer = portcullis::events::handle(&engine, event, Interface::Http).await.unwrap();
        ids.push(answer["request"]["id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string());
    }
    assert!(g.rules(&group).await.is_empty());
    let listed: Value = http.get(format!("{base}/v1/requests")).bearer_auth(&bob).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(2), "{listed}");

    let (status, answer) = post(mallory.clone(), format!("{base}/v1/requests/{}/approve", ids[0])).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("refused")), "{answer}");
    let (status, answer) = post(bob.clone(), format!("{base}/v1/requests/{}/approve", ids[0])).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(g.rules(&group).await.len(), 1);
    let (status, _) = post(bob.clone(), format!("{base}/v1/requests/nope/approve")).await;
    assert_eq!(status, 404);

    clock.advance(time::Duration::hours(2));
    let sweep = engine.guard_sweep().await.unwrap();
    assert_eq!(sweep.expired, [ids[1].clone()]);
    let (status, answer) = post(bob, format!("{base}/v1/requests/{}/approve", ids[1])).await;
    assert_eq!((status, answer["error"]["message"].as_str().map(|m| m.contains("expired"))), (409, Some(true)), "{answer}");
    assert_eq!(g.rules(&group).await.len(), 1, "the expired request's revert stays");
    let actions: Vec<String> = store.audit(None, 50).await.unwrap().iter().map(|e| e.action.as_str().to_string()).collect();
    assert!(actions.contains(&"change-expired".to_string()) && actions.contains(&"change-approved".to_string()), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_expiry_on_sqlite() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(portcullis_store::SqliteStore::open(dir.path().join("g.db")).unwrap());
        decisions_over_v1_and_expiry_on_virtual_time(store).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_expiry_on_dynamodb() {
    within(async {
        let sdk = crate::aws_proxy::sdk_config_at(&crate::aws_proxy::start().await).await;
        let env = portcullis_core::Environment::parse("dev").unwrap();
        let store = portcullis_aws::DynamoStore::new(&sdk, portcullis_aws::TableNames::new(&unique("guard"), None), vec![env]);
        store.init().await.unwrap();
        decisions_over_v1_and_expiry_on_virtual_time(std::sync::Arc::new(store)).await;
    })
    .await;
}

/// An API Gateway HTTP API (v2) event: a signed Slack interaction post.
fn gateway_interaction(body: &str, at: i64) -> Value {
    let ts = at.to_string();
    let sig = portcullis_slack::SigningSecret::new(SECRET).sign(&ts, body.as_bytes());
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/slack/interactions", "rawQueryString": "",
        "headers": {"host": "example.execute-api.us-east-1.amazonaws.com", "content-type": "application/x-www-form-urlencoded",
                    "x-slack-request-timestamp": ts, "x-slack-signature": sig},
        "requestContext": {"http": {"method": "POST", "path": "/slack/interactions", "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "Slackbot"},
                           "requestId": "r1", "routeKey": "$default", "stage": "$default", "timeEpoch": 0},
        "body": body, "isBase64Encoded": false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_reverts_from_eventbridge_and_decides_a_click_through_api_gateway() {
    use crate::lambda::{Runtime, in_lambda};

    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let g = guarded(&[&group], 1).await;
        let receiver = crate::support::Receiver::start().await;
        g.write(&[&group], 1, &format!("[slack]\nresponse_url_prefixes = [\"{}/\"]", receiver.base));
        assert!(g.cli(&["guard", "baseline"]).status.success());
        let rule = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (rt, addr) = Runtime::start().await;
        rt.queue.lock().unwrap().push_back(added(&group, &rule, "203.0.113.0/24", 22, ALICE));
        let mut cmd = g.world.command(&["lambda"]);
        cmd.env("PORTCULLIS_CONFIG", &g.config).env("SLACK_SIGNING_SECRET", SECRET);
        in_lambda(&mut cmd, addr);
        let mut child = cmd.spawn().unwrap();

        let (_, kind, reverted) = rt.answer(1).await;
        assert_eq!((kind.as_str(), reverted["outcome"].as_str()), ("response", Some("reverted")), "{reverted}");
        assert!(g.rules(&group).await.is_empty());
        let request = reverted["request"]["id"].as_str().unwrap().to_string();
        let body = click("ubob", "approve", &request, &receiver.url("/actions/1"));
        rt.queue.lock().unwrap().push_back(gateway_interaction(&body, time::OffsetDateTime::now_utc().unix_timestamp()));
        let (_, kind, response) = rt.answer(2).await;
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert_eq!((kind.as_str(), response["statusCode"].as_i64()), ("response", Some(200)), "{response}\n{}", text(&out));
        let decided: Value = serde_json::from_str(response["body"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
        assert!(decided.to_string().contains("Approved* by <@ubob>"), "answered inline in Lambda: {response}");
        assert_eq!(g.rules(&group).await.len(), 1);
        let replaced = receiver.wait_for("/actions/1", 1).await;
        assert!(
            replaced[0].body.contains("\"replace_original\":true"),
            "the message is replaced before Lambda answers: {}",
            replaced[0].body
        );
    })
    .await;
}
