//! Auto Scaling members as grants, over the in-memory firewall and Auto Scaling: lifecycle
//! events, true-ups, the lifecycle result by region, and ownership.

use std::sync::Arc;

use portcullis_core::{
    Action, AddressKind, Cidr, GrantKey, Instance, Interface, Marker, MemberSource, ObservedRule, PortRange, Protocol, Rejection,
    Route, Source,
};
use portcullis_engine::{
    DEFAULT_MEMBER_TTL, Engine, EngineError, LifecycleAction, LifecycleResult, MemberEvent, MemoryMembership, Requester,
};

use crate::{Rig, dev, rig};
use portcullis_core::PolicyRefusal;

const EAST: &str = "us-east-1";
const WEST: &str = "eu-west-1";

fn source(asg: &str, address: AddressKind) -> MemberSource {
    MemberSource {
        environment: dev(),
        asg: asg.into(),
        route: Route { region: EAST.into(), endpoint_url: None, role_arn: None },
        address,
        on_failure: portcullis_core::OnFailure::Continue,
    }
}

fn instance(id: &str, state: &str, public: &str) -> Instance {
    Instance {
        id: id.into(),
        lifecycle_state: state.into(),
        public_ipv4: Some(public.parse().unwrap()),
        private_ipv4: Some(format!("10.0.0.{}", &public[public.rfind('.').unwrap() + 1..]).parse().unwrap()),
        ipv6: vec![],
        asg: Some("web".into()),
    }
}

fn members(r: &Rig, sources: Vec<MemberSource>) -> (Arc<Engine>, Arc<MemoryMembership>) {
    let membership = Arc::new(MemoryMembership::default());
    let engine = Engine::builder(r.store.clone(), r.firewall.clone(), r.clock.clone(), r.settings.clone())
        .members(sources, DEFAULT_MEMBER_TTL, membership.clone())
        .build();
    (Arc::new(engine), membership)
}

fn action(instance_id: &str) -> LifecycleAction {
    LifecycleAction {
        asg: "web".into(),
        hook: "portcullis-launch".into(),
        token: format!("token-{instance_id}"),
        instance_id: instance_id.into(),
    }
}

fn launch(instance_id: &str) -> MemberEvent {
    MemberEvent::Launch { region: EAST.into(), action: action(instance_id) }
}

/// The addresses ours on a group (carrying the marker).
fn ours(r: &Rig, region: &str) -> Vec<String> {
    let marker = Marker::default();
    let rules = r.firewall.rules(region, &format!("sg-{region}"));
    let ours = rules.iter().filter(|x| x.description.as_deref().and_then(|d| marker.decode(d)).is_some());
    let mut cidrs: Vec<String> = ours.map(|x| x.cidr.to_string()).collect();
    cidrs.sort();
    cidrs.dedup();
    cidrs
}

