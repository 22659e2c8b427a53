//! The DynamoDB store on moto: the IP Whitelist Manager's schema, `init`, the fixture events through `invoke`,
//! stream records (TTL, manual and our own removals, poison records), `adopt`.
//!
//! tidy: long file — every scenario runs on one `DynamoWorld` (its tables, moto, the CLI and
//! the stream reader); split, the helpers would move to a module of their own for no reader's
//! gain.

use std::collections::HashMap;
use std::process::Output;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use portcullis::config::{Config, Overrides};
use portcullis::wiring;
use portcullis_aws::{DynamoStore, Ec2Firewall, StreamTail, TableNames};
use portcullis_core::{Cidr, Description, Environment, Interface, Source, Ttl};
use portcullis_engine::{AddRequest, Clock, ManualClock, Requester};
use serde_json::Value;

use crate::support::{Receiver, World, moto, sdk_config, text, unique};

/// The fixture events, as the IP Whitelist Manager's Lambda received them.
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A world whose store is a DynamoDB table template of its own on moto.
pub struct DynamoWorld {
    pub w: World,
    /// e.g. `pc-123-ip-whitelist-{env}`.
    pub template: String,
    pub receiver: Receiver,
}

impl DynamoWorld {
    pub async fn new() -> DynamoWorld {
        let w = World::new().await;
        let template = format!("{}-{{env}}", unique("ipwl"));
        DynamoWorld { w, template, receiver: Receiver::start().await }
    }

    pub fn table(&self, env: &str) -> String {
        self.template.replace("{env}", env)
    }

    pub fn own_table(&self) -> String {
        TableNames::new(&self.template, None).meta
    }

    pub fn env(&self) -> Vec<(String, String)> {
        let mut env = self.w.env();
        env.retain(|(k, _)| k != "PORTCULLIS_STORE");
        env.push(("PORTCULLIS_STORE".into(), format!("dynamodb:{}", self.template)));
        env.push(("SLACK_WEBHOOK_URL".into(), self.receiver.url("/webhook")));
        env
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        let mut cmd = self.w.command(args);
        cmd.env_clear().envs(self.env());
        cmd.output().unwrap()
    }

    /// `invoke` with an event on standard input.
    pub fn invoke(&self, event: &str) -> (Option<i32>, Value, String) {
        use std::io::Write;
        let mut cmd = self.w.command(&["invoke"]);
        cmd.env_clear().envs(self.env());
        cmd.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        child.stdin.take().unwrap().write_all(event.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let json = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code(), json, text(&out))
    }

    pub fn config(&self) -> Config {
        let env: HashMap<String, String> = self.env().into_iter().collect();
        Config::load(&Overrides::default(), &|k| env.get(k).cloned()).unwrap()
    }

    pub async fn dynamo(&self) -> aws_sdk_dynamodb::Client {
        aws_sdk_dynamodb::Client::new(&sdk_config().await)
    }

    pub async fn item(&self, env: &str, ip: &str) -> Option<HashMap<String, AttributeValue>> {
        self.dynamo()
            .await
            .get_item()
            .table_name(self.table(env))
            .key("ip_address", AttributeValue::S(ip.into()))
            .key("environment", AttributeValue::S(env.into()))
            .consistent_read(true)
            .send()
            .await
            .unwrap()
            .item
    }

    /// Announcements the webhook got so far.
    pub fn announced(&self) -> Vec<String> {
        self.receiver.requests("/webhook").iter().map(|r| r.json()["text"].as_str().unwrap_or_default().to_string()).collect()
    }

    pub fn init(&self) {
        let out = self.cli(&["init"]);
        assert!(out.status.success(), "{}", text(&out));
    }

