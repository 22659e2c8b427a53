//! Figures for the README (`scripts/bench`): API calls and wall time of a reconcile on moto
//! beside a naive one-call-per-rule baseline, 1,000 grants through a prefix list beside
//! per-group rules, and expiry lag (`plan()` time: `portcullis-core`'s
//! `plan` bench).
//! Prints figures; asserts nothing about time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::types::{IpPermission, IpRange, Tag};
use portcullis_aws::Ec2Firewall;
use portcullis_core::{
    Cidr, Description, Environment, Grant, Interface, Marker, Owner, Policy, PolicyRules, PortSet, RuleQuota, Source, TargetSpec,
    Timestamp,
};
use portcullis_engine::{Cause, Clock, Engine, MemoryFirewall, Scope, Settings, SystemClock};
use portcullis_store::{Actor, SqliteStore, Upsert};

#[path = "common/moto.rs"]
mod moto;
use moto::REGION;
use portcullis_store::prelude::*;

fn dev() -> Environment {
    Environment::parse("dev").unwrap()
}

fn grant(i: u32, now: Timestamp, expires_at: Timestamp) -> Grant {
    Grant {
        cidr: Cidr::parse(&format!("{}.{}.{}.{}", 11 + (i >> 16), (i >> 8) & 255, i & 255, 1)).unwrap(),
        environment: dev(),
        owner: Owner::named(&format!("user{}", i % 1000)),
        source: Source::Manual,
        description: Description::parse("bench").unwrap(),
        created_at: now,
        expires_at: Some(expires_at),
    }
}

fn settings(specs: Vec<TargetSpec>) -> Settings {
    Settings {
        specs,
        policies: BTreeMap::from([(
            dev(),
            Policy::new(PolicyRules { max_grants_per_user: 100_000, ..PolicyRules::default() }).expect("a valid policy"),
        )]),
        marker: Marker::default(),
        quota: RuleQuota::default(),
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn store_grants(store: &SqliteStore, grants: Vec<Grant>) {
    for g in grants {
        let actor = Actor { name: g.owner.name.clone(), interface: Interface::Cli };
        store.upsert(Upsert { grant: g, actor, max_grants_per_user: 100_000 }).await.unwrap();
    }
}

async fn reconcile_on_moto(moto: &str) {
    let sdk = moto::sdk(moto).await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let tag = format!("pc-bench-{}", std::process::id());
    let make_groups = async |n: usize, tagged: bool| {
        let mut ids = Vec::new();
        for i in 0..n {
            let id = ec2
                .create_security_group()
                .group_name(format!("{tag}-{tagged}-{i}"))
                .description("bench")
                .send()
                .await
                .unwrap()
                .group_id
                .unwrap();
            if tagged {
                ec2.create_tags().resources(&id).tags(Tag::builder().key(&tag).value("true").build()).send().await.unwrap();
            }
            ids.push(id);
        }
        ids
    };
    let _managed = make_groups(20, true).await;
    let naive_groups = make_groups(20, false).await;

    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("bench.db")).unwrap();
    let now = Timestamp::now_utc();
    store_grants(&store, (0..25).map(|i| grant(i, now, now + time::Duration::hours(1))).collect()).await;
    let firewall = Arc::new(Ec2Firewall::new(&sdk));
    let spec = moto::discovered(&tag, PortSet::alb());
    let engine = Engine::new(Arc::new(store), firewall.clone(), Arc::new(SystemClock), settings(vec![spec]));
    let start = Instant::now();
    let report = engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    let took = start.elapsed();
    assert_eq!(report.authorized, 1000, "{:?}", report.failures());
    println!("reconcile: 25 grants onto 20 groups x 2 ports (1,000 rules) on moto");
    println!("  portcullis: {took:>10.2?}  calls {:?}", firewall.calls().snapshot());
    let before = firewall.calls().snapshot();
    let start = Instant::now();
    let again = engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    let took = start.elapsed();
    let calls = firewall.calls().since(&before);
    // A reconcile with nothing to do observes and changes nothing: no call but the describe.
    assert_eq!((again.authorized, again.revoked), (0, 0), "{again:?}");
    assert!(calls.keys().all(|action| action.starts_with("Describe")), "a no-op reconcile made changes: {calls:?}");
    println!("  again, nothing to do: {took:>10.2?}  calls {calls:?}");

    let start = Instant::now();
    let mut calls = 0;
    for group in &naive_groups {
        for i in 0..25 {
            let cidr = grant(i, now, now).cidr.to_string();
            for port in [80, 443] {
                let perm = IpPermission::builder()
                    .ip_protocol("tcp")
                    .from_port(port)
                    .to_port(port)
                    .ip_ranges(IpRange::builder().cidr_ip(&cidr).description("naive").build())
                    .build();
                ec2.authorize_security_group_ingress().group_id(group).ip_permissions(perm).send().await.unwrap();
                calls += 1;
            }
        }
    }
    println!("  naive baseline, one call per rule: {:>10.2?}  AuthorizeSecurityGroupIngress {calls}", start.elapsed());
}

async fn expiry_lag() {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    firewall.put_group(REGION, "sg-lag", &[("WhitelistManaged", "true")]);
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("lag.db")).unwrap();
    let now = Timestamp::now_utc();
    let start = now + time::Duration::seconds(2);
    let grants: Vec<Grant> = (0..200).map(|i| grant(i, now, start + time::Duration::milliseconds(i64::from(i) * 50))).collect();
    let due: BTreeMap<Cidr, Timestamp> = grants.iter().map(|g| (g.cidr, g.expires_at.unwrap())).collect();
    store_grants(&store, grants).await;
    let spec = moto::discovered("WhitelistManaged", PortSet::nlb());
    // One in-memory group holds all 200 rules; it has no EC2 quota to respect.
    let quota = RuleQuota { ipv4: 1000, ipv6: 1000 };
    let engine = Arc::new(Engine::new(Arc::new(store), firewall.clone(), clock, Settings { quota, ..settings(vec![spec]) }));
    engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    assert_eq!(firewall.rules(REGION, "sg-lag").len(), 200);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_sweeper(stopped).await }
    });
    let deadline = Instant::now() + std::time::Duration::from_secs(60);
    while !firewall.rules(REGION, "sg-lag").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    stop.send(true).unwrap();
    sweeper.await.unwrap();
    let mut lags: Vec<f64> = Vec::new();
    for call in firewall.calls().iter().filter(|c| c.action == "RevokeSecurityGroupIngress") {
        for rule in &call.rules {
            lags.push((call.at - due[&rule.cidr]).as_seconds_f64() * 1000.0);
        }
    }
    lags.sort_by(f64::total_cmp);
    println!("expiry lag (revoke time - expires_at), 200 grants expiring over 10 s, in-memory firewall");
    println!(
        "  revoked {}  p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms  min {:.1} ms",
        lags.len(),
        percentile(&lags, 0.5),
        percentile(&lags, 0.99),
        lags.last().unwrap(),
        lags.first().unwrap()
    );
}