#[tokio::test]
async fn a_launch_opens_every_region_then_continues_and_a_terminate_closes_them() {
    let r = rig(&[EAST, WEST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    asg.set_instances(EAST, "web", vec![instance("i-1", "Pending:Wait", "198.51.100.1")]);

    let outcome = engine.member_event(launch("i-1"), Interface::Lambda).await.unwrap();
    assert_eq!(outcome.lifecycle, Some(LifecycleResult::Continue));
    assert_eq!(ours(&r, EAST), ["198.51.100.1/32"]);
    assert_eq!(ours(&r, WEST), ["198.51.100.1/32"]);
    let completed = asg.completed();
    assert_eq!(completed.len(), 1);
    assert_eq!((completed[0].1.token.as_str(), completed[0].2), ("token-i-1", LifecycleResult::Continue));
    let grant = r.store.grant(&key("198.51.100.1")).await.unwrap().expect("the member grant");
    assert_eq!((grant.source, grant.owner.id.as_str()), (Source::AsgMember, "asg:us-east-1/web"));
    assert!(grant.description.as_str().contains("i-1"), "{}", grant.description.as_str());

    let outcome = engine
        .member_event(MemberEvent::Terminate { region: EAST.into(), action: action("i-1") }, Interface::Lambda)
        .await
        .unwrap();
    assert_eq!(outcome.lifecycle, Some(LifecycleResult::Continue));
    assert_eq!(outcome.removed.len(), 1);
    assert!(ours(&r, EAST).is_empty() && ours(&r, WEST).is_empty());
    let audit = r.store.audit(None, 20).await.unwrap();
    let completions: Vec<&str> =
        audit.iter().filter(|e| e.action == Action::LifecycleCompleted).map(|e| e.reason.as_str()).collect();
    assert_eq!(completions.len(), 2, "{completions:?}");
    assert!(completions.iter().all(|c| c.starts_with("CONTINUE")), "{completions:?}");
}

#[tokio::test]
async fn the_asgs_own_region_failing_continues_by_default_is_reported_and_the_true_up_admits_it() {
    let r = rig(&[EAST, WEST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    asg.set_instances(EAST, "web", vec![instance("i-1", "Pending:Wait", "198.51.100.1")]);
    r.firewall.set_region_failing(EAST, true);
    let outcome = engine.member_event(launch("i-1"), Interface::Lambda).await.unwrap();
    assert_eq!(outcome.lifecycle, Some(LifecycleResult::Continue), "as the AWS Auto Scaling sync did: no churn");
    assert!(outcome.failures.iter().any(|f| f.to_string().contains(EAST)), "{:?}", outcome.failures);
    let audit = r.store.audit(None, 20).await.unwrap();
    let completed = audit.iter().find(|e| e.action == Action::LifecycleCompleted).expect("audited");
    assert!(completed.reason.starts_with("CONTINUE"), "{}", completed.reason);
    // EC2 is back: the next true-up admits it.
    r.firewall.set_region_failing(EAST, false);
    engine.member_event(MemberEvent::TrueUp { asg: None, region: None }, Interface::Lambda).await.unwrap();
    let on: Vec<String> = r.firewall.rules(EAST, "sg-us-east-1").into_iter().map(|r| r.raw_cidr).collect();
    assert!(on.contains(&"198.51.100.1/32".to_string()), "{on:?}");
}

#[tokio::test]
async fn with_on_failure_abandon_the_asgs_own_region_failing_abandons_and_another_region_failing_continues() {
    let r = rig(&[EAST, WEST]);
    let abandoning = MemberSource { on_failure: portcullis_core::OnFailure::Abandon, ..source("web", AddressKind::Public) };
    let (engine, asg) = members(&r, vec![abandoning]);
    asg.set_instances(
        EAST,
        "web",
        vec![instance("i-1", "Pending:Wait", "198.51.100.1"), instance("i-2", "Pending", "198.51.100.2")],
    );

    r.firewall.set_region_failing(WEST, true);
    let outcome = engine.member_event(launch("i-1"), Interface::Lambda).await.unwrap();
    assert_eq!(outcome.lifecycle, Some(LifecycleResult::Continue), "another region never blocks the action");
    assert!(outcome.failures.iter().any(|f| f.to_string().contains(WEST)), "{:?}", outcome.failures);
    r.firewall.set_region_failing(WEST, false);

    r.firewall.set_region_failing(EAST, true);
    let outcome = engine.member_event(launch("i-2"), Interface::Lambda).await.unwrap();
    assert_eq!(outcome.lifecycle, Some(LifecycleResult::Abandon));
    let audit = r.store.audit(None, 20).await.unwrap();
    let abandoned = audit.iter().find(|e| e.action == Action::LifecycleCompleted && e.reason.starts_with("ABANDON"));
    let abandoned = abandoned.expect("the audit says the action was abandoned");
    assert!(abandoned.reason.contains(EAST) && abandoned.reason.contains("i-2"), "{}", abandoned.reason);
}

#[tokio::test]
async fn a_true_up_converges_on_the_members_and_leaves_hand_made_rules_alone() {
    let r = rig(&[EAST, WEST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    let hand_made = ObservedRule {
        cidr: Cidr::parse("198.51.100.2").unwrap(),
        raw_cidr: "198.51.100.2/32".into(),
        ports: PortRange { protocol: Protocol::Tcp, from: 80, to: 80 },
        description: Some("office".into()),
    };
    r.firewall.put_rule(WEST, "sg-eu-west-1", hand_made.clone());
    asg.set_instances(
        EAST,
        "web",
        vec![instance("i-1", "InService", "198.51.100.1"), instance("i-2", "InService", "198.51.100.2")],
    );
    let true_up = || MemberEvent::TrueUp { asg: None, region: None };
    let first = engine.member_event(true_up(), Interface::Cli).await.unwrap();
    assert_eq!(first.granted.len(), 2);
    assert_eq!(ours(&r, WEST), ["198.51.100.1/32", "198.51.100.2/32"]);

    // Behind our back: i-1 detached, i-2 terminating, i-3 and i-4 (no address yet) launched.
    let mut no_address = instance("i-4", "InService", "198.51.100.4");
    no_address.public_ipv4 = None;
    asg.set_instances(
        EAST,
        "web",
        vec![instance("i-2", "Terminating:Wait", "198.51.100.2"), instance("i-3", "InService", "198.51.100.3"), no_address],
    );
    let second = engine.member_event(true_up(), Interface::Cli).await.unwrap();
    assert_eq!(ours(&r, EAST), ["198.51.100.3/32"]);
    assert_eq!(ours(&r, WEST), ["198.51.100.3/32"]);
    assert_eq!(second.removed.len(), 2);
    assert_eq!(second.skipped.iter().map(|s| s.instance_id.as_str()).collect::<Vec<_>>(), ["i-4"]);
    assert!(r.firewall.rules(WEST, "sg-eu-west-1").contains(&hand_made), "the hand-made rule is untouched");
    let calls = asg.calls();
    assert_eq!(calls.iter().filter(|c| c.starts_with("DescribeAutoScalingGroups")).count(), 2, "{calls:?}");

    // A third true-up with nothing changed renews and touches no rule.
    let before = r.firewall.calls().len();
    let third = engine.member_event(true_up(), Interface::Cli).await.unwrap();
    assert!(third.removed.is_empty());
    let applied: Vec<_> = r.firewall.calls()[before..].iter().filter(|c| c.action != "DescribeSecurityGroups").cloned().collect();
    assert!(applied.is_empty(), "{applied:?}");
}

#[tokio::test]
async fn the_private_option_admits_private_addresses() {
    let r = rig(&[EAST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Private)]);
    asg.set_instances(EAST, "web", vec![instance("i-1", "InService", "198.51.100.1")]);
    engine.member_event(MemberEvent::TrueUp { asg: Some("web".into()), region: None }, Interface::Cli).await.unwrap();
    assert_eq!(ours(&r, EAST), ["10.0.0.1/32"]);
}

#[tokio::test]
async fn membership_decides_so_removing_a_member_grant_is_refused() {
    let r = rig(&[EAST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    asg.set_instances(EAST, "web", vec![instance("i-1", "InService", "198.51.100.1")]);
    engine.member_event(MemberEvent::TrueUp { asg: None, region: None }, Interface::Cli).await.unwrap();
    let err = engine.grants().remove(&key("198.51.100.1"), &Requester::named("alice", Interface::Cli)).await.unwrap_err();
    assert!(matches!(err, EngineError::Rejected(Rejection::Policy(PolicyRefusal::MembershipDecides { .. }))), "{err}");
    assert!(err.to_string().contains("membership decides"), "{err}");
    assert_eq!(ours(&r, EAST), ["198.51.100.1/32"]);
}

#[tokio::test]
async fn an_asg_no_environment_lists_is_ignored_and_nothing_changes() {
    let r = rig(&[EAST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    asg.set_instances(EAST, "api", vec![instance("i-9", "InService", "198.51.100.9")]);
    let mut other = action("i-9");
    other.asg = "api".into();
    let outcome =
        engine.member_event(MemberEvent::Launch { region: EAST.into(), action: other }, Interface::Lambda).await.unwrap();
    assert!(outcome.ignored.as_deref().is_some_and(|m| m.contains("api")), "{outcome:?}");
    assert!(asg.calls().is_empty(), "{:?}", asg.calls());
    assert!(ours(&r, EAST).is_empty());
    assert!(r.store.grants(None).await.unwrap().is_empty());
}

fn key(cidr: &str) -> GrantKey {
    GrantKey { cidr: Cidr::parse(cidr).unwrap(), environment: dev() }
}

#[tokio::test]
async fn member_grants_count_against_the_group_quota_before_any_call() {
    let mut r = rig(&[EAST]);
    // The group holds two rules; three members would need three (nlb: one port each).
    r.settings.quota = portcullis_core::RuleQuota { ipv4: 2, ipv6: 2 };
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    let instances = (1..=3).map(|i| instance(&format!("i-{i}"), "InService", &format!("198.51.100.{i}"))).collect();
    asg.set_instances(EAST, "web", instances);
    let outcome = engine.member_event(MemberEvent::TrueUp { asg: None, region: None }, Interface::Cli).await.unwrap();
    // As for every grant (`core::plan`): a change that would overflow the group is not sent.
    assert!(ours(&r, EAST).is_empty(), "{:?}", ours(&r, EAST));
    assert!(outcome.failures.iter().any(|f| f.to_string().contains("sg-us-east-1")), "{:?}", outcome.failures);
    let authorizes = r.firewall.calls().iter().filter(|c| c.action == "AuthorizeSecurityGroupIngress").count();
    assert_eq!(authorizes, 0, "no call is made past the quota");
    // One member leaves: the rest fit, and go out.
    asg.set_instances(
        EAST,
        "web",
        (1..=2).map(|i| instance(&format!("i-{i}"), "InService", &format!("198.51.100.{i}"))).collect(),
    );
    let outcome = engine.member_event(MemberEvent::TrueUp { asg: None, region: None }, Interface::Cli).await.unwrap();
    assert!(outcome.failures.is_empty(), "{:?}", outcome.failures);
    assert_eq!(ours(&r, EAST), ["198.51.100.1/32", "198.51.100.2/32"]);
}

#[tokio::test]
async fn a_launch_never_takes_over_an_address_a_person_holds() {
    let r = rig(&[EAST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    r.engine.grants().add(crate::add("198.51.100.1", "1h")).await.unwrap();
    asg.set_instances(EAST, "web", vec![instance("i-1", "Pending:Wait", "198.51.100.1")]);
    let outcome = engine.member_event(launch("i-1"), Interface::Lambda).await.unwrap();
    assert_eq!(outcome.held_by_others.len(), 1, "{outcome:?}");
    assert_eq!(outcome.lifecycle, Some(LifecycleResult::Continue), "the address is admitted already");
    let grant = r.store.grant(&key("198.51.100.1")).await.unwrap().unwrap();
    assert_eq!((grant.source, grant.owner.id.as_str()), (Source::Manual, "alice"), "the person's grant is left as it was");
}

#[tokio::test]
async fn a_launch_for_an_instance_that_is_not_the_group_s_is_abandoned_and_audited() {
    let r = rig(&[EAST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Public)]);
    asg.set_instances(EAST, "web", vec![instance("i-1", "InService", "198.51.100.1")]);
    asg.set_instances(EAST, "batch", vec![instance("i-9", "InService", "198.51.100.9")]);
    let outcome = engine.member_event(launch("i-9"), Interface::Http).await.unwrap();
    assert_eq!(outcome.lifecycle, Some(LifecycleResult::Abandon));
    assert!(outcome.granted.is_empty() && ours(&r, EAST).is_empty(), "{outcome:?}");
    let audit = r.store.audit(None, 10).await.unwrap();
    let completed = audit.iter().find(|e| e.action == Action::LifecycleCompleted).unwrap();
    assert!(
        completed.reason.starts_with("ABANDON") && completed.reason.contains("is not a member of web"),
        "{}",
        completed.reason
    );
}

#[tokio::test]
async fn a_burst_of_launches_is_described_together() {
    let r = rig(&[EAST]);
    let (engine, asg) = members(&r, vec![source("web", AddressKind::Private)]);
    let instances: Vec<Instance> = (0..200)
        .map(|i| instance(&format!("i-{i:03}"), "Pending:Wait", &format!("198.51.{}.{}", 100 + i / 200, i % 200 + 1)))
        .collect();
    asg.set_instances(EAST, "web", instances);
    let launches = (0..200).map(|i| {
        let engine = engine.clone();
        tokio::spawn(async move { engine.member_event(launch(&format!("i-{i:03}")), Interface::Http).await })
    });
    for outcome in futures_join(launches).await {
        assert!(outcome.lifecycle.is_some(), "{outcome:?}");
    }
    let describes = asg.calls().iter().filter(|c| c.starts_with("DescribeInstances")).count();
    assert!(describes <= 2, "200 launches cost {describes} DescribeInstances calls");
}

async fn futures_join(
    tasks: impl Iterator<Item = tokio::task::JoinHandle<Result<portcullis_engine::MemberOutcome, portcullis_engine::EngineError>>>,
) -> Vec<portcullis_engine::MemberOutcome> {
    let mut out = Vec::new();
    for task in tasks.collect::<Vec<_>>() {
        out.push(task.await.unwrap().unwrap());
    }
    out
}
