//! Guard against an attacker and a careless operator, end to end on moto: the engine of the
//! binary in process, its EC2 calls through the loopback proxy, which also stands in for
//! CloudTrail (`trail`), so guard is handed the events its own calls cause, read by the real
//! CloudTrail parser.

use std::sync::Arc;

use aws_sdk_ec2::types::{IpPermission, IpRange, SecurityGroupRuleRequest, SecurityGroupRuleUpdate};
use portcullis::config::{Config, Overrides};
use portcullis::events::EventError;
use portcullis::wiring;
use portcullis_core::guard::{RequestStatus, Verdict};
use portcullis_core::{Cidr, Description, Environment, Interface, Source, Ttl};
use portcullis_engine::{AddRequest, Apply, DecisionOutcome, Engine, Requester, SystemClock};
use serde_json::{Value, json};

use crate::aws_proxy::{Proxy, sdk_config_at, start_proxy};
use crate::guard::{ALICE, added, event};
use crate::support::{World, within};

/// The identity guard's own calls come back under: none STS names (moto's is `user/moto`).
const PORTCULLIS: &str = "arn:aws:sts::123456789012:assumed-role/portcullis/i-0guard";

struct Rig {
    world: World,
    proxy: Proxy,
    engine: Arc<Engine>,
    /// Guarded, and a `dev` target on tcp:443.
    group: String,
    _dir: tempfile::TempDir,
}