/// 1,000 grants to 50 groups: through one managed prefix list the groups reference (on moto),
/// beside per-group rules (in memory with the quota lifted: EC2 would hold 60 a group).
async fn prefix_list_vs_rules(moto: &str) {
    let sdk = moto::sdk(moto).await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let list = ec2
        .create_managed_prefix_list()
        .prefix_list_name(format!("pc-bench-{}", std::process::id()))
        .address_family("IPv4")
        .max_entries(1_000)
        .send()
        .await
        .unwrap()
        .prefix_list
        .and_then(|l| l.prefix_list_id)
        .unwrap();
    let now = Timestamp::now_utc();
    let grants = || (0..1_000).map(|i| grant(i, now, now + time::Duration::hours(1))).collect::<Vec<_>>();
    let dir = tempfile::tempdir().unwrap();

    let store = SqliteStore::open(dir.path().join("list.db")).unwrap();
    store_grants(&store, grants()).await;
    let firewall = Arc::new(Ec2Firewall::new(&sdk));
    let spec = TargetSpec {
        selector: portcullis_core::TargetSelector::PrefixLists(vec![portcullis_core::PrefixListId::parse(&list).unwrap()]),
        ..moto::discovered("unused", PortSet::alb())
    };
    let engine = Engine::new(Arc::new(store), firewall.clone(), Arc::new(SystemClock), settings(vec![spec]));
    let start = Instant::now();
    let report = engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    let list_took = start.elapsed();
    assert_eq!(report.authorized, 1_000, "{:?}", report.failures());
    let list_calls = firewall.calls().snapshot();

    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let memory = Arc::new(MemoryFirewall::new(clock.clone()));
    for i in 0..50 {
        memory.put_group(REGION, &format!("sg-bench{i:02}"), &[("WhitelistManaged", "true")]);
    }
    let store = SqliteStore::open(dir.path().join("rules.db")).unwrap();
    store_grants(&store, grants()).await;
    let lifted = RuleQuota { ipv4: 10_000, ipv6: 10_000 };
    let spec = moto::discovered("WhitelistManaged", PortSet::nlb());
    let engine = Engine::new(Arc::new(store), memory.clone(), clock, Settings { quota: lifted, ..settings(vec![spec]) });
    let report = engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    let authorize_calls = memory.calls().iter().filter(|c| c.action == "AuthorizeSecurityGroupIngress").count();

    println!("1,000 grants to 50 groups");
    println!("  through one prefix list (moto):  {list_took:>9.2?}  calls {list_calls:?}  (list entries 1,000)");
    println!(
        "  per-group rules (memory, quota lifted): AuthorizeSecurityGroupIngress {authorize_calls} carrying {} rules; \
         at EC2's 60 a group every one of the 50 groups overflows",
        report.authorized
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match std::env::var("PORTCULLIS_TEST_MOTO") {
        Ok(moto) => {
            runtime.block_on(reconcile_on_moto(&moto));
            runtime.block_on(prefix_list_vs_rules(&moto));
        }
        Err(_) => println!("reconcile on moto: skipped (PORTCULLIS_TEST_MOTO is not set; run scripts/bench)"),
    }
    runtime.block_on(expiry_lag());
}
