//! What the hot paths cost on DynamoDB, counted by the SDK's call counter: an add, and the
//! sweeper's poll for the next expiry (what an idle second costs), with 10 grants in the table
//! and again with 5,000. The counts must be the same: neither path may read the table whole.

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use portcullis::wiring;
use portcullis_aws::{DynamoStore, TableNames};
use portcullis_core::Timestamp;
use portcullis_engine::{Clock, LogNotifier, ManualClock, MemoryFirewall};

use crate::dynamo::{DynamoWorld, add_request};
use crate::support::{REGION, sdk_config, within};

#[path = "../../benches/common/dynamo_cost.rs"]
mod common;
use common::{calls_of, seed};
use portcullis_store::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_add_and_an_idle_poll_cost_the_same_dynamodb_calls_with_10_or_5000_grants() {
    within(async {
        let d = DynamoWorld::new().await;
        d.init();
        let cfg = d.config();
        let now = Timestamp::now_utc();
        let clock = Arc::new(ManualClock::new(now));
        let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
        firewall.put_group(REGION, "sg-cost", &[(d.w.tag_key.as_str(), "true")]);
        let environments = cfg.policies.keys().cloned().collect();
        let store = DynamoStore::new(&sdk_config().await, TableNames::new(&d.template, None), environments);
        let engine =
            wiring::builder(&cfg, Arc::new(store.clone()), firewall, clock.clone() as Arc<dyn Clock>, Arc::new(LogNotifier))
                .build();

        let mut figures = Vec::new();
        for (size, (from, to), cidr) in [(10, (0, 10), "198.51.100.1"), (5_000, (10, 5_000), "198.51.100.2")] {
            seed(&d.dynamo().await, &d.table("dev"), from..to, now).await;
            store.full_expiry_check().await.unwrap();
            assert_eq!(store.grants(None).await.unwrap().len(), size + figures.len(), "the table holds {size} seeded grants");
            let idle = calls_of(&store, async {
                store.next_expiry().await.unwrap().expect("an expiry");
            })
            .await;
            let add = calls_of(&store, async {
                let outcome = engine.grants().add(add_request(cidr, "1h", "alice")).await.unwrap();
                assert!(outcome.report.is_some_and(|r| r.authorized == 2), "the add's two rules");
            })
            .await;
            println!("{size} grants: idle poll {}, add {}", common::in_words(&idle), common::in_words(&add));
            figures.push((idle, add));
        }
        assert_eq!(figures[0], figures[1], "the same calls whatever the table's size");
        let scans = |m: &BTreeMap<String, u64>| m.get("Scan").copied().unwrap_or(0);
        assert_eq!((scans(&figures[1].0), scans(&figures[1].1)), (0, 0), "no Scan on a hot path: {figures:?}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_user_limit_counts_holds_and_a_hold_left_by_another_writer_refuses_nobody() {
    use portcullis_core::{Cidr, Description, Environment, Grant, Interface, Owner, PolicyRefusal, Source};
    use portcullis_store::{Actor, StoreError, Upsert};

    within(async {
        let d = DynamoWorld::new().await;
        d.init();
        let environments = vec![Environment::parse("dev").unwrap()];
        let store = DynamoStore::new(&sdk_config().await, TableNames::new(&d.template, None), environments);
        let now = Timestamp::now_utc();
        let add = |ip: &str| Upsert {
            grant: Grant {
                cidr: Cidr::parse(ip).unwrap(),
                environment: Environment::parse("dev").unwrap(),
                owner: Owner::named("alice"),
                source: Source::Manual,
                description: Description::parse("").unwrap(),
                created_at: now,
                expires_at: Some(now + time::Duration::hours(1)),
            },
            actor: Actor { name: "alice".into(), interface: Interface::Cli },
            max_grants_per_user: 2,
        };
        store.upsert(add("203.0.113.1")).await.unwrap();
        store.upsert(add("203.0.113.2")).await.unwrap();
        let calls = calls_of(&store, async {
            let err = store.upsert(add("203.0.113.3")).await.unwrap_err();
            assert!(matches!(err, StoreError::Refused(PolicyRefusal::TooManyGrants { .. })), "{err}");
        })
        .await;
        assert_eq!(calls.get("Scan"), Some(&1), "a refusal is checked against the table itself: {calls:?}");

        // Another writer deletes one of alice's grants: her hold for it stays behind.
        d.dynamo()
            .await
            .delete_item()
            .table_name(d.table("dev"))
            .key("ip_address", AttributeValue::S("203.0.113.2/32".into()))
            .key("environment", AttributeValue::S("dev".into()))
            .send()
            .await
            .unwrap();
        store.upsert(add("203.0.113.3")).await.expect("the Scan finds her one live grant");
        let calls = calls_of(&store, async {
            let err = store.upsert(add("203.0.113.4")).await.unwrap_err();
            assert!(matches!(err, StoreError::Refused(PolicyRefusal::TooManyGrants { .. })), "{err}");
        })
        .await;
        assert_eq!(calls.get("Scan"), Some(&1), "{calls:?}");

        // That Scan dropped the stale hold: after one of her grants goes, an add counts by
        // holds again.
        let alice = add("203.0.113.3");
        store.remove(&alice.grant.key(), &alice.actor, now).await.unwrap();
        let calls = calls_of(&store, async {
            store.upsert(add("203.0.113.4")).await.unwrap();
        })
        .await;
        assert_eq!(calls.get("Scan"), None, "counted by holds: {calls:?}");
    })
    .await;
}