/// The binary's engine with guard on `group` (also a `dev` target, tcp:443), EC2 through the
/// proxy; `own` is the `own_principals` line (or nothing).
async fn rig(own: &str) -> Rig {
    let world = World::new().await;
    let proxy = start_proxy().await;
    let group = world.group(false, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    let proxy_url = &proxy.url;
    std::fs::write(
        &path,
        format!(
            r#"
            firewall = "aws"
            [environments.dev]
            [[environments.dev.targets]]
            region = "us-east-1"
            group_ids = ["{group}"]
            ports = "tcp:443"
            endpoint_url = "{proxy_url}"
            [guard]
            groups = ["{group}"]
            {own}
            approvers = ["ubob", "ucarol"]
            break_glass = true
            [[guard.targets]]
            region = "us-east-1"
            endpoint_url = "{proxy_url}"
            [guard.people]
            ualice = ["{ALICE}"]
            "#
        ),
    )
    .unwrap();
    let overrides = Overrides { config_file: Some(path), ..Overrides::default() };
    let config = Config::load(&overrides, &|_| None).unwrap();
    let store = Arc::new(portcullis_store::SqliteStore::open(dir.path().join("p.db")).unwrap());
    let firewall = Arc::new(portcullis_aws::Ec2Firewall::new(&sdk_config_at(&proxy.url).await));
    let engine =
        wiring::builder(&config, store, firewall.clone(), Arc::new(SystemClock), Arc::new(portcullis_engine::LogNotifier))
            .guard(wiring::guard_settings(&config).unwrap(), firewall)
            .build();
    Rig { world, proxy, engine: Arc::new(engine), group, _dir: dir }
}

impl Rig {
    async fn handle(&self, event: &Value) -> Result<Value, EventError> {
        let Some(Ok(read)) = portcullis::events::read(event) else { panic!("not an event: {event}") };
        portcullis::events::handle(&self.engine, read, Interface::Http).await
    }

    async fn outcome(&self, event: &Value) -> String {
        let answer = self.handle(event).await.unwrap();
        answer["outcome"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string()
    }

    /// The group's inbound rules: (rule id, port, cidr, description), by port and cidr.
    async fn rules(&self) -> Vec<(String, i32, String, Option<String>)> {
        crate::guard::rules_by_id(&self.world, &self.group).await
    }

    /// The same without rule ids (a restored rule has a new one).
    async fn shape(&self) -> Vec<(i32, String, Option<String>)> {
        self.rules().await.into_iter().map(|r| (r.1, r.2, r.3)).collect()
    }

    async fn authorize(&self, cidr: &str, port: i32, description: Option<&str>) -> String {
        let range = IpRange::builder().cidr_ip(cidr).set_description(description.map(str::to_string)).build();
        let perm = IpPermission::builder().ip_protocol("tcp").from_port(port).to_port(port).ip_ranges(range).build();
        self.world.ec2.authorize_security_group_ingress().group_id(&self.group).ip_permissions(perm).send().await.unwrap();
        self.rules().await.into_iter().find(|r| r.1 == port && r.2 == cidr).unwrap().0
    }

    async fn modify(&self, id: &str, cidr: &str, port: i32, description: &str) {
        let rule = SecurityGroupRuleRequest::builder()
            .ip_protocol("tcp")
            .from_port(port)
            .to_port(port)
            .cidr_ipv4(cidr)
            .description(description)
            .build();
        let update = SecurityGroupRuleUpdate::builder().security_group_rule_id(id).security_group_rule(rule).build();
        self.world.ec2.modify_security_group_rules().group_id(&self.group).security_group_rules(update).send().await.unwrap();
    }

    /// The event of an edit of rule `id` to tcp `port` from `cidr`, by `by`.
    fn edited(&self, id: &str, cidr: &str, port: i32, description: &str, by: &str) -> Value {
        let mut e = event("cloudtrail-modify-rules.json", &self.group);
        e["detail"]["userIdentity"]["arn"] = json!(by);
        let edit = &mut e["detail"]["requestParameters"]["ModifySecurityGroupRulesRequest"]["SecurityGroupRule"];
        edit["SecurityGroupRuleId"] = json!(id);
        edit["SecurityGroupRule"] =
            json!({"IpProtocol": "tcp", "FromPort": port, "ToPort": port, "CidrIpv4": cidr, "Description": description});
        e
    }

    /// The event of a revoke of rule `id` by id, by `by`.
    fn revoked_by_id(&self, id: &str, by: &str) -> Value {
        let mut e = event("cloudtrail-revoke-ingress.json", &self.group);
        e["detail"]["userIdentity"]["arn"] = json!(by);
        e["detail"]["requestParameters"] =
            json!({"groupId": self.group, "securityGroupRuleIds": {"items": [{"securityGroupRuleId": id}]}});
        e
    }

    /// The event of a revoke of tcp `port` from `cidr` by content, by `by`.
    fn revoked(&self, cidr: &str, port: i32, by: &str) -> Value {
        let mut e = event("cloudtrail-revoke-ingress.json", &self.group);
        e["detail"]["userIdentity"]["arn"] = json!(by);
        let perm = &mut e["detail"]["requestParameters"]["ipPermissions"]["items"][0];
        perm["fromPort"] = json!(port);
        perm["toPort"] = json!(port);
        perm["ipRanges"] = json!({"items": [{"cidrIp": cidr}]});
        e
    }

    async fn revoke(&self, cidr: &str, port: i32) {
        let perm = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(port)
            .to_port(port)
            .ip_ranges(IpRange::builder().cidr_ip(cidr).build())
            .build();
        self.world.ec2.revoke_security_group_ingress().group_id(&self.group).ip_permissions(perm).send().await.unwrap();
    }

    async fn baseline(&self) {
        let report = self.engine.guard().unwrap().record_baseline(false, &Requester::named("ops", Interface::Cli)).await.unwrap();
        assert_eq!(report.groups.len(), 1, "{report:?}");
    }

    async fn requests(&self) -> Vec<portcullis_core::guard::ChangeRequest> {
        self.engine.guard().unwrap().requests(None, &Requester::named("ops", Interface::Cli)).await.unwrap()
    }

    /// Hands guard every event its own calls caused since the last time, as CloudTrail would
    /// deliver them; each must be ignored.
    async fn feed_back(&self, what: &str) -> usize {
        let events = self.proxy.take_trail(PORTCULLIS);
        for e in &events {
            let answer = self.handle(e).await.unwrap();
            assert_eq!(answer["outcome"], "ignored", "{what}: guard's own call came back as a change: {answer}\n{e}");
        }
        events.len()
    }
}

fn grant(cidr: &str) -> AddRequest {
    AddRequest {
        cidr: Cidr::parse(cidr).unwrap(),
        environment: Environment::parse("dev").unwrap(),
        ttl: Some(Ttl::parse("1h").unwrap()),
        description: Description::parse("laptop").unwrap(),
        source: Source::Manual,
        by: Requester::named("alice", Interface::Cli),
    }
}

/// Finding 2: every event guard's own calls cause, handed back for 8 rounds, under each change
/// kind and each `own_principals` setting (none, another role's, this one's): the group
/// settles at the baseline after the first round, with exactly one request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_s_own_calls_through_cloudtrail_settle_after_one_round() {
    within(async {
        let settings = [
            ("absent", ""),
            ("wrong", "own_principals = [\"arn:aws:sts::123456789012:assumed-role/someone-else/*\"]"),
            ("right", "own_principals = [\"arn:aws:sts::123456789012:assumed-role/portcullis/*\"]"),
        ];
        for (name, own) in settings {
            for kind in ["add", "remove", "remove-by-id", "edit"] {
                let r = rig(own).await;
                let office = r.authorize("198.51.100.0/24", 8443, Some("office")).await;
                r.baseline().await;
                let settled = r.shape().await;
                let change = match kind {
                    "add" => {
                        let id = r.authorize("0.0.0.0/0", 3389, None).await;
                        added(&r.group, &id, "0.0.0.0/0", 3389, ALICE)
                    }
                    "remove" => {
                        r.revoke("198.51.100.0/24", 8443).await;
                        r.revoked("198.51.100.0/24", 8443, ALICE)
                    }
                    "remove-by-id" => {
                        r.world
                            .ec2
                            .revoke_security_group_ingress()
                            .group_id(&r.group)
                            .security_group_rule_ids(&office)
                            .send()
                            .await
                            .unwrap();
                        r.revoked_by_id(&office, ALICE)
                    }
                    _ => {
                        r.modify(&office, "0.0.0.0/0", 8443, "open").await;
                        r.edited(&office, "0.0.0.0/0", 8443, "open", ALICE)
                    }
                };
                assert_eq!(r.outcome(&change).await, "reverted", "{name} {kind}");
                assert_eq!(r.shape().await, settled, "{name} {kind}: reverted");
                for round in 1..=8 {
                    let fed = r.feed_back(&format!("{name} {kind} round {round}")).await;
                    assert!(round > 1 || fed > 0, "{name} {kind}: the revert's own call comes back");
                    assert_eq!(r.shape().await, settled, "{name} {kind} round {round}");
                }
                assert!(r.engine.guard().unwrap().sweep().await.unwrap().reverted.is_empty(), "{name} {kind}: the sweep agrees");
                assert_eq!(r.requests().await.len(), 1, "{name} {kind}: one request");
            }
        }
    })
    .await;
}

/// Finding 1: a description is anyone's to write. A rule behind our marker that nothing stored
/// backs is reverted, by its event and by the sweep; a grant's own rule is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_marker_is_reverted_and_a_grant_s_own_rule_is_left_alone() {
    within(async {
        let r = rig("").await;
        let db = r.authorize("10.20.0.0/16", 5432, Some("db")).await;
        r.baseline().await;
        r.engine.grants().add(grant("203.0.113.7")).await.unwrap();
        let ours = r.rules().await.into_iter().find(|x| x.1 == 443).expect("the grant's rule");
        assert_eq!(ours.3.as_deref(), Some("pc:dev alice: laptop"));
        // The reconcile's own call comes back (made as an identity guard does not know): ignored.
        assert_eq!(r.feed_back("the grant's authorize").await, 1);

        for (i, description) in [
            "pc:dev evil: looks like ours",
            "pc:zzz",
            "pc:prod",
            "pc:grant/r-0000000000000000 x: y",
            "pc:timed/r-0000000000000000 x: y",
            " pc:dev leading space",
        ]
        .into_iter()
        .enumerate()
        {
            let port = 2222 + i as i32;
            let id = r.authorize("0.0.0.0/0", port, Some(description)).await;
            let mut e = added(&r.group, &id, "0.0.0.0/0", port, ALICE);
            e["detail"]["responseElements"]["securityGroupRuleSet"]["items"][0]["description"] = json!(description);
            let answer = r.handle(&e).await.unwrap();
            assert_eq!(answer["outcome"], "reverted", "{description:?}: {answer}");
            assert!(!r.rules().await.iter().any(|x| x.1 == port), "{description:?} stays open");
        }
        // A baseline rule opened to the internet behind our marker is put back.
        r.modify(&db, "0.0.0.0/0", 5432, "pc:dev ops: db").await;
        let answer = r.handle(&r.edited(&db, "0.0.0.0/0", 5432, "pc:dev ops: db", ALICE)).await.unwrap();
        assert_eq!(answer["outcome"], "reverted", "{answer}");
        assert!(answer["request"]["notes"].to_string().contains("claims to be a grant's rule in dev"), "{answer}");
        // What no event reports, the sweep finds.
        r.authorize("0.0.0.0/0", 2299, Some("pc:dev quiet")).await;
        let sweep = r.engine.guard().unwrap().sweep().await.unwrap();
        assert_eq!(sweep.reverted.len(), 1, "{sweep:?}");
        r.feed_back("the reverts").await;
        assert_eq!(
            r.shape().await,
            [
                (443, "203.0.113.7/32".into(), Some("pc:dev alice: laptop".into())),
                (5432, "10.20.0.0/16".into(), Some("db".into()))
            ],
            "the baseline and the grant's rule, nothing else"
        );
    })
    .await;
}

