//! Managed prefix lists as targets, on moto and on the in-memory firewall: grants become
//! entries under our marker, a hand-made entry is never touched, `MaxEntries` is checked before
//! any call, 1,000 grants go out in 10 `ModifyManagedPrefixList` calls, and a list another
//! writer changed since it was observed (moto does not enforce `CurrentVersion`; the in-memory
//! firewall does) is observed again and planned anew.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_ec2::types::AddPrefixListEntry;
use portcullis_aws::Ec2Firewall;
use portcullis_core::{
    Cidr, Description, Environment, Family, Grant, Interface, Marker, ObservedRule, Owner, Policy, PolicyRules, PortRange,
    PortSet, PrefixListId, Rejection, RuleQuota, Source, TargetSelector, TargetSpec, Timestamp, Ttl,
};
use portcullis_engine::{
    AddRequest, Cause, Clock, Engine, EngineError, Firewall, HeldFirewall, ManualClock, MemoryFirewall, Requester, Scope,
    Settings,
};
use portcullis_store::{Actor, SqliteStore, Upsert};

use crate::support::{REGION, World, sdk_config, within};
use portcullis_core::PolicyRefusal;
use portcullis_store::prelude::*;

fn dev() -> Environment {
    Environment::parse("dev").unwrap()
}

fn engine(w: &World, firewall: Arc<dyn Firewall>, clock: Arc<dyn Clock>, list: &str) -> (Engine, Arc<SqliteStore>) {
    engine_by(w, firewall, clock, TargetSelector::PrefixLists(vec![PrefixListId::parse(list).unwrap()]))
}

fn engine_by(
    w: &World,
    firewall: Arc<dyn Firewall>,
    clock: Arc<dyn Clock>,
    selector: TargetSelector,
) -> (Engine, Arc<SqliteStore>) {
    let spec = TargetSpec {
        region: REGION.into(),
        selector,
        environment: dev(),
        default_ports: PortSet::alb(),
        endpoint_url: None,
        role_arn: None,
    };
    let policy = Policy::new(PolicyRules { max_grants_per_user: 10_000, ..Default::default() }).unwrap();
    let settings = Settings {
        specs: vec![spec],
        policies: BTreeMap::from([(dev(), policy)]),
        marker: Marker::default(),
        quota: RuleQuota::default(),
    };
    let store = Arc::new(SqliteStore::open(w.store_path()).unwrap());
    (Engine::new(store.clone(), firewall, clock, settings), store)
}

fn request(cidr: &str) -> AddRequest {
    AddRequest {
        cidr: Cidr::parse(cidr).unwrap(),
        environment: dev(),
        ttl: Some(Ttl::parse("1h").unwrap()),
        description: Description::parse("laptop").unwrap(),
        source: Source::Manual,
        by: Requester::named("alice", Interface::Cli),
    }
}

/// A list on moto, IPv4, with one hand-made entry.
async fn list_on_moto(w: &World, max_entries: i32) -> String {
    list_tagged(w, max_entries, &[]).await
}

async fn list_tagged(w: &World, max_entries: i32, tags: &[(&str, &str)]) -> String {
    use aws_sdk_ec2::types::{ResourceType, Tag, TagSpecification};
    // A tag specification must name a tag: none for an untagged list.
    let tags = (!tags.is_empty()).then(|| {
        TagSpecification::builder()
            .resource_type(ResourceType::PrefixList)
            .set_tags(Some(tags.iter().map(|(k, v)| Tag::builder().key(*k).value(*v).build()).collect()))
            .build()
    });
    let hand = AddPrefixListEntry::builder().cidr("192.0.2.0/24").description("office, by hand").build();
    let out = w
        .ec2
        .create_managed_prefix_list()
        .prefix_list_name(crate::support::unique("pl"))
        .address_family("IPv4")
        .max_entries(max_entries)
        .entries(hand)
        .set_tag_specifications(tags.map(|t| vec![t]))
        .send()
        .await
        .unwrap();
    out.prefix_list.and_then(|l| l.prefix_list_id).unwrap()
}

