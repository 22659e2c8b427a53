//! The engine in-process against moto: call counts, virtual time, races and partial failure.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis_aws::Ec2Firewall;
use portcullis_core::{
    Cidr, Description, Environment, Interface, Marker, Policy, PortSet, RuleQuota, Source, TargetSelector, TargetSpec, Ttl,
};
use portcullis_engine::{AddRequest, Cause, Clock, Engine, Firewall, HeldFirewall, ManualClock, Requester, Scope, Settings};
use portcullis_store::{SqliteStore, Store};
use tokio::sync::watch;

use crate::support::{REGION, World, eventually, sdk_config};

fn dev() -> Environment {
    Environment::parse("dev").unwrap()
}

fn settings(w: &World, extra: Vec<TargetSpec>) -> Settings {
    let mut specs = vec![TargetSpec {
        region: REGION.into(),
        selector: TargetSelector::Discovery { tag_key: w.tag_key.clone(), tag_value: "true".into() },
        environment: dev(),
        default_ports: PortSet::alb(),
        endpoint_url: None,
        role_arn: None,
    }];
    specs.extend(extra);
    Settings {
        specs,
        policies: BTreeMap::from([(
            dev(),
            Policy::new(portcullis_core::PolicyRules { max_grants_per_user: 100, ..Default::default() }).unwrap(),
        )]),
        marker: Marker::default(),
        quota: RuleQuota::default(),
    }
}

fn request(cidr: &str, ttl: &str) -> AddRequest {
    AddRequest {
        cidr: Cidr::parse(cidr).unwrap(),
        environment: dev(),
        ttl: Some(Ttl::parse(ttl).unwrap()),
        description: Description::parse("test").unwrap(),
        source: Source::Manual,
        by: Requester::named("tester", Interface::Cli),
    }
}

async fn engine(w: &World, firewall: Arc<dyn Firewall>, clock: Arc<dyn Clock>, extra: Vec<TargetSpec>) -> Engine {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(w.store_path()).unwrap());
    Engine::new(store, firewall, clock, settings(w, extra))
}

#[tokio::test]
async fn twenty_grants_onto_a_newly_tagged_group_cost_one_authorize() {
    let w = World::new().await;
    let sdk = sdk_config().await;
    let clock = Arc::new(portcullis_engine::SystemClock);
    let adder = engine(&w, Arc::new(Ec2Firewall::new(&sdk)), clock.clone(), vec![]).await;
    for i in 0..20 {
        adder.grants().add(request(&format!("203.0.113.{i}"), "1h")).await.unwrap();
    }
    let group = w.group(true, &[]).await;

    let counted = Arc::new(Ec2Firewall::new(&sdk));
    let reconciler = engine(&w, counted.clone(), clock, vec![]).await;
    let report = reconciler.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    assert_eq!(report.authorized, 40);
    assert_eq!(w.rules(&group).await.len(), 40);
    let calls = counted.calls().snapshot();
    assert_eq!(calls.get("AuthorizeSecurityGroupIngress"), Some(&1), "{calls:?}");
    assert_eq!(calls.get("DescribeSecurityGroups"), Some(&1), "{calls:?}");
    assert_eq!(calls.len(), 2, "{calls:?}");

    // Level-triggered: the next reconcile is one describe and nothing else.
    reconciler.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    assert_eq!(counted.calls().total(), 3);
}

#[tokio::test]
async fn expiry_on_virtual_time_revokes_exactly_when_due() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let engine = Arc::new(engine(&w, Arc::new(Ec2Firewall::new(&sdk_config().await)), clock.clone(), vec![]).await);
    engine.grants().add(request("198.51.100.7", "30d")).await.unwrap();
    engine.grants().add(request("198.51.100.8", "31d")).await.unwrap();
    let (stop, stopped) = watch::channel(false);
    let sweeper = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_sweeper(stopped).await }
    });

    clock.advance(time::Duration::days(30) - time::Duration::seconds(1));
    // One second early: a sweep changes nothing.
    assert!(engine.sweep().await.unwrap().expired.is_empty());
    assert_eq!(w.rules(&group).await.len(), 4);

    clock.advance(time::Duration::seconds(1));
    eventually(Duration::from_secs(30), "the sweeper to revoke the expired grant", || async {
        !w.keys(&group).await.iter().any(|(c, _)| c == "198.51.100.7/32")
    })
    .await;
    assert_eq!(w.keys(&group).await.len(), 2, "the other grant stays");
    eventually(Duration::from_secs(30), "the expiry to be recorded", || async {
        engine
            .grants()
            .audit(&portcullis_engine::AuditQuery::newest(None, 10), &admin())
            .await
            .unwrap()
            .iter()
            .any(|e| e.action == portcullis_core::Action::Expired)
    })
    .await;
    stop.send(true).unwrap();
    sweeper.await.unwrap();
}