/// Findings 4, 5, 6 and 12: without a baseline guard closes but never opens; its restores
/// keep the baseline's ids current; a no-op edit files nothing; a change the sweep filed first
/// is one request when its event comes late.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guard_closes_without_a_baseline_follows_its_restores_ignores_no_ops_and_files_a_change_once() {
    within(async {
        let r = rig("").await;
        // No baseline: a removal of RDP to the internet is not restored.
        r.authorize("0.0.0.0/0", 3389, None).await;
        r.revoke("0.0.0.0/0", 3389).await;
        let answer = r.handle(&r.revoked("0.0.0.0/0", 3389, ALICE)).await.unwrap();
        assert_eq!(answer["outcome"], "reverted", "{answer}");
        assert!(answer["request"]["notes"][0].as_str().unwrap().contains("no baseline"), "{answer}");
        assert!(r.rules().await.is_empty(), "RDP stays closed");

        // A baseline; a rule removed by id is restored under a new id, which the baseline takes.
        let office = r.authorize("198.51.100.0/24", 8443, Some("office")).await;
        r.baseline().await;
        r.world.ec2.revoke_security_group_ingress().group_id(&r.group).security_group_rule_ids(&office).send().await.unwrap();
        assert_eq!(r.outcome(&r.revoked_by_id(&office, ALICE)).await, "reverted");
        let restored = r.rules().await[0].0.clone();
        assert_ne!(restored, office);
        r.modify(&restored, "0.0.0.0/0", 8443, "open").await;
        let answer = r.handle(&r.edited(&restored, "0.0.0.0/0", 8443, "open", ALICE)).await.unwrap();
        assert_eq!(answer["outcome"], "reverted", "{answer}");
        assert_eq!(answer["request"]["notes"], Value::Null, "put back from the baseline, not revoked: {answer}");
        assert_eq!(r.shape().await, [(8443, "198.51.100.0/24".into(), Some("office".into()))]);

        // A no-op edit: nothing done, nothing filed.
        let before = r.requests().await.len();
        r.proxy.take_trail(PORTCULLIS);
        r.modify(&restored, "198.51.100.0/24", 8443, "office").await;
        assert_eq!(r.outcome(&r.edited(&restored, "198.51.100.0/24", 8443, "office", ALICE)).await, "ignored");
        assert_eq!(r.requests().await.len(), before);
        assert!(r.proxy.take_trail(PORTCULLIS).is_empty(), "no revert call");

        // The sweep catches a change before its event; the late event joins that request.
        let rdp = r.authorize("0.0.0.0/0", 3389, None).await;
        let late = added(&r.group, &rdp, "0.0.0.0/0", 3389, ALICE);
        assert_eq!(r.engine.guard().unwrap().sweep().await.unwrap().reverted.len(), 1);
        let answer = r.handle(&late).await.unwrap();
        assert_eq!(answer["outcome"], "reported", "{answer}");
        assert_eq!(r.requests().await.len(), before + 1, "one change, one request");
        let id = answer["request"]["id"].as_str().unwrap();
        let by = |who: &str| Requester::named(who, Interface::Cli);
        let approved =
            r.engine.guard().unwrap().decide(id, Verdict::Deny { reason: None }, &by("ubob"), Apply::Now).await.unwrap();
        assert!(matches!(approved, DecisionOutcome::Decided { .. }));
        assert!(matches!(
            r.engine.guard().unwrap().decide(id, Verdict::Approve, &by("ucarol"), Apply::Now).await.unwrap(),
            DecisionOutcome::Refused(_)
        ));
    })
    .await;
}