async fn entries(w: &World, list: &str) -> Vec<(String, Option<String>)> {
    let out = w.ec2.get_managed_prefix_list_entries().prefix_list_id(list).send().await.unwrap();
    let mut entries: Vec<_> =
        out.entries().iter().map(|e| (e.cidr().unwrap_or_default().to_string(), e.description().map(str::to_string))).collect();
    entries.sort();
    entries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_are_entries_under_our_marker_and_a_hand_made_entry_is_never_touched() {
    within(async {
        let w = World::new().await;
        let list = list_on_moto(&w, 3).await;
        let firewall = Arc::new(Ec2Firewall::new(&sdk_config().await));
        let (engine, _) = engine(&w, firewall.clone(), Arc::new(portcullis_engine::SystemClock), &list);

        engine.grants().add(request("198.51.100.1")).await.unwrap();
        let err = engine.grants().add(request("2001:db8::1")).await.unwrap_err();
        assert!(matches!(err, EngineError::Rejected(Rejection::Policy(PolicyRefusal::FamilyNotTaken { .. }))), "{err}");
        assert!(err.to_string().contains(&format!("its prefix lists: {list} (us-east-1, IPv4)")), "{err}");
        let by = Requester::named("alice", Interface::Cli);
        let stored = engine.grants().live_grants(&portcullis_engine::Scope::All, &by).await.unwrap();
        assert!(stored.iter().all(|g| g.cidr.to_string() != "2001:db8::1/128"), "nothing was stored");
        engine.grants().add(request("198.51.100.2")).await.unwrap();
        assert_eq!(
            entries(&w, &list).await,
            [
                ("192.0.2.0/24".to_string(), Some("office, by hand".to_string())),
                ("198.51.100.1/32".into(), Some("pc:dev alice: laptop".into())),
                ("198.51.100.2/32".into(), Some("pc:dev alice: laptop".into())),
            ],
            "an IPv6 grant is not an entry of an IPv4 list"
        );
        let calls = firewall.calls().snapshot();
        assert!(
            !calls.contains_key("AuthorizeSecurityGroupIngress") && calls.contains_key("ModifyManagedPrefixList"),
            "{calls:?}"
        );

        let before = firewall.calls().get("ModifyManagedPrefixList");
        let err = engine.grants().add(request("198.51.100.3")).await.unwrap_err();
        assert!(
            matches!(err, EngineError::Rejected(Rejection::Policy(PolicyRefusal::ListFull { .. }))),
            "MaxEntries 3 is full: {err}"
        );
        let expected = format!("prefix list {list} (us-east-1) is full: it would hold 4 IPv4 entries, over its MaxEntries of 3");
        assert!(err.to_string().starts_with(&expected), "a list is named as a list: {err}");
        assert_eq!(firewall.calls().get("ModifyManagedPrefixList"), before, "refused before any call");

        let key = portcullis_core::GrantKey { cidr: Cidr::parse("198.51.100.1").unwrap(), environment: dev() };
        engine.grants().remove(&key, &Requester::named("alice", Interface::Cli)).await.unwrap();
        let left: Vec<String> = entries(&w, &list).await.into_iter().map(|e| e.0).collect();
        assert_eq!(left, ["192.0.2.0/24", "198.51.100.2/32"]);
        // A new description: EC2 documents no way to change it but removing the entry and adding
        // it again, which would cut access in between. The entry stays as it is, and is reported.
        let before = firewall.calls().get("ModifyManagedPrefixList");
        let mut renamed = request("198.51.100.2");
        renamed.description = Description::parse("home").unwrap();
        engine.grants().add(renamed).await.unwrap();
        assert_eq!(entries(&w, &list).await[1], ("198.51.100.2/32".into(), Some("pc:dev alice: laptop".into())));
        assert_eq!(firewall.calls().get("ModifyManagedPrefixList"), before, "the entry was never removed");
        let report = engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
        let stale: Vec<_> = report.stale_descriptions.iter().map(|s| (s.cidr.as_str(), s.wanted.as_str())).collect();
        assert_eq!(stale, [("198.51.100.2/32", "pc:dev alice: home")], "reported, not replaced");
        assert_eq!(
            (report.authorized, report.revoked, report.unowned_left_alone),
            (0, 0, 1),
            "settled; the hand-made entry is foreign"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_grants_reach_a_list_in_ten_calls() {
    within(async {
        let w = World::new().await;
        let list = list_on_moto(&w, 1_001).await;
        let firewall = Arc::new(Ec2Firewall::new(&sdk_config().await));
        let (engine, store) = engine(&w, firewall.clone(), Arc::new(portcullis_engine::SystemClock), &list);
        let now = Timestamp::now_utc();
        for i in 0..1_000u32 {
            let grant = Grant {
                cidr: Cidr::parse(&format!("10.{}.{}.1", i >> 8, i & 255)).unwrap(),
                environment: dev(),
                owner: Owner::named("ci"),
                source: Source::Manual,
                description: Description::parse("runner").unwrap(),
                created_at: now,
                expires_at: Some(now + time::Duration::hours(1)),
            };
            let actor = Actor { name: "ci".into(), interface: Interface::Cli };
            store.upsert(Upsert { grant, actor, max_grants_per_user: 10_000 }).await.unwrap();
        }
        let report = engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
        assert_eq!(report.authorized, 1_000, "{:?}", report.failures());
        assert_eq!(firewall.calls().get("ModifyManagedPrefixList"), 10, "{:?}", firewall.calls().snapshot());
        assert_eq!(entries(&w, &list).await.len(), 1_001);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_changed_since_it_was_observed_is_observed_again_and_planned_anew() {
    within(async {
        let w = World::new().await;
        let clock = Arc::new(ManualClock::new(Timestamp::now_utc()));
        let memory = Arc::new(MemoryFirewall::new(clock.clone()));
        memory.put_prefix_list(REGION, "pl-0mem", 10, Family::Ipv4);
        let held = Arc::new(HeldFirewall::new(memory.clone()));
        let (engine, _) = engine(&w, held.clone(), clock, "pl-0mem");
        let engine = Arc::new(engine);

        // The add observes the list at version 1; someone adds an entry by hand before it applies.
        let (reached, release) = held.hold_next_observe();
        let adding = tokio::spawn({
            let engine = engine.clone();
            async move { engine.grants().add(request("198.51.100.1")).await }
        });
        reached.await.unwrap();
        let hand = ObservedRule {
            cidr: Cidr::parse("192.0.2.0/24").unwrap(),
            raw_cidr: "192.0.2.0/24".into(),
            ports: PortRange::ENTRY,
            description: Some("by hand".into()),
        };
        memory.put_rule(REGION, "pl-0mem", hand);
        release.send(()).unwrap();
        let outcome = adding.await.unwrap().unwrap();
        assert!(outcome.report.is_some_and(|r| r.authorized == 1));

        let calls: Vec<&str> = memory.calls().iter().map(|c| c.action).collect();
        assert_eq!(
            calls,
            ["DescribeSecurityGroups", portcullis_engine::REFUSED_VERSION, "DescribeSecurityGroups", "ModifyManagedPrefixList"],
            "refused over the old version; observed again, planned anew, and applied over the new one"
        );
        let mut rules: Vec<(String, Option<String>)> =
            memory.rules(REGION, "pl-0mem").into_iter().map(|r| (r.raw_cidr, r.description)).collect();
        rules.sort();
        assert_eq!(
            rules,
            [
                ("192.0.2.0/24".to_string(), Some("by hand".to_string())),
                ("198.51.100.1/32".into(), Some("pc:dev alice: laptop".into()))
            ]
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_tagged_like_groups_are_discovered_and_an_untagged_one_is_left_alone() {
    within(async {
        let w = World::new().await;
        let tagged = list_tagged(&w, 10, &[(w.tag_key.as_str(), "true")]).await;
        let untagged = list_on_moto(&w, 10).await;
        let firewall = Arc::new(Ec2Firewall::new(&sdk_config().await));
        let selector = TargetSelector::TaggedPrefixLists { tag_key: w.tag_key.clone(), tag_value: "true".into() };
        let (engine, _) = engine_by(&w, firewall, Arc::new(portcullis_engine::SystemClock), selector);
        let outcome = engine.grants().add(request("198.51.100.7")).await.unwrap();
        assert_eq!(outcome.report.map(|r| r.targets), Some(1), "the tagged list only");
        let on = |entries: Vec<(String, Option<String>)>| entries.iter().any(|e| e.0 == "198.51.100.7/32");
        assert!(on(entries(&w, &tagged).await), "the tagged list holds the grant");
        assert!(!on(entries(&w, &untagged).await), "the untagged list is not a target");
    })
    .await;
}

/// The same conflict on moto, through the proxy that answers a stale `CurrentVersion` as EC2
/// does: the list is changed by hand between the observe and the modify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_list_changed_on_ec2_since_it_was_observed_is_observed_again_and_planned_anew() {
    within(async {
        let w = World::new().await;
        let list = list_on_moto(&w, 10).await;
        let proxy = crate::aws_proxy::start_proxy().await;
        let firewall = Arc::new(Ec2Firewall::new(&crate::aws_proxy::sdk_config_at(&proxy.url).await));
        let (engine, _) = engine(&w, firewall.clone(), Arc::new(portcullis_engine::SystemClock), &list);
        proxy.change_list_before_next_modify("203.0.113.0/24");
        let outcome = engine.grants().add(request("198.51.100.1")).await.unwrap();
        assert!(outcome.report.as_ref().is_some_and(|r| r.authorized == 1 && !r.failed()), "{outcome:?}");
        assert_eq!(
            firewall.calls().get("ModifyManagedPrefixList"),
            2,
            "refused over the old version, then applied over the new one: {:?}",
            firewall.calls().snapshot()
        );
        assert_eq!(
            entries(&w, &list).await,
            [
                ("192.0.2.0/24".to_string(), Some("office, by hand".to_string())),
                ("198.51.100.1/32".into(), Some("pc:dev alice: laptop".into())),
                ("203.0.113.0/24".into(), Some("by hand".into())),
            ]
        );
    })
    .await;
}
