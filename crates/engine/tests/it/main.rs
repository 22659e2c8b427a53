//! The engine over the in-memory firewall, on virtual time: fast and exact.

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis_core::{
    Action, Cidr, Description, Environment, Interface, Marker, ObservedRule, Policy, PortRange, PortSet, Protocol, RuleQuota,
    Source, TargetSelector, TargetSpec, Ttl,
};
use portcullis_engine::{AddRequest, Cause, Clock, Engine, ManualClock, MemoryFirewall, Requester, Scope, Settings};
use portcullis_store::{SqliteStore, Store};
use time::Duration;
use time::macros::datetime;
use tokio::sync::watch;

mod guard;
mod guard_race;
mod guard_settings;
mod members;
mod model;

fn dev() -> Environment {
    Environment::parse("dev").unwrap()
}

fn spec(region: &str) -> TargetSpec {
    TargetSpec {
        region: region.into(),
        selector: TargetSelector::Discovery { tag_key: "WhitelistManaged".into(), tag_value: "true".into() },
        environment: dev(),
        default_ports: PortSet::nlb(),
        endpoint_url: None,
        role_arn: None,
    }
}

struct Rig {
    engine: Arc<Engine>,
    store: Arc<dyn Store>,
    settings: Settings,
    firewall: Arc<MemoryFirewall>,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

fn rig(regions: &[&str]) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(datetime!(2026-06-01 00:00 UTC)));
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    for r in regions {
        firewall.put_group(r, &format!("sg-{r}"), &[("WhitelistManaged", "true")]);
    }
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("p.db")).unwrap());
    let settings = Settings {
        specs: regions.iter().map(|r| spec(r)).collect(),
        policies: BTreeMap::from([(dev(), Policy::default())]),
        marker: Marker::default(),
        quota: RuleQuota::default(),
    };
    let engine = Arc::new(Engine::new(store.clone(), firewall.clone(), clock.clone(), settings.clone()));
    Rig { engine, store, settings, firewall, clock, _dir: dir }
}

fn add(cidr: &str, ttl: &str) -> AddRequest {
    AddRequest {
        cidr: Cidr::parse(cidr).unwrap(),
        environment: dev(),
        ttl: Some(Ttl::parse(ttl).unwrap()),
        description: Description::parse("").unwrap(),
        source: Source::Manual,
        by: Requester::named("alice", Interface::Cli),
    }
}

#[tokio::test]
async fn a_failed_region_is_named_and_retried_by_the_periodic_reconcile() {
    let r = rig(&["us-east-1", "eu-west-1"]);
    r.firewall.set_region_failing("eu-west-1", true);
    let outcome = r.engine.grants().add(add("198.51.100.7", "1h")).await.unwrap();
    let report = outcome.report.expect("a new grant is applied");
    assert!(report.failed());
    assert!(report.failures().iter().any(|m| m.to_string().contains("eu-west-1")));
    // The retries for eu-west-1 do not hide what the first round did in us-east-1.
    let east = report.outcomes.iter().find(|o| o.target.region == "us-east-1").expect("us-east-1's outcome");
    assert_eq!(east.applied.map(|a| a.authorized), Some(1), "{east:?}");
    assert_eq!(r.firewall.rules("us-east-1", "sg-us-east-1").len(), 1);
    assert!(r.firewall.rules("eu-west-1", "sg-eu-west-1").is_empty());
    let status = r.engine.status(&Requester::named("test", Interface::Cli)).await.unwrap();
    assert!(status.last_reconcile.is_some_and(|l| !l.ok));

    r.firewall.set_region_failing("eu-west-1", false);
    let (stop, stopped) = watch::channel(false);
    let reconciler = tokio::spawn({
        let engine = r.engine.clone();
        async move { engine.run_reconciler(Duration::seconds(60), stopped).await }
    });
    // The first periodic pass runs at once; poll the firewall rather than sleep.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while r.firewall.rules("eu-west-1", "sg-eu-west-1").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the periodic reconcile did not retry the region");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(r.firewall.rules("eu-west-1", "sg-eu-west-1").len(), 1);
    stop.send(true).unwrap();
    reconciler.await.unwrap();
    let audit = r.store.audit(None, 10).await.unwrap();
    assert_eq!(audit[0].action, Action::DriftRepaired);
}