    /// Puts an item in `dev` exactly as the IP Whitelist Manager's Lambda writes it (Python's isoformat,
    /// microseconds included): `user` is (id, name).
    pub async fn put_seed_item(
        &self,
        cidr: &str,
        added_at: time::OffsetDateTime,
        expires_at: time::OffsetDateTime,
        user: (&str, &str),
        description: Option<&str>,
    ) {
        let iso = portcullis_store::ip_whitelist::iso;
        let mut put = self
            .dynamo()
            .await
            .put_item()
            .table_name(self.table("dev"))
            .item("ip_address", s(cidr))
            .item("environment", s("dev"))
            .item("added_at", s(&iso(added_at)))
            .item("expires_at", s(&iso(expires_at)))
            .item("ttl", AttributeValue::N(expires_at.unix_timestamp().to_string()))
            .item("user_id", s(user.0))
            .item("username", s(user.1));
        if let Some(d) = description {
            put = put.item("description", s(d));
        }
        put.send().await.unwrap();
    }

    /// Puts a live item in `dev` by hand and deletes it again, so the stream carries a removal
    /// made outside portcullis, announced with `cidr` in it. The stream is read in order, so once
    /// that announcement is out, every earlier record was handled: a count taken then is final.
    pub async fn stream_barrier(&self, cidr: &str) {
        let now = time::OffsetDateTime::now_utc();
        self.put_seed_item(cidr, now, now + time::Duration::days(1), ("U0BARRIER", "barrier"), None).await;
        let client = self.dynamo().await;
        client
            .delete_item()
            .table_name(self.table("dev"))
            .key("ip_address", s(cidr))
            .key("environment", s("dev"))
            .send()
            .await
            .unwrap();
    }
}

/// Whether `texts` has the outside-removal announcement [`DynamoWorld::stream_barrier`] makes.
pub fn passed_barrier(texts: &[String], cidr: &str) -> bool {
    texts.iter().any(|t| t.starts_with(":wastebasket:") && t.contains(cidr))
}

fn s(v: &str) -> AttributeValue {
    AttributeValue::S(v.into())
}

#[tokio::test]
async fn init_creates_the_tables_once_and_a_missing_table_names_init() {
    let d = DynamoWorld::new().await;
    let out = d.cli(&["list"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("portcullis init"), "{}", text(&out));

    let out = d.cli(&["init"]);
    assert!(out.status.success(), "{}", text(&out));
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("created {}", d.table("dev"))) && said.contains(&format!("created {}", d.own_table())),
        "{said}"
    );

    let client = d.dynamo().await;
    let table = client.describe_table().table_name(d.table("dev")).send().await.unwrap();
    let t = table.table().unwrap();
    assert_eq!(t.stream_specification().unwrap().stream_view_type().unwrap().as_str(), "NEW_AND_OLD_IMAGES");
    let keys: Vec<_> =
        t.key_schema().iter().map(|k| (k.attribute_name().to_string(), k.key_type().as_str().to_string())).collect();
    assert_eq!(keys, [("ip_address".to_string(), "HASH".to_string()), ("environment".to_string(), "RANGE".to_string())]);
    let ttl = client.describe_time_to_live().table_name(d.table("dev")).send().await.unwrap();
    assert_eq!(ttl.time_to_live_description().unwrap().attribute_name(), Some("ttl"));

    let again = d.cli(&["init"]);
    let said = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(again.status.success() && !said.contains("created") && said.contains("exists"), "{}", text(&again));
    assert_eq!(d.cli(&["list"]).status.code(), Some(0));
}