#[tokio::test]
async fn a_reconcile_racing_an_add_never_revokes_the_new_rule() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let sdk = sdk_config().await;
    let clock: Arc<dyn Clock> = Arc::new(portcullis_engine::SystemClock);
    let held = Arc::new(HeldFirewall::new(Arc::new(Ec2Firewall::new(&sdk))));
    // One store handle for both, so the adder is not kept out by the reconcile's apply lease:
    // this is the race the lease cannot always prevent (it is best effort), and the order of
    // observe and read must make harmless.
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(w.store_path()).unwrap());
    let reconciler = Arc::new(Engine::new(store.clone(), held.clone(), clock.clone(), settings(&w, vec![])));
    let adder = Engine::new(store, Arc::new(Ec2Firewall::new(&sdk)), clock, settings(&w, vec![]));
    // Give the store history for dev, so that revoking is allowed at all.
    adder.grants().add(request("203.0.113.1", "1h")).await.unwrap();

    // The reconcile stops as its observe begins; meanwhile another writer stores and applies a
    // grant, so the observation holds the new rule. A reconcile that read the store before it
    // observed would plan that rule as ours without a grant, and revoke it.
    let (reached, release) = held.hold_before_next_observe();
    let racing = tokio::spawn({
        let reconciler = reconciler.clone();
        async move { reconciler.grants().reconcile(Scope::All, Cause::Periodic).await.unwrap() }
    });
    reached.await.unwrap();
    adder.grants().add(request("198.51.100.7", "1h")).await.unwrap();
    assert!(w.keys(&group).await.contains(&("198.51.100.7/32".to_string(), 80)));
    release.send(()).unwrap();
    let report = racing.await.unwrap();
    assert_eq!(report.revoked, 0, "{report:?}");
    let keys = w.keys(&group).await;
    assert!(
        keys.contains(&("198.51.100.7/32".to_string(), 80)) && keys.contains(&("198.51.100.7/32".to_string(), 443)),
        "{keys:?}"
    );
}

#[tokio::test]
async fn a_failing_region_does_not_block_the_others() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let broken = TargetSpec {
        region: "eu-west-1".into(),
        selector: TargetSelector::Ids(vec![portcullis_core::GroupId::parse("sg-0123456789abcdef0").unwrap()]),
        environment: dev(),
        default_ports: PortSet::alb(),
        endpoint_url: Some(format!("http://{closed}")),
        role_arn: None,
    };
    let clock = Arc::new(portcullis_engine::SystemClock);
    let engine = engine(&w, Arc::new(Ec2Firewall::new(&sdk_config().await)), clock, vec![broken]).await;
    let outcome = engine.grants().add(request("198.51.100.7", "1h")).await.unwrap();
    let report = outcome.report.expect("a new grant is applied");
    assert!(report.failed());
    let failures = portcullis_engine::Failure::lines(&report.failures());
    assert!(failures.iter().any(|f| f.contains("eu-west-1")), "{failures:?}");
    assert_eq!(w.keys(&group).await.len(), 2, "the reachable group is still updated");
    assert_eq!(
        engine.grants().live_grants(&portcullis_engine::Scope::All, &admin()).await.unwrap().len(),
        1,
        "the grant stays stored"
    );
}

#[tokio::test]
async fn an_unchanged_refresh_costs_no_ec2_call() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let firewall = Arc::new(Ec2Firewall::new(&sdk_config().await));
    let engine = engine(&w, firewall.clone(), Arc::new(portcullis_engine::SystemClock), vec![]).await;
    engine.grants().add(request("198.51.100.7", "1h")).await.unwrap();
    let before = firewall.calls().total();
    let outcome = engine.grants().add(request("198.51.100.7", "2h")).await.unwrap();
    assert!(outcome.refreshed && outcome.report.is_none());
    assert_eq!(firewall.calls().total(), before, "{:?}", firewall.calls().snapshot());
    assert_eq!(w.keys(&group).await.len(), 2);
}

/// A reader with no credential limits, as the CLI is.
fn admin() -> portcullis_engine::Requester {
    portcullis_engine::Requester::named("test", portcullis_core::Interface::Cli)
}
