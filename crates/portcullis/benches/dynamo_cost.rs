//! DynamoDB calls per add and per idle poll of the sweeper, against the size of the grants
//! table (10, 1,000 and 5,000 grants), on moto, counted by the SDK's call counter; beside them,
//! what one full Scan of the table costs: the old idle poll was one, the old add three. Run by
//! `scripts/bench`. Counts calls, so the figures do not depend on the machine.

use std::collections::BTreeMap;
use std::sync::Arc;

use portcullis_aws::{DynamoStore, TableNames};
use portcullis_core::{Cidr, Description, Environment, Interface, Marker, Policy, PolicyRules, PortSet, RuleQuota, Source, Ttl};
use portcullis_engine::{AddRequest, Clock, Engine, MemoryFirewall, Requester, Settings, SystemClock};

#[path = "common/dynamo_cost.rs"]
mod common;
use common::{calls_of, in_words, seed};

#[path = "common/moto.rs"]
mod moto;
use moto::REGION;
use portcullis_store::prelude::*;

fn dev() -> Environment {
    Environment::parse("dev").unwrap()
}

async fn measure(moto: &str) {
    let sdk = moto::sdk(moto).await;
    let template = format!("pc-bench-{}-{{env}}", std::process::id());
    let store = DynamoStore::new(&sdk, TableNames::new(&template, None), vec![dev()]);
    store.init().await.unwrap();
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    firewall.put_group(REGION, "sg-bench", &[("WhitelistManaged", "true")]);
    let spec = moto::discovered("WhitelistManaged", PortSet::alb());
    let policy = Policy::new(PolicyRules::default()).unwrap();
    let settings = Settings {
        specs: vec![spec],
        policies: BTreeMap::from([(dev(), policy)]),
        marker: Marker::default(),
        quota: RuleQuota::default(),
    };
    let engine = Engine::new(Arc::new(store.clone()), firewall, clock.clone(), settings);
    let client = aws_sdk_dynamodb::Client::new(&sdk);
    let table = template.replace("{env}", "dev");

    println!("DynamoDB calls by table size (moto; counted by the SDK interceptor)");
    println!(
        "  {:>6}  {:<28} {:<72} one full Scan (before: 1 a poll, 3 an add)",
        "grants", "sweeper's idle poll", "add (a new address)"
    );
    let mut seeded = 0;
    for (i, size) in [10u32, 1_000, 5_000].into_iter().enumerate() {
        seed(&client, &table, seeded..size, clock.now()).await;
        seeded = size;
        store.full_expiry_check().await.unwrap();
        let idle = calls_of(&store, async {
            store.next_expiry().await.unwrap();
        })
        .await;
        let add = calls_of(&store, async {
            let request = AddRequest {
                cidr: Cidr::parse(&format!("198.51.100.{}", i + 1)).unwrap(),
                environment: dev(),
                ttl: Some(Ttl::parse("1h").unwrap()),
                description: Description::parse("bench").unwrap(),
                source: Source::Manual,
                by: Requester::named("alice", Interface::Cli),
            };
            engine.grants().add(request).await.unwrap();
        })
        .await;
        let scan = calls_of(&store, async {
            store.grants(None).await.unwrap();
        })
        .await;
        let kb = table_kb(&client, &table).await;
        println!("  {size:>6}  {:<28} {:<72} {} reading {kb} KB", in_words(&idle), in_words(&add), in_words(&scan));
    }
}

/// The table's size as DynamoDB bills a read of it: attribute names and values, in KB (a
/// consistent Scan costs one read unit per 4 KB).
async fn table_kb(client: &aws_sdk_dynamodb::Client, table: &str) -> usize {
    let mut bytes = 0;
    let mut start = None;
    loop {
        let page = client.scan().table_name(table).set_exclusive_start_key(start).send().await.unwrap();
        for item in page.items() {
            for (k, v) in item {
                bytes += k.len() + v.as_s().map(String::len).or_else(|_| v.as_n().map(String::len)).unwrap_or(8);
            }
        }
        match page.last_evaluated_key {
            Some(k) if !k.is_empty() => start = Some(k),
            _ => return bytes / 1024,
        }
    }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match std::env::var("PORTCULLIS_TEST_MOTO") {
        Ok(moto) => runtime.block_on(measure(&moto)),
        Err(_) => println!("DynamoDB calls by table size: skipped (PORTCULLIS_TEST_MOTO is not set; run scripts/bench)"),
    }
}