/// Finding 7 and 11: approved, then applied once it is on the group, or failed and why (the
/// sweep retries); a term past `temporary_approval`, an unbounded reason and an event from the
/// future are refused; break-glass puts the requester's own addition on for a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_tell_the_truth_and_bounds_hold() {
    within(async {
        let r = rig("").await;
        r.baseline().await;
        let by = |who: &str| Requester::named(who, Interface::Cli);
        let id = r.authorize("203.0.113.0/24", 22, None).await;
        let answer = r.handle(&added(&r.group, &id, "203.0.113.0/24", 22, ALICE)).await.unwrap();
        let request = answer["request"]["id"].as_str().unwrap().to_string();

        let year = Verdict::ApproveFor(time::Duration::days(365));
        assert!(matches!(
            r.engine.guard().unwrap().decide(&request, year, &by("ubob"), Apply::Now).await.unwrap(),
            DecisionOutcome::Refused(_)
        ));
        let long = Verdict::Deny { reason: Some("x".repeat(100 * 1024)) };
        assert!(
            r.engine.guard().unwrap().decide(&request, long, &by("ubob"), Apply::Now).await.is_err(),
            "a 100 KB reason is refused"
        );

        r.proxy.fail_region("us-east-1", true);
        let DecisionOutcome::Decided { request: failed, failures } =
            r.engine.guard().unwrap().decide(&request, Verdict::Approve, &by("ubob"), Apply::Now).await.unwrap()
        else {
            panic!("decided")
        };
        assert_eq!(failed.status, RequestStatus::Failed, "{failures:?}");
        assert!(failed.failure.as_deref().unwrap_or_default().contains("UnauthorizedOperation"), "{failed:?}");
        r.proxy.fail_region("us-east-1", false);
        let sweep = r.engine.guard().unwrap().sweep().await.unwrap();
        assert_eq!(sweep.applied, std::slice::from_ref(&request));
        assert!(r.rules().await.iter().any(|x| x.1 == 22));
        r.feed_back("the apply").await;

        let mut future = added(&r.group, &id, "203.0.113.0/24", 22, ALICE);
        let later = time::OffsetDateTime::now_utc() + time::Duration::minutes(10);
        future["detail"]["eventTime"] = json!(later.format(&time::format_description::well_known::Rfc3339).unwrap());
        assert!(matches!(r.handle(&future).await, Err(EventError::Refused(m)) if m.contains("future")));

        // Break-glass: the requester's own addition, at once, for at most 4 h, under our marker.
        let vendor = r.authorize("192.0.2.0/24", 2222, None).await;
        let answer = r.handle(&added(&r.group, &vendor, "192.0.2.0/24", 2222, ALICE)).await.unwrap();
        let second = answer["request"]["id"].as_str().unwrap().to_string();
        let glass = Verdict::BreakGlass { reason: "incident 42".into(), term: time::Duration::hours(1) };
        let DecisionOutcome::Decided { request: broken, .. } =
            r.engine.guard().unwrap().decide(&second, glass, &by("ualice"), Apply::Now).await.unwrap()
        else {
            panic!("broke the glass")
        };
        assert_eq!(broken.status, RequestStatus::Applied);
        let on = r.rules().await.into_iter().find(|x| x.1 == 2222).expect("on again");
        assert!(on.3.unwrap_or_default().starts_with(&format!("pc:timed/{second} ualice:")));
        r.feed_back("the break-glass timed rule").await;
        assert!(r.engine.guard().unwrap().sweep().await.unwrap().reverted.is_empty());
    })
    .await;
}