#[tokio::test]
async fn a_periodic_reconcile_that_closes_a_lapsed_grant_reports_no_repair() {
    let r = rig(&["us-east-1"]);
    r.engine.grants().add(add("198.51.100.7", "5m")).await.unwrap();
    r.engine.grants().add(add("198.51.100.8", "1h")).await.unwrap();
    // The first grant lapses before the sweeper runs; the second's rule is deleted by hand.
    r.clock.advance(Duration::minutes(6));
    let drifted = r.firewall.rules("us-east-1", "sg-us-east-1").into_iter().find(|o| o.raw_cidr == "198.51.100.8/32").unwrap();
    r.firewall.delete_rule("us-east-1", "sg-us-east-1", &drifted.raw_cidr, drifted.ports);
    let report = r.engine.grants().reconcile(Scope::All, Cause::Periodic).await.unwrap();
    assert_eq!((report.authorized, report.revoked), (1, 1), "{report:?}");
    let audit = r.store.audit(None, 10).await.unwrap();
    let repaired: Vec<_> = audit.iter().filter(|e| e.action == Action::DriftRepaired).map(|e| e.reason.as_str()).collect();
    assert_eq!(
        repaired,
        ["sg-us-east-1 (us-east-1): 1 restored, 0 removed, 0 descriptions updated"],
        "the lapsed grant's close is no repair"
    );
}