#[tokio::test]
async fn the_fixture_events_through_invoke_have_the_seeds_effects() {
    let d = DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();

    let (code, add, all) = d.invoke(&fixture("event-add.json"));
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(add["success"], true, "{add}");
    let item = d.item("dev", "1.2.3.4/32").await.expect("the item is in the table");
    for attr in ["ip_address", "environment", "added_at", "expires_at", "ttl", "user_id", "username", "description"] {
        assert!(item.contains_key(attr), "{attr} missing from {item:?}");
    }
    assert_eq!(item["user_id"], s("U01234567"));
    assert_eq!(item["username"], s("john.doe"));
    assert_eq!(item["description"], s("Home office"));
    let added = item["added_at"].as_s().unwrap();
    let expires = item["expires_at"].as_s().unwrap();
    assert!(added.ends_with("+00:00") && expires.ends_with("+00:00"), "{added} {expires}");
    let ttl: i64 = item["ttl"].as_n().unwrap().parse().unwrap();
    let expires_at = portcullis_store::ip_whitelist::parse_iso(expires).unwrap();
    let added_at = portcullis_store::ip_whitelist::parse_iso(added).unwrap();
    assert_eq!(ttl, expires_at.unix_timestamp());
    assert_eq!(expires_at - added_at, time::Duration::minutes(10080));

    let rules = d.w.rules(&group).await;
    let ours: Vec<_> = rules.iter().map(|(c, p, d)| (c.as_str(), *p, d.as_deref().unwrap_or_default())).collect();
    assert_eq!(ours, [("1.2.3.4/32", 80, "pc:dev john.doe: Home office"), ("1.2.3.4/32", 443, "pc:dev john.doe: Home office")]);
    let hooks = d.receiver.wait_for("/webhook", 1).await;
    assert!(
        hooks[0].json()["text"].as_str().unwrap().starts_with(
            ":white_check_mark: IP Whitelist Update\nIP `1.2.3.4/32` added to `dev` whitelist.\nAdded by: @john.doe"
        )
    );

    let (code, list, all) = d.invoke(&fixture("event-list.json"));
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(list["count"], 1, "{list}");
    assert_eq!(list["items"][0]["ip_address"], "1.2.3.4/32");
    assert_eq!(list["items"][0]["ttl"], ttl);

    d.w.delete_rule(&group, "1.2.3.4/32", 443).await;
    let (code, refresh, all) = d.invoke(&fixture("event-refresh.json"));
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(refresh["authorized"], 1, "{refresh}");
    assert_eq!(d.w.keys(&group).await.len(), 2);

    let (code, removed, all) = d.invoke(&fixture("event-remove.json"));
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(removed["success"], true, "{removed}");
    assert!(d.item("dev", "1.2.3.4/32").await.is_none(), "the item is deleted");
    assert!(d.w.rules(&group).await.is_empty());
    let texts = d.announced();
    assert!(
        texts.iter().any(|t| t.starts_with(
            ":wastebasket: IP Whitelist Update\nIP `1.2.3.4/32` removed from `dev` whitelist.\nRemoved by: @john.doe"
        )),
        "{texts:?}"
    );

    // Bad events change nothing and say why (a refusal by policy exits 3).
    let (code, bad, _) =
        d.invoke(r#"{"action":"add","ip_address":"0.0.0.0/0","environment":"dev","user_info":{"user_id":"U1"}}"#);
    assert_eq!((code, bad["success"].clone()), (Some(3), Value::Bool(false)), "{bad}");
    assert_eq!(bad["error"]["code"], "refused", "{bad}");
    let (code, _, all) =
        d.invoke(r#"{"action":"add","ip_address":"1.2.3.4","environment":"dev","user_info":{"user_id":"U1"},"ttl_minutes":0}"#);
    assert_eq!(code, Some(2), "{all}");
    let (code, _, all) = d.invoke(r#"{"nothing": true}"#);
    assert_eq!(code, Some(2), "{all}");
    assert!(d.item("dev", "1.2.3.4/32").await.is_none());
}

#[tokio::test]
async fn an_old_lambda_item_is_applied_and_an_expired_one_is_not() {
    let d = DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();
    let now = time::OffsetDateTime::now_utc();
    for (ip, expires) in
        [("198.51.100.20/32", now + time::Duration::days(1)), ("198.51.100.21/32", now - time::Duration::hours(1))]
    {
        d.put_seed_item(ip, now - time::Duration::days(2), expires, ("U0OLD", "old.lambda"), Some("from the seed")).await;
    }
    let out = d.cli(&["refresh"]);
    assert!(out.status.success(), "{}", text(&out));
    let rules = d.w.rules(&group).await;
    let keys: Vec<_> = rules.iter().map(|(c, p, _)| (c.as_str(), *p)).collect();
    assert_eq!(keys, [("198.51.100.20/32", 80), ("198.51.100.20/32", 443)], "the expired item is not applied");
    assert!(rules.iter().all(|(_, _, d)| d.as_deref() == Some("pc:dev old.lambda: from the seed")));

    let out = d.cli(&["list", "--json"]);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let cidrs: Vec<_> = listed.as_array().unwrap().iter().map(|g| g["cidr"].as_str().unwrap().to_string()).collect();
    assert_eq!(cidrs, ["198.51.100.20/32"], "list hides an expired item TTL has not deleted yet");

    // What we write reads as the old Lambda reads it: string and number attributes only.
    let out = d.cli(&["add", "198.51.100.22", "--ttl", "1h", "--as", "alice", "--description", "ours"]);
    assert!(out.status.success(), "{}", text(&out));
    let item = d.item("dev", "198.51.100.22/32").await.unwrap();
    assert!(item.values().all(|v| v.is_s() || v.is_n()), "{item:?}");
    assert_eq!(item["username"], s("alice"));
}

#[tokio::test]
async fn stream_removals_are_announced_once_and_only_when_not_ours() {
    let d = DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();
    let (code, _, all) = d.invoke(&fixture("event-add.json"));
    assert_eq!(code, Some(0), "{all}");
    d.receiver.wait_for("/webhook", 1).await;

    // DynamoDB's TTL deletes the item (moto never does; delete it ourselves), and the stream
    // brings the fixture record.
    d.dynamo()
        .await
        .delete_item()
        .table_name(d.table("dev"))
        .key("ip_address", s("1.2.3.4/32"))
        .key("environment", s("dev"))
        .send()
        .await
        .unwrap();
    let ttl_remove = fixture("dynamodb-stream-ttl-remove.json");
    let (code, response, all) = d.invoke(&ttl_remove);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(response["batchItemFailures"], serde_json::json!([]), "{response}");
    let hooks = d.receiver.wait_for("/webhook", 2).await;
    assert_eq!(
        hooks[1].json()["text"],
        ":hourglass: IP Whitelist Update\nIP `1.2.3.4/32` expired from `dev` whitelist.\nAdded by: @john.doe\nDescription: Home office\nExpired at: 2025-01-17 12:00:00 UTC"
    );
    assert!(d.w.rules(&group).await.is_empty(), "the rules are removed");

    // Lambda delivers records at least once: the same record again is not announced again.
    let (code, _, all) = d.invoke(&ttl_remove);
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(d.announced().len(), 2, "{:?}", d.announced());

    // A REMOVE someone made outside portcullis: 🗑. A poison record before it does not stop it.
    let mut manual: Value = serde_json::from_str(&ttl_remove).unwrap();
    let record = &mut manual["Records"][0];
    record.as_object_mut().unwrap().remove("userIdentity");
    record["eventID"] = "manual-1".into();
    record["dynamodb"]["SequenceNumber"] = "222".into();
    let poison = serde_json::json!({"eventID": "poison-1", "eventName": "REMOVE", "dynamodb": {"SequenceNumber": "200", "Keys": "garbage"}});
    manual["Records"] = serde_json::json!([poison, manual["Records"][0].clone()]);
    let (code, response, all) = d.invoke(&manual.to_string());
    assert_eq!(code, Some(0), "{all}");
    assert_eq!(response["batchItemFailures"], serde_json::json!([]), "the poison record is skipped, not retried: {response}");
    let hooks = d.receiver.wait_for("/webhook", 3).await;
    assert!(
        hooks[2].json()["text"].as_str().unwrap().starts_with(
            ":wastebasket: IP Whitelist Update\nIP `1.2.3.4/32` removed from `dev` whitelist.\nRemoved outside portcullis"
        ),
        "{:?}",
        hooks[2]
    );
    let out = d.cli(&["audit", "--json"]);
    let audit: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        audit.as_array().unwrap().iter().any(|e| e["action"] == "refused" && e["reason"].as_str().unwrap().contains("poison-1")),
        "the poison record is audited: {audit}"
    );
}

/// Announcements in Slack's words, kept in memory: virtual time cannot pace a real webhook.
#[derive(Default)]
pub struct Recorder(pub std::sync::Mutex<Vec<String>>);

#[async_trait::async_trait]
impl portcullis_engine::Notifier for Recorder {
    async fn announce(&self, event: &portcullis_core::AuditEvent) -> Result<(), portcullis_engine::NotifyError> {
        if let Some(text) = portcullis_slack::notification(event) {
            self.0.lock().unwrap().push(text);
        }
        Ok(())
    }
}

impl Recorder {
    pub fn texts(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// An engine over the DynamoDB store on virtual time, as a replica would run it.
pub async fn engine(
    d: &DynamoWorld,
    instance: &str,
    clock: Arc<ManualClock>,
    recorder: Arc<Recorder>,
) -> (Arc<portcullis_engine::Engine>, DynamoStore) {
    engine_via(d, instance, clock, recorder, &sdk_config().await).await
}

/// The same, reaching AWS through `sdk` (the proxy's, say).
pub async fn engine_via(
    d: &DynamoWorld,
    instance: &str,
    clock: Arc<ManualClock>,
    recorder: Arc<Recorder>,
    sdk: &aws_config::SdkConfig,
) -> (Arc<portcullis_engine::Engine>, DynamoStore) {
    let cfg = d.config();
    let environments = cfg.policies.keys().cloned().collect();
    let store = DynamoStore::new(sdk, TableNames::new(&d.template, None), environments).with_instance(instance);
    let firewall = Arc::new(Ec2Firewall::new(sdk));
    let clock: Arc<dyn Clock> = clock;
    let lease = wiring::sweeper_lease(Arc::new(store.clone()), clock.clone());
    let engine = wiring::builder(&cfg, Arc::new(store.clone()), firewall, clock, recorder).lease(lease).build();
    (Arc::new(engine), store)
}

pub fn add_request(ip: &str, ttl: &str, user: &str) -> AddRequest {
    AddRequest {
        cidr: Cidr::parse(ip).unwrap(),
        environment: Environment::parse("dev").unwrap(),
        ttl: Some(Ttl::parse(ttl).unwrap()),
        description: Description::parse("").unwrap(),
        source: Source::Manual,
        by: Requester::named(user, Interface::Cli),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweepers_own_expiry_is_announced_once_though_the_stream_shows_it() {
    let d = DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let recorder = Arc::new(Recorder::default());
    let (engine, store) = engine(&d, "one", clock.clone(), recorder.clone()).await;
    let mut tail = StreamTail::new(&sdk_config().await, store.clone());
    assert!(tail.poll(clock.now()).await.unwrap().is_empty());
    assert_eq!(tail.shards(), 1, "positioned on the stream before any change");

    engine.grants().add(add_request("203.0.113.9", "1m", "alice")).await.unwrap();
    clock.advance(time::Duration::minutes(2));
    let swept = engine.sweep().await.unwrap();
    assert_eq!(swept.expired.len(), 1);
    assert!(d.w.rules(&group).await.is_empty());
    engine.outbox().unwrap().flush(time::Duration::seconds(10)).await;

    let batches = tail.poll(clock.now()).await.unwrap();
    assert_eq!(batches.len(), 1);
    let first = batches[0].records.clone();
    assert!(first.len() >= 3, "insert, mark, remove: {first:?}");
    // A partial failure after the first record: the shard is read again from the second.
    tail.commit(&batches[0], 1, clock.now()).await.unwrap();
    let again = tail.poll(clock.now()).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].records, first[1..].to_vec(), "re-read from the first record not done");
    tail.commit(&again[0], again[0].records.len(), clock.now()).await.unwrap();
    assert!(tail.poll(clock.now()).await.unwrap().is_empty(), "nothing is read twice once done");
    let outcome = engine.grants().handle_stream(first).await;
    assert_eq!((outcome.announced, outcome.unreadable, outcome.failed_at.clone()), (0, 0, None), "{outcome:?}");
    engine.outbox().unwrap().flush(time::Duration::seconds(10)).await;
    let texts = recorder.texts();
    assert_eq!(texts.iter().filter(|t| t.starts_with(":hourglass:")).count(), 1, "{texts:?}");
    assert_eq!(texts.len(), 2, "added and expired, each once: {texts:?}");
}

#[tokio::test]
async fn adopt_takes_over_a_markerless_rule_matching_a_grant_and_nothing_else() {
    let d = DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();
    // What the IP Whitelist Manager's Lambda left: rules without our marker.
    d.w.hand_rule(&group, "1.2.3.4/32", 80, "").await;
    d.w.hand_rule(&group, "192.0.2.50/32", 80, "").await;
    let (code, _, all) = d.invoke(&fixture("event-add.json"));
    assert_eq!(code, Some(0), "{all}");
    let before = d.w.rules(&group).await;
    assert!(
        before.contains(&("1.2.3.4/32".into(), 80, Some(String::new()))) || before.contains(&("1.2.3.4/32".into(), 80, None)),
        "{before:?}"
    );

    let out = d.cli(&["adopt", "--dry-run"]);
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    assert!(said.contains("would take over 1.2.3.4/32 tcp:80") && said.contains("1 rules would be taken over"), "{said}");
    assert_eq!(d.w.rules(&group).await, before, "a dry run changes nothing");

    let out = d.cli(&["adopt"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = d.w.rules(&group).await;
    assert!(after.contains(&("1.2.3.4/32".into(), 80, Some("pc:dev john.doe: Home office".into()))), "{after:?}");
    let unmatched = after.iter().find(|(c, _, _)| c == "192.0.2.50/32").unwrap();
    assert!(unmatched.2.as_deref().unwrap_or_default().is_empty(), "a rule matching no grant is left alone: {after:?}");
    assert_eq!(after.len(), 3);

    // Now ours, it goes with the grant.
    let (code, _, all) = d.invoke(&fixture("event-remove.json"));
    assert_eq!(code, Some(0), "{all}");
    let left: Vec<_> = d.w.rules(&group).await.into_iter().map(|(c, _, _)| c).collect();
    assert_eq!(left, ["192.0.2.50/32"]);
    let _ = moto();
}

/// One in-process `serve` replica's background work: lease, sweeper, stream reader, outbox.
struct Replica {
    engine: Arc<portcullis_engine::Engine>,
    tasks: tokio::task::JoinSet<()>,
    shards: tokio::sync::watch::Receiver<usize>,
}

impl Replica {
    /// A replica reaching AWS through `sdk`.
    async fn start(
        d: &DynamoWorld,
        name: &str,
        clock: Arc<ManualClock>,
        recorder: Arc<Recorder>,
        sdk: &aws_config::SdkConfig,
    ) -> Replica {
        let (engine, store) = engine_via(d, name, clock, recorder, sdk).await;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        std::mem::forget(stop_tx); // replicas stop by being killed
        let (shards_tx, shards) = tokio::sync::watch::channel(0);
        let mut tasks = tokio::task::JoinSet::new();
        let tail = StreamTail::new(sdk, store);
        let (e, s) = (engine.clone(), stop.clone());
        tasks.spawn(async move { e.lease().unwrap().run(s).await });
        let (e, s) = (engine.clone(), stop.clone());
        tasks.spawn(async move { e.run_sweeper(s).await });
        let (e, s) = (engine.clone(), stop.clone());
        tasks.spawn(async move { portcullis::replica::follow_streams(e, tail, s, shards_tx).await });
        let (e, s) = (engine.clone(), stop.clone());
        tasks.spawn(async move { e.outbox().unwrap().run(s).await });
        Replica { engine, tasks, shards }
    }

    fn leads(&self) -> bool {
        self.engine.lease().unwrap().is_held()
    }
}

/// Expired grants whose lag was measured, and the sweeper's applies.
const EXPIRIES: &str = "portcullis_expiry_lag_seconds_count";
const SWEEPS: &str = "portcullis_reconcile_duration_seconds_count{cause=\"sweep\"}";

/// One sample of a replica's engine metrics, as `/metrics` would serve it.
fn metric(replica: &Replica, name: &str) -> f64 {
    let mut registry = prometheus_client::registry::Registry::default();
    replica.engine.metrics().register(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    crate::support::sample(&text, name)
}

/// Advances virtual time a second at a time until `check` holds.
async fn advance_until(clock: &ManualClock, what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..120 {
        if check() {
            return;
        }
        clock.advance(time::Duration::seconds(1));
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_table_and_one_sweeper() {
    let d = DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let recorder = Arc::new(Recorder::default());
    // Through the proxy, which applies DynamoDB's calls one at a time as DynamoDB does (moto's
    // own server does not lock its transactions).
    let proxy = crate::aws_proxy::start_proxy().await;
    let sdk = crate::aws_proxy::sdk_config_at(&proxy.url).await;
    let a = Replica::start(&d, "replica-a", clock.clone(), recorder.clone(), &sdk).await;
    let b = Replica::start(&d, "replica-b", clock.clone(), recorder.clone(), &sdk).await;
    advance_until(&clock, "a leader reading the stream", || {
        (a.leads() && *a.shards.borrow() > 0) || (b.leads() && *b.shards.borrow() > 0)
    })
    .await;
    assert!(a.leads() != b.leads(), "exactly one replica holds the sweeper lease");
    let (leader, follower) = if a.leads() { (a, b) } else { (b, a) };

    // A grant added through the follower lands once, and the leader's stream reconcile adds nothing.
    follower.engine.grants().add(add_request("203.0.113.40", "1m", "alice")).await.unwrap();
    let rules = d.w.rules(&group).await;
    assert_eq!(
        rules.iter().map(|(c, p, _)| (c.as_str(), *p)).collect::<Vec<_>>(),
        [("203.0.113.40/32", 80), ("203.0.113.40/32", 443)]
    );
    advance_until(&clock, "the add announced", || recorder.texts().len() == 1).await;

    // It expires: the leader revokes and announces it once; the stream's REMOVE is ours.
    advance_until(&clock, "the expiry announced", || recorder.texts().iter().any(|t| t.starts_with(":hourglass:"))).await;
    assert!(d.w.rules(&group).await.is_empty());
    // Count only once the stream is read past the expiry's REMOVE: a second announcement of it
    // (from the stream, or from the other replica) would be out by then.
    d.stream_barrier("198.51.100.99/32").await;
    advance_until(&clock, "the barrier's removal announced", || passed_barrier(&recorder.texts(), "198.51.100.99/32")).await;
    let texts = recorder.texts();
    assert_eq!(texts.iter().filter(|t| t.starts_with(":hourglass:")).count(), 1, "{texts:?}");
    assert_eq!(texts.len(), 3, "added, expired, and the barrier: {texts:?}");
    // Only the leader swept: the announcement count above would be the same if both had.
    assert!(metric(&leader, EXPIRIES) >= 1.0, "the leader's expiry is counted where the check can see it");
    assert_eq!(metric(&follower, EXPIRIES), 0.0, "the follower expired a grant");
    assert_eq!(metric(&follower, SWEEPS), 0.0, "the follower swept");

    // The leader dies without letting go; once its lease lapses the other takes over and sweeps.
    let Replica { tasks, .. } = leader;
    drop(tasks);
    advance_until(&clock, "the lease handed over", || follower.leads()).await;
    follower.engine.grants().add(add_request("203.0.113.41", "1m", "bob")).await.unwrap();
    advance_until(&clock, "the new leader's expiry", || {
        recorder.texts().iter().filter(|t| t.starts_with(":hourglass:")).count() == 2
    })
    .await;
    assert!(d.w.rules(&group).await.is_empty());
}

#[tokio::test]
async fn tokens_live_in_our_table_and_revocation_is_audited() {
    let d = DynamoWorld::new().await;
    d.init();
    let out = d.cli(&["token", "create", "--user", "ci", "--env", "dev", "--expires", "90d"]);
    assert!(out.status.success(), "{}", crate::support::text(&out));
    let secret = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(secret.starts_with("pct_"));
    let out = d.cli(&["token", "list", "--json"]);
    let tokens: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tokens[0]["user"], "ci");
    assert_eq!(tokens[0]["role"], "self-service");
    assert_eq!(tokens[0]["environments"], serde_json::json!(["dev"]));
    assert!(tokens[0]["revoked_at"].is_null() && tokens[0]["expires_at"].is_string());
    assert!(!String::from_utf8_lossy(&out.stdout).contains(&secret[4..]), "the secret is never shown again");
    let id = tokens[0]["id"].as_str().unwrap().to_string();
    let out = d.cli(&["token", "revoke", &id]);
    assert!(out.status.success(), "{}", crate::support::text(&out));
    let out = d.cli(&["token", "revoke", "nope"]);
    assert_eq!(out.status.code(), Some(2));
    let tokens: Value = serde_json::from_slice(&d.cli(&["token", "list", "--json"]).stdout).unwrap();
    assert!(tokens[0]["revoked_at"].is_string());
    let audit: Value = serde_json::from_slice(&d.cli(&["audit", "--json"]).stdout).unwrap();
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"token-created") && actions.contains(&"token-revoked"), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_another_writer_puts_past_the_policy_are_never_applied() {
    let d = DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();
    let now = time::OffsetDateTime::now_utc();
    // The whole internet, a /8 (the CLI refuses wider than /24), two years (max_ttl is 365d),
    // and one item that is fine.
    for (ip, expires) in [
        ("0.0.0.0/0", now + time::Duration::days(1)),
        ("10.0.0.0/8", now + time::Duration::days(1)),
        ("198.51.100.30/32", now + time::Duration::days(730)),
        ("198.51.100.31/32", now + time::Duration::days(1)),
    ] {
        d.put_seed_item(ip, now, expires, ("U0CONSOLE", "console"), None).await;
    }
    for _ in 0..2 {
        let out = d.cli(&["refresh"]);
        assert!(out.status.success(), "{}", text(&out));
    }
    let keys: Vec<String> = d.w.rules(&group).await.into_iter().map(|(c, _, _)| c).collect();
    assert_eq!(keys, ["198.51.100.31/32", "198.51.100.31/32"], "only the item the policy admits is applied");

    // Each refused item is audited once, with its reason, however often it is planned.
    let audit: Value = serde_json::from_slice(&d.cli(&["--json", "audit"]).stdout).unwrap();
    let refused: Vec<(&str, &str)> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "refused")
        .map(|e| (e["cidr"].as_str().unwrap_or_default(), e["reason"].as_str().unwrap_or_default()))
        .collect();
    assert_eq!(refused.len(), 3, "{audit}");
    for (cidr, why) in [("0.0.0.0/0", "whole internet"), ("10.0.0.0/8", "too wide"), ("198.51.100.30/32", "max_ttl")] {
        assert!(refused.iter().any(|(c, r)| *c == cidr && r.contains(why)), "{cidr}: {refused:?}");
    }

    // And reported by status.
    let (engine, _) = engine(&d, "status", Arc::new(ManualClock::new(now)), Arc::default()).await;
    engine.grants().reconcile(portcullis_engine::Scope::All, portcullis_engine::Cause::Refresh).await.unwrap();
    let status = engine.status(&Requester::named("test", Interface::Cli)).await.unwrap();
    let mut shown: Vec<String> = status.refused_grants.iter().map(|r| r.grant.cidr.to_string()).collect();
    shown.sort();
    assert_eq!(shown, ["0.0.0.0/0", "10.0.0.0/8", "198.51.100.30/32"]);
}