#[tokio::test]
async fn the_sweeper_revokes_at_the_exact_expiry_on_virtual_time() {
    let r = rig(&["us-east-1"]);
    r.engine.grants().add(add("198.51.100.7", "5m")).await.unwrap();
    let added_at = r.clock.now();
    let (stop, stopped) = watch::channel(false);
    let sweeper = tokio::spawn({
        let engine = r.engine.clone();
        async move { engine.run_sweeper(stopped).await }
    });
    // A second early, nothing is due.
    r.clock.advance(Duration::minutes(5) - Duration::seconds(1));
    assert!(r.engine.sweep().await.unwrap().expired.is_empty());
    assert_eq!(r.firewall.rules("us-east-1", "sg-us-east-1").len(), 1);
    r.clock.advance(Duration::seconds(1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !r.firewall.rules("us-east-1", "sg-us-east-1").is_empty() {
        assert!(std::time::Instant::now() < deadline, "the sweeper did not revoke the expired grant");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let revoked_at = r.firewall.calls().iter().find(|c| c.action == "RevokeSecurityGroupIngress").map(|c| c.at);
    stop.send(true).unwrap();
    sweeper.await.unwrap();
    assert_eq!(revoked_at, Some(added_at + Duration::minutes(5)), "revoked exactly at expires_at");
    let audit = r.store.audit(None, 10).await.unwrap();
    assert_eq!(audit[0].action, Action::Expired);
    assert!(r.store.grants(None).await.unwrap().is_empty());
}

#[tokio::test]
async fn a_hand_made_rule_on_a_granted_address_survives_add_refresh_and_expiry() {
    let r = rig(&["us-east-1"]);
    let hand = ObservedRule {
        cidr: Cidr::parse("198.51.100.7").unwrap(),
        raw_cidr: "198.51.100.7/32".into(),
        ports: PortRange::single(Protocol::Tcp, 22),
        description: Some("2020-01-01".into()),
    };
    r.firewall.put_rule("us-east-1", "sg-us-east-1", hand.clone());
    r.engine.grants().add(add("198.51.100.7", "5m")).await.unwrap();
    r.engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    r.clock.advance(Duration::minutes(6));
    r.engine.sweep().await.unwrap();
    assert_eq!(r.firewall.rules("us-east-1", "sg-us-east-1"), vec![hand]);
}

#[tokio::test]
async fn a_dry_run_reconcile_changes_nothing_and_audits_no_repair() {
    let r = rig(&["us-east-1"]);
    r.engine.grants().add(add("198.51.100.7", "1h")).await.unwrap();
    // Drift: our rule deleted by hand, then a dry-run refresh over the same groups.
    let ours = r.firewall.rules("us-east-1", "sg-us-east-1").remove(0);
    r.firewall.delete_rule("us-east-1", "sg-us-east-1", &ours.raw_cidr, ours.ports);
    let dry = Arc::new(portcullis_engine::DryRunFirewall::new(Some(r.firewall.clone()), Box::new(std::io::sink())));
    let engine = Engine::new(r.store.clone(), dry, r.clock.clone(), r.settings.clone());
    let report = engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    assert_eq!(report.authorized, 1, "the plan says what would change");
    assert!(report.outcomes.iter().all(|o| o.applied == Some(Default::default())), "{:?}", report.outcomes);
    assert!(r.firewall.rules("us-east-1", "sg-us-east-1").is_empty());
    let audit = r.store.audit(None, 10).await.unwrap();
    assert!(audit.iter().all(|e| e.action != Action::DriftRepaired), "{audit:?}");
}

/// The in-memory firewall, with `before` asked first on every apply: it may act on the
/// firewall as another writer would, or answer for it (an error EC2 would give); `None` applies.
struct BeforeApply<F> {
    inner: Arc<MemoryFirewall>,
    before: F,
}

type Answer = Option<Result<portcullis_engine::Applied, portcullis_engine::FirewallError>>;

#[async_trait::async_trait]
impl<F> portcullis_engine::Firewall for BeforeApply<F>
where
    F: Fn(&portcullis_core::GroupChange, &MemoryFirewall) -> Answer + Send + Sync,
{
    async fn observe(&self, specs: &[TargetSpec]) -> portcullis_engine::Observation {
        self.inner.observe(specs).await
    }

    async fn apply(
        &self,
        change: &portcullis_core::GroupChange,
    ) -> Result<portcullis_engine::Applied, portcullis_engine::FirewallError> {
        match (self.before)(change, &self.inner) {
            Some(answer) => answer,
            None => self.inner.apply(change).await,
        }
    }
}

/// Another writer that, just before this process's first apply, adds the same rules itself:
/// the apply then fails as EC2 answers a quota filled by them.
fn raced_once() -> impl Fn(&portcullis_core::GroupChange, &MemoryFirewall) -> Answer + Send + Sync {
    let raced = std::sync::atomic::AtomicBool::new(false);
    move |change, inner| {
        if change.authorize.is_empty() || raced.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return None;
        }
        for rule in &change.authorize {
            let observed = ObservedRule {
                cidr: rule.cidr,
                raw_cidr: rule.ec2_cidr.clone(),
                ports: rule.ports,
                description: Some(rule.description.clone()),
            };
            inner.put_rule(&change.target.region, &change.target.group_id, observed);
        }
        Some(Err(portcullis_engine::FirewallError::new(
            portcullis_engine::ErrorClass::Conflict,
            "the maximum number of rules per security group has been reached",
        )))
    }
}

#[tokio::test]
async fn a_batch_that_lost_to_a_concurrent_writer_is_observed_again_not_failed() {
    let r = rig(&["us-east-1"]);
    let raced = Arc::new(BeforeApply { inner: r.firewall.clone(), before: raced_once() });
    let engine = Engine::new(r.store.clone(), raced, r.clock.clone(), r.settings.clone());
    let outcome = engine.grants().add(add("198.51.100.8", "1h")).await.unwrap();
    let report = outcome.report.expect("applied");
    assert!(!report.failed(), "{:?}", report.failures());
    let rules = r.firewall.rules("us-east-1", "sg-us-east-1");
    assert_eq!(rules.len(), 1, "the rule the other writer added is the grant's, and are not added twice: {rules:?}");
    // The race did happen: the first apply lost it, and the second plan found nothing to add.
    let authorized = r.firewall.calls().iter().filter(|c| c.action == "AuthorizeSecurityGroupIngress").count();
    assert_eq!(authorized, 0, "{:?}", r.firewall.calls());
}

#[tokio::test(start_paused = true)]
async fn an_add_outlives_the_cancelled_caller_whose_apply_carried_it() {
    let r = rig(&["us-east-1"]);
    let held = Arc::new(portcullis_engine::HeldFirewall::new(r.firewall.clone()));
    let engine = Arc::new(Engine::new(r.store.clone(), held.clone(), r.clock.clone(), r.settings.clone()));
    let (observed, _release) = held.hold_next_observe();
    // Two adds inside one batching window: the first to take the gate carries both.
    let first = tokio::spawn({
        let engine = engine.clone();
        async move { engine.grants().add(add("198.51.100.1", "1h")).await }
    });
    // On virtual time: the first holds the gate in its batching window when the second queues,
    // so the first is the leader (the one whose observe is held).
    tokio::time::sleep(portcullis_engine::BATCH_WINDOW / 4).await;
    let second = tokio::spawn({
        let engine = engine.clone();
        async move { engine.grants().add(add("198.51.100.2", "1h")).await }
    });
    observed.await.unwrap();
    // The carrying caller hangs up while its apply is observing.
    first.abort();
    let outcome = second.await.unwrap().expect("the second add is answered, not lost with the first");
    assert!(outcome.report.is_some_and(|r| !r.failed()));
    let rules: Vec<String> = r.firewall.rules("us-east-1", "sg-us-east-1").iter().map(|r| r.raw_cidr.clone()).collect();
    assert!(rules.contains(&"198.51.100.2/32".to_string()), "{rules:?}");
}

fn lease_claim<'a>(name: &'a str, holder: &'a str, now: portcullis_core::Timestamp) -> portcullis_store::LeaseClaim<'a> {
    portcullis_store::LeaseClaim { name, holder, now, duration: Duration::minutes(1) }
}

fn describes(firewall: &MemoryFirewall) -> usize {
    firewall.calls().iter().filter(|c| c.action == "DescribeSecurityGroups").count()
}

/// Two processes on one SQLite file (each its own connection and instance name), one EC2: the
/// second's apply waits for the first's to end, so it never observes groups the first is changing.
#[tokio::test(start_paused = true)]
async fn two_processes_on_one_store_apply_an_environment_one_at_a_time() {
    let r = rig(&["us-east-1"]);
    let held = Arc::new(portcullis_engine::HeldFirewall::new(r.firewall.clone()));
    let first = Arc::new(Engine::new(r.store.clone(), held.clone(), r.clock.clone(), r.settings.clone()));
    let other: Arc<dyn Store> = Arc::new(SqliteStore::open(r._dir.path().join("p.db")).unwrap());
    assert_ne!(other.instance(), r.store.instance());
    let second = Engine::new(other, r.firewall.clone(), r.clock.clone(), r.settings.clone());

    let (observed, release) = held.hold_next_observe();
    let a = tokio::spawn({
        let first = first.clone();
        async move { first.grants().add(add("198.51.100.1", "1h")).await }
    });
    observed.await.unwrap();
    let b = tokio::spawn(async move { second.grants().add(add("198.51.100.2", "1h")).await });
    // Virtual time: the second process polls the lease meanwhile, and must not observe.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(describes(&r.firewall), 1, "the second process observed while the first was applying");
    assert!(!b.is_finished());

    release.send(()).unwrap();
    for (task, cidr) in [(a, "198.51.100.1/32"), (b, "198.51.100.2/32")] {
        let report = task.await.unwrap().unwrap().report.expect("applied");
        assert!(!report.failed(), "{cidr}: {:?}", report.failures());
    }
    let rules: Vec<String> = r.firewall.rules("us-east-1", "sg-us-east-1").iter().map(|r| r.raw_cidr.clone()).collect();
    assert_eq!(rules.len(), 2, "{rules:?}");
    assert_eq!(describes(&r.firewall), 2);
    // Both gave the lease up: a third process takes it at once.
    let name = portcullis_engine::apply_lease_name(&dev());
    assert!(r.store.acquire_lease(lease_claim(&name, "third", r.clock.now())).await.unwrap());
}

/// A peer that took the apply lease and died holding it delays an apply by the lock's wait,
/// never blocks it.
#[tokio::test(start_paused = true)]
async fn an_apply_lease_held_by_a_dead_peer_delays_an_apply_but_does_not_stop_it() {
    let r = rig(&["us-east-1"]);
    let name = portcullis_engine::apply_lease_name(&dev());
    assert!(r.store.acquire_lease(lease_claim(&name, "dead-peer", r.clock.now())).await.unwrap());
    let started = tokio::time::Instant::now();
    let report = r.engine.grants().add(add("198.51.100.7", "1h")).await.unwrap().report.expect("applied");
    assert!(!report.failed(), "{:?}", report.failures());
    assert!(started.elapsed() >= portcullis_engine::APPLY_LOCK_WAIT, "applied after {:?}", started.elapsed());
    assert_eq!(r.firewall.rules("us-east-1", "sg-us-east-1").len(), 1);
}

/// Revokes fail while `failing` is set (as a throttled or unavailable EC2 answers), each
/// failed attempt counted in `attempts`.
fn revokes_fail(
    failing: Arc<std::sync::atomic::AtomicBool>,
    attempts: Arc<std::sync::atomic::AtomicUsize>,
) -> impl Fn(&portcullis_core::GroupChange, &MemoryFirewall) -> Answer + Send + Sync {
    use std::sync::atomic::Ordering::SeqCst;
    move |change, _| {
        if change.revoke.is_empty() || !failing.load(SeqCst) {
            return None;
        }
        attempts.fetch_add(1, SeqCst);
        Some(Err(portcullis_engine::FirewallError::new(portcullis_engine::ErrorClass::Transient, "the service is unavailable")))
    }
}

#[tokio::test(start_paused = true)]
async fn an_expiry_whose_revoke_fails_stays_overdue_and_is_retried_until_the_rule_is_gone() {
    use std::sync::atomic::Ordering::SeqCst;
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(portcullis_engine::TokioClock::new(datetime!(2026-06-01 00:00 UTC)));
    let memory = Arc::new(MemoryFirewall::new(clock.clone()));
    memory.put_group("us-east-1", "sg-us-east-1", &[("WhitelistManaged", "true")]);
    let (failing, attempts) =
        (Arc::new(std::sync::atomic::AtomicBool::new(false)), Arc::new(std::sync::atomic::AtomicUsize::new(0)));
    let firewall = Arc::new(BeforeApply { inner: memory.clone(), before: revokes_fail(failing.clone(), attempts.clone()) });
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("p.db")).unwrap());
    let settings = Settings {
        specs: vec![spec("us-east-1")],
        policies: BTreeMap::from([(dev(), Policy::default())]),
        marker: Marker::default(),
        quota: RuleQuota::default(),
    };
    let engine = Arc::new(Engine::new(store.clone(), firewall.clone(), clock.clone(), settings));
    engine.grants().add(add("198.51.100.7", "5m")).await.unwrap();
    failing.store(true, SeqCst);
    let (stop, stopped) = watch::channel(false);
    let sweeper = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_sweeper(stopped).await }
    });
    let who = Requester::named("test", Interface::Cli);

    // A minute past the expiry, every revoke has failed: the grant is overdue, not expired.
    tokio::time::sleep(std::time::Duration::from_secs(6 * 60)).await;
    assert_eq!(memory.rules("us-east-1", "sg-us-east-1").len(), 1);
    let overdue = engine.status(&who).await.unwrap().overdue;
    assert_eq!(overdue.iter().map(|g| g.cidr.to_string()).collect::<Vec<_>>(), ["198.51.100.7/32"]);
    assert!(store.audit(None, 100).await.unwrap().iter().all(|e| e.action != Action::Expired));
    let attempts = attempts.load(SeqCst);
    // Retried with a backoff (at most every 5 s, four rounds each), not in a hot loop.
    assert!((8..=4 * 60).contains(&attempts), "{attempts} revoke attempts in a minute");

    // EC2 answers again: the next retry, within 5 s, revokes it and records the expiry once.
    failing.store(false, SeqCst);
    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    assert!(memory.rules("us-east-1", "sg-us-east-1").is_empty());
    assert!(engine.status(&who).await.unwrap().overdue.is_empty());
    let expired = store.audit(None, 100).await.unwrap().into_iter().filter(|e| e.action == Action::Expired).count();
    assert_eq!(expired, 1);
    stop.send(true).unwrap();
    sweeper.await.unwrap();
}

/// The registry's text after `metrics` were registered in it.
fn metrics_text(engine: &Engine) -> String {
    let mut registry = prometheus_client::registry::Registry::default();
    engine.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::prometheus_text::encode(&mut text, &registry).unwrap();
    text
}

#[tokio::test]
async fn metrics_measure_applies_by_outcome_and_expiry_lag_on_virtual_time() {
    let r = rig(&["us-east-1", "eu-west-1"]);
    r.engine.grants().add(add("198.51.100.7", "1m")).await.unwrap();
    r.firewall.set_region_failing("eu-west-1", true);
    r.engine.grants().add(add("198.51.100.8", "1h")).await.unwrap();
    r.firewall.set_region_failing("eu-west-1", false);
    let text = metrics_text(&r.engine);
    assert!(text.contains(r#"portcullis_reconcile_duration_seconds_count{cause="change",outcome="ok"} 1"#), "{text}");
    assert!(text.contains(r#"portcullis_reconcile_duration_seconds_count{cause="change",outcome="failed"} 1"#), "{text}");
    assert!(text.contains("portcullis_expiry_lag_seconds_count 0"), "nothing expired yet: {text}");

    // The sweep runs 1.5 s after the first grant's expiry (virtual time): that is its lag.
    r.clock.advance(Duration::milliseconds(61_500));
    let swept = r.engine.sweep().await.unwrap();
    assert_eq!(swept.expired.len(), 1);
    let text = metrics_text(&r.engine);
    assert!(text.contains("portcullis_expiry_lag_seconds_count 1"), "{text}");
    assert!(text.contains("portcullis_expiry_lag_seconds_sum 1.5"), "{text}");
    assert!(text.contains(r#"portcullis_expiry_lag_seconds_bucket{le="1.024"} 0"#), "{text}");
    assert!(text.contains(r#"portcullis_expiry_lag_seconds_bucket{le="2.048"} 1"#), "{text}");
    assert!(text.contains(r#"portcullis_reconcile_duration_seconds_count{cause="sweep",outcome="ok"} 1"#), "{text}");
}
