//! The DynamoDB store: grants in seed 000's table(s), everything else in one table of
//! portcullis's own.
//!
//! Grants table (`ip-whitelist-{env}`, or one table for every environment): exactly the seed's
//! schema ([`portcullis_store::seed`]), so the old Lambda reads what we write and we read what
//! it wrote. Every change is a conditional write on the item as it was read, so concurrent
//! adds, refreshes and removes never lose an update; the loser reads again and retries.
//!
//! Our table (`{grants table}-portcullis`; partition key `pk`, sort key `sk`, TTL on `gc_at`):
//! - `audit#{env}` / zero-padded id: one audit event (JSON), written in the same transaction
//!   as the grant change it records; `audit-envs` / env lists the partitions;
//! - `outbox` / id: a notice waiting to be announced, with its lease; deleted when delivered;
//! - `history` / env: environments with a grant change (the empty-store safety check);
//! - `quota` / `{env}#{user}`: a version bumped by every add, so the per-user limit holds
//!   under concurrent adds;
//! - `counter` / `audit`: the last audit id handed out;
//! - `lease` / name, `once` / key, `checkpoint` / shard: leases, stream records already
//!   recorded, and how far each stream shard has been read;
//! - `request` / id: a guard change request (JSON) and its `version`, which every decision is
//!   conditional on; `request-event` / event id: the event that filed it (a redelivered event
//!   finds it and files nothing); `baseline` / `{region}/{group}`: a guarded group's approved
//!   rules (JSON); `own` / ledger key: a change guard is about to make (`dynamo/ledger.rs`).
//!
//! Deleting a grant is two steps: the item is first marked (`pc_removal`) in the transaction
//! that records and announces the change, then deleted. The REMOVE stream record thus carries
//! the mark, so the stream handler knows the change was ours and was announced already; a
//! marked item is no longer a grant, so a crash between the two steps loses nothing.
//!
//! tidy: long file — one backend's whole item layout (keys, conditions, transactions) for
//! every `Store` method; split, the conditions each write relies on would sit apart from the
//! items they guard. The decisions themselves are pure, in `portcullis_store`.

mod index;
mod ledger;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, Delete, KeySchemaElement, KeyType, Put, ScalarAttributeType,
    StreamSpecification, StreamViewType, TableStatus, TimeToLiveSpecification, TransactWriteItem, Update,
};
use portcullis_core::guard::{ChangeRequest, GroupRule, RequestStatus};
use portcullis_core::{Action, ApiToken, AuditEvent, Environment, Grant, GrantKey, TargetId, Timestamp};
use portcullis_store::seed::{self, Attr, Item};
use portcullis_store::{
    Actor, AuditQuery, Decided, LeaseClaim, LeaseHolder, NOTICE_LEASE, Notice, OutboxStatus, Settlement, Store, StoreError,
    Upsert, UpsertDecision, Upserted, grant_event as event, sweeper_actor as sweeper,
};
use portcullis_store::{from_millis as from_ms, millis as ms};

use crate::CallCounter;

/// How many times a write that lost to a concurrent one is read and tried again.
const ATTEMPTS: u32 = 8;
/// How long records kept only for deduplication or inspection live before DynamoDB's TTL
/// collects them.
const KEEP: time::Duration = time::Duration::days(30);

/// Where the grants of each environment live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableNames {
    /// A table name, or a template containing `{env}` (e.g. `ip-whitelist-{env}`).
    pub grants: String,
    /// portcullis's own table.
    pub meta: String,
}

impl TableNames {
    /// Grants in `grants` (a name or a `{env}` template); our table is `{grants}-portcullis`,
    /// with `{env}` and the separator before it left out of a template.
    pub fn new(grants: &str, meta: Option<&str>) -> TableNames {
        let meta = meta.map(str::to_string).unwrap_or_else(|| {
            let base = grants.replace("{env}", "");
            let base = base.trim_end_matches(['-', '_', '.']);
            format!("{}-portcullis", if base.is_empty() { "portcullis" } else { base })
        });
        TableNames { grants: grants.to_string(), meta }
    }

    pub fn grants_table(&self, env: &Environment) -> String {
        self.grants.replace("{env}", env.as_str())
    }
}

/// What `init` found and made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitReport {
    pub created: Vec<String>,
    pub existing: Vec<String>,
    /// Things about existing tables worth knowing (e.g. no stream), left as they are.
    pub warnings: Vec<String>,
}

/// The DynamoDB store.
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    tables: TableNames,
    /// The environments this process knows, whose tables `grants(None)` and `audit(None)` read.
    environments: Vec<Environment>,
    instance: String,
    /// When `next_expiry` last scanned every table (`index`): at most once a minute.
    last_full_check: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    calls: CallCounter,
}

/// Why a DynamoDB call failed, as the store cares.
enum Failure {
    /// A condition did not hold: someone changed the item since we read it.
    Conflict,
    Store(StoreError),
}

fn failure(table: &str, err: aws_sdk_dynamodb::Error) -> Failure {
    use aws_sdk_dynamodb::Error as E;
    match err {
        E::ConditionalCheckFailedException(_) => Failure::Conflict,
        E::TransactionCanceledException(e)
            if e.cancellation_reasons().iter().any(|r| r.code() == Some("ConditionalCheckFailed")) =>
        {
            Failure::Conflict
        }
        E::TransactionCanceledException(e)
            if e.cancellation_reasons().iter().all(|r| matches!(r.code(), None | Some("None") | Some("TransactionConflict"))) =>
        {
            Failure::Conflict
        }
        E::ResourceNotFoundException(_) => Failure::Store(StoreError::Missing { location: format!("dynamodb:{table}") }),
        other => Failure::Store(StoreError::Remote {
            location: format!("dynamodb:{table}"),
            message: aws_sdk_dynamodb::error::DisplayErrorContext(&other).to_string(),
        }),
    }
}

impl From<Failure> for StoreError {
    fn from(f: Failure) -> StoreError {
        match f {
            Failure::Conflict => StoreError::Remote { location: "dynamodb".into(), message: "conditional write failed".into() },
            Failure::Store(e) => e,
        }
    }
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// An item of ours as the SDK wants it.
fn to_sdk(item: &Item) -> HashMap<String, AttributeValue> {
    item.iter()
        .filter_map(|(k, v)| match v {
            Attr::S(x) => Some((k.clone(), s(x))),
            Attr::N(x) => Some((k.clone(), AttributeValue::N(x.clone()))),
            Attr::Other => None,
        })
        .collect()
}

/// An item from the SDK as the seed codec reads it.
pub fn from_sdk(item: &HashMap<String, AttributeValue>) -> Item {
    item.iter()
        .map(|(k, v)| {
            let v = match v {
                AttributeValue::S(x) => Attr::S(x.clone()),
                AttributeValue::N(x) => Attr::N(x.clone()),
                _ => Attr::Other,
            };
            (k.clone(), v)
        })
        .collect()
}

fn get_s(item: &HashMap<String, AttributeValue>, k: &str) -> Option<String> {
    item.get(k).and_then(|v| v.as_s().ok()).cloned()
}

fn get_n(item: &HashMap<String, AttributeValue>, k: &str) -> Option<i64> {
    item.get(k).and_then(|v| v.as_n().ok()).and_then(|v| v.parse().ok())
}

/// A condition that holds while an item is exactly as it was read (absent included).
struct Expr {
    text: String,
    names: HashMap<String, String>,
    values: HashMap<String, AttributeValue>,
}

impl Expr {
    fn new() -> Expr {
        Expr { text: String::new(), names: HashMap::new(), values: HashMap::new() }
    }

    fn name(&mut self, attr: &str) -> String {
        let key = format!("#n{}", self.names.len());
        self.names.insert(key.clone(), attr.to_string());
        key
    }

    fn value(&mut self, v: AttributeValue) -> String {
        let key = format!(":v{}", self.values.len());
        self.values.insert(key.clone(), v);
        key
    }

    fn and(&mut self, clause: String) {
        if !self.text.is_empty() {
            self.text.push_str(" AND ");
        }
        self.text.push_str(&clause);
    }

    /// The grant item is unchanged since it was read as `old` (`None`: it did not exist).
    fn unchanged(old: Option<&HashMap<String, AttributeValue>>) -> Expr {
        let mut e = Expr::new();
        match old {
            None => {
                let k = e.name(seed::IP_ADDRESS);
                e.and(format!("attribute_not_exists({k})"));
            }
            Some(old) => {
                for attr in [seed::ADDED_AT, seed::EXPIRES_AT, seed::TTL, seed::USER_ID, seed::DESCRIPTION, seed::REMOVAL] {
                    let k = e.name(attr);
                    match old.get(attr) {
                        Some(v) => {
                            let v = e.value(v.clone());
                            e.and(format!("{k} = {v}"));
                        }
                        None => e.and(format!("attribute_not_exists({k})")),
                    }
                }
            }
        }
        e
    }
}

/// Builds transaction items; every write of one change goes in one transaction.
#[derive(Default)]
struct Tx {
    items: Vec<TransactWriteItem>,
}

impl Tx {
    fn put(&mut self, table: &str, item: HashMap<String, AttributeValue>, cond: Option<Expr>) {
        let mut b = Put::builder().table_name(table).set_item(Some(item));
        if let Some(c) = cond {
            b = b
                .condition_expression(c.text)
                .set_expression_attribute_names((!c.names.is_empty()).then_some(c.names))
                .set_expression_attribute_values((!c.values.is_empty()).then_some(c.values));
        }
        self.items.push(TransactWriteItem::builder().put(b.build().expect("put has table and item")).build());
    }

    fn update(&mut self, table: &str, key: HashMap<String, AttributeValue>, set: &str, mut expr: Expr) {
        let b = Update::builder()
            .table_name(table)
            .set_key(Some(key))
            .update_expression(set)
            .set_condition_expression((!expr.text.is_empty()).then(|| std::mem::take(&mut expr.text)))
            .set_expression_attribute_names((!expr.names.is_empty()).then_some(expr.names))
            .set_expression_attribute_values((!expr.values.is_empty()).then_some(expr.values));
        self.items.push(TransactWriteItem::builder().update(b.build().expect("update has table, key, expression")).build());
    }

    fn delete(&mut self, table: &str, key: HashMap<String, AttributeValue>) {
        let b = Delete::builder().table_name(table).set_key(Some(key));
        self.items.push(TransactWriteItem::builder().delete(b.build().expect("delete has table and key")).build());
    }
}

fn meta_key(pk: &str, sk: &str) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_string(), s(pk)), ("sk".to_string(), s(sk))])
}

fn padded(id: i64) -> String {
    format!("{id:020}")
}

/// A grant item as read: the raw item and the grant it holds.
struct Read {
    raw: HashMap<String, AttributeValue>,
    grant: Result<Grant, seed::ItemError>,
}

impl Read {
    fn removal(&self) -> Option<String> {
        get_s(&self.raw, seed::REMOVAL)
    }

    /// The grant, when the item is one (readable, and not being deleted by us).
    fn live_grant(&self) -> Option<&Grant> {
        if self.removal().is_some() {
            return None;
        }
        self.grant.as_ref().ok()
    }
}

impl DynamoStore {
    /// A store over `tables`, for the `environments` this process knows.
    pub fn new(sdk: &SdkConfig, tables: TableNames, environments: Vec<Environment>) -> DynamoStore {
        let instance = portcullis_store::instance_name();
        let calls = CallCounter::default();
        let config = aws_sdk_dynamodb::config::Builder::from(sdk).interceptor(calls.clone()).build();
        let client = Client::from_conf(config);
        DynamoStore { client, tables, environments, instance, last_full_check: Default::default(), calls }
    }

    /// The DynamoDB calls this store has made, by operation.
    pub fn calls(&self) -> &CallCounter {
        &self.calls
    }

    /// The same store under another instance name (tests run several "processes" in one).
    pub fn with_instance(mut self, instance: &str) -> DynamoStore {
        self.instance = instance.to_string();
        self
    }

    pub fn tables(&self) -> &TableNames {
        &self.tables
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Every grants table this process reads, one per known environment (or the one table).
    pub fn grants_tables(&self) -> BTreeMap<String, Vec<Environment>> {
        let mut out: BTreeMap<String, Vec<Environment>> = BTreeMap::new();
        for env in &self.environments {
            out.entry(self.tables.grants_table(env)).or_default().push(env.clone());
        }
        out
    }

    fn meta(&self) -> &str {
        &self.tables.meta
    }

    /// Creates what is missing: each grants table (TTL on `ttl`, stream with new and old
    /// images) and our own table. Existing tables are left as they are.
    pub async fn init(&self) -> Result<InitReport, StoreError> {
        let mut report = InitReport::default();
        for table in self.grants_tables().into_keys() {
            self.ensure_table(&table, ["ip_address", "environment"], seed::TTL, true, &mut report).await?;
        }
        let meta = self.meta().to_string();
        self.ensure_table(&meta, ["pk", "sk"], "gc_at", false, &mut report).await?;
        Ok(report)
    }

    async fn ensure_table(
        &self,
        table: &str,
        keys: [&str; 2],
        ttl_attr: &str,
        stream: bool,
        report: &mut InitReport,
    ) -> Result<(), StoreError> {
        let err = |e: aws_sdk_dynamodb::Error| StoreError::from(failure(table, e));
        match self.client.describe_table().table_name(table).send().await {
            Ok(out) => {
                report.existing.push(table.to_string());
                let t = out.table();
                if stream && t.and_then(|t| t.latest_stream_arn()).is_none() {
                    report.warnings.push(format!(
                        "{table} has no stream: portcullis serve will not see changes other writers make \
                         (enable NEW_AND_OLD_IMAGES to get them)"
                    ));
                }
                return Ok(());
            }
            Err(e) => match failure(table, e.into()) {
                Failure::Store(StoreError::Missing { .. }) => {}
                other => return Err(other.into()),
            },
        }
        let attr = |name: &str| {
            AttributeDefinition::builder().attribute_name(name).attribute_type(ScalarAttributeType::S).build().expect("complete")
        };
        let key = |name: &str, kind| KeySchemaElement::builder().attribute_name(name).key_type(kind).build().expect("complete");
        let mut create = self
            .client
            .create_table()
            .table_name(table)
            .attribute_definitions(attr(keys[0]))
            .attribute_definitions(attr(keys[1]))
            .key_schema(key(keys[0], KeyType::Hash))
            .key_schema(key(keys[1], KeyType::Range))
            .billing_mode(BillingMode::PayPerRequest);
        if stream {
            create = create.stream_specification(
                StreamSpecification::builder()
                    .stream_enabled(true)
                    .stream_view_type(StreamViewType::NewAndOldImages)
                    .build()
                    .expect("complete"),
            );
        }
        create.send().await.map_err(|e| err(e.into()))?;
        // Real DynamoDB creates tables asynchronously; TTL can only be set on an active one.
        for _ in 0..120 {
            let status = self.client.describe_table().table_name(table).send().await.map_err(|e| err(e.into()))?;
            if status.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        self.client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder().enabled(true).attribute_name(ttl_attr).build().expect("complete"),
            )
            .send()
            .await
            .map_err(|e| err(e.into()))?;
        report.created.push(table.to_string());
        Ok(())
    }

    /// Checks that every table exists, so a missing one is reported before anything runs.
    pub async fn check(&self) -> Result<(), StoreError> {
        let mut tables: Vec<String> = self.grants_tables().into_keys().collect();
        tables.push(self.meta().to_string());
        for table in tables {
            self.client
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .map_err(|e| StoreError::from(failure(&table, e.into())))?;
        }
        Ok(())
    }

    async fn read(&self, key: &GrantKey) -> Result<Option<Read>, StoreError> {
        let table = self.tables.grants_table(&key.environment);
        let out = self
            .client
            .get_item()
            .table_name(&table)
            .set_key(Some(to_sdk(&seed::key_item(key))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::from(failure(&table, e.into())))?;
        Ok(out.item.map(|raw| {
            let grant = seed::from_item(&from_sdk(&raw));
            Read { raw, grant }
        }))
    }

    /// Every item of the grants tables in scope, read consistently.
    async fn scan(&self, environment: Option<&Environment>) -> Result<Vec<Read>, StoreError> {
        let tables: Vec<(String, Vec<Environment>)> = match environment {
            Some(env) => vec![(self.tables.grants_table(env), vec![env.clone()])],
            None => self.grants_tables().into_iter().collect(),
        };
        let mut out = Vec::new();
        for (table, envs) in tables {
            let mut start = None;
            loop {
                let page = self
                    .client
                    .scan()
                    .table_name(&table)
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| StoreError::from(failure(&table, e.into())))?;
                for raw in page.items() {
                    // A table shared by environments may hold ones this process does not know.
                    let wanted = get_s(raw, seed::ENVIRONMENT).is_some_and(|e| envs.iter().any(|k| k.as_str() == e));
                    if !wanted {
                        continue;
                    }
                    let grant = seed::from_item(&from_sdk(raw));
                    if let Err(e) = &grant {
                        tracing::warn!(table = %table, item = ?get_s(raw, seed::IP_ADDRESS), error = %e,
                            "skipping an item that is not a readable grant");
                    }
                    out.push(Read { raw: raw.clone(), grant });
                }
                match page.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// Hands out `count` consecutive audit ids.
    async fn allocate(&self, count: i64) -> Result<i64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(self.meta())
            .set_key(Some(meta_key("counter", "audit")))
            .update_expression("ADD #n :k")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":k", n(count))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
        let last = out.attributes.as_ref().and_then(|a| get_n(a, "n")).ok_or_else(|| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: "the audit counter has no number".into(),
        })?;
        Ok(last - count + 1)
    }

    /// Adds an audit event (and its notice, and the history mark) to a transaction.
    fn append(&self, tx: &mut Tx, event: &AuditEvent, now: Timestamp, history: &mut bool) {
        let json = serde_json::to_string(event).expect("audit events serialise");
        let mut audit = meta_key(&format!("audit#{}", event.environment), &padded(event.id));
        audit.insert("id".into(), n(event.id));
        audit.insert("event".into(), s(json.clone()));
        tx.put(self.meta(), audit, None);
        if portcullis_store::is_announced(event.action) {
            let mut notice = meta_key("outbox", &padded(event.id));
            notice.insert("event".into(), s(json));
            notice.insert("claimed_by".into(), s(self.instance.clone()));
            notice.insert("lease_until_ms".into(), n(ms(event.at + NOTICE_LEASE)));
            notice.insert("next_attempt_ms".into(), n(ms(event.at)));
            notice.insert("attempts".into(), n(0));
            tx.put(self.meta(), notice, None);
        }
        if !*history && portcullis_store::is_grant_change(event.action) {
            *history = true;
            let mut h = meta_key("history", &event.environment.to_string());
            h.insert("first_change_ms".into(), n(ms(now)));
            tx.put(self.meta(), h, None);
        }
    }

    /// Records the partition an event is filed under, for `audit(None)`.
    fn file(&self, tx: &mut Tx, environment: &str, done: &mut BTreeSet<String>) {
        if done.insert(environment.to_string()) {
            tx.put(self.meta(), meta_key("audit-envs", environment), None);
        }
    }

    async fn commit(&self, tx: Tx) -> Result<(), Failure> {
        self.client
            .transact_write_items()
            .set_transact_items(Some(tx.items))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failure(self.meta(), e.into()))
    }

    /// Marks a grant item for deletion in a transaction that records (and announces) why.
    async fn mark_and_record(
        &self,
        read: &Read,
        grant: &Grant,
        mut event: AuditEvent,
        kind: &str,
    ) -> Result<Option<String>, StoreError> {
        event.id = self.allocate(1).await?;
        let mark = format!("{kind}:{}", event.id);
        let table = self.tables.grants_table(&grant.environment);
        let mut tx = Tx::default();
        let mut cond = Expr::unchanged(Some(&read.raw));
        let (k, v) = (cond.name(seed::REMOVAL), cond.value(s(mark.clone())));
        tx.update(&table, to_sdk(&seed::key_item(&grant.key())), &format!("SET {k} = {v}"), cond);
        // The grant's hold and its expiry go with it.
        let mut e = Expr::new();
        let remove = format!("REMOVE {}", e.name(&index::hold_attr(&grant.cidr)));
        tx.update(self.meta(), meta_key("quota", &format!("{}#{}", grant.environment, grant.owner.id)), &remove, e);
        self.index_expiry(&mut tx, Some(grant), None);
        let (mut history, mut filed) = (false, BTreeSet::new());
        self.append(&mut tx, &event, event.at, &mut history);
        self.file(&mut tx, &event.environment.to_string(), &mut filed);
        match self.commit(tx).await {
            Ok(()) => Ok(Some(mark)),
            Err(Failure::Conflict) => Ok(None),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// Deletes an item we marked, if it still carries our mark.
    async fn delete_marked(&self, key: &GrantKey, mark: &str) -> Result<(), StoreError> {
        let table = self.tables.grants_table(&key.environment);
        let result = self
            .client
            .delete_item()
            .table_name(&table)
            .set_key(Some(to_sdk(&seed::key_item(key))))
            .condition_expression("#r = :m")
            .expression_attribute_names("#r", seed::REMOVAL)
            .expression_attribute_values(":m", s(mark))
            .send()
            .await;
        match result.map_err(|e| failure(&table, e.into())) {
            Ok(_) | Err(Failure::Conflict) => Ok(()),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// One attempt at an upsert; `None` when it lost to a concurrent change.
    async fn try_upsert(&self, request: &Upsert) -> Result<Option<Upserted>, StoreError> {
        let Upsert { grant: asked, actor, max_grants_per_user } = request;
        let mut asked = asked.clone();
        asked.created_at = seed::to_micros(asked.created_at);
        asked.expires_at = asked.expires_at.map(seed::to_micros);
        let now = asked.created_at;
        let env = asked.environment.clone();
        let table = self.tables.grants_table(&env);
        let read = self.read(&asked.key()).await?;
        let request = Upsert { grant: asked, actor: actor.clone(), max_grants_per_user: *max_grants_per_user };
        let mut tx = Tx::default();
        let quota_key = |owner: &str| meta_key("quota", &format!("{env}#{owner}"));
        let decided = match request.decide(read.as_ref().and_then(Read::live_grant)) {
            UpsertDecision::Refresh(decided) => {
                // The owner's hold follows the refreshed expiry.
                let mut e = Expr::new();
                let set = format!("SET {}", DynamoStore::hold_sets(&mut e, [&decided.stored], false));
                tx.update(self.meta(), quota_key(&decided.stored.owner.id), &set, e);
                decided
            }
            UpsertDecision::Add { expired } => {
                let owner = &request.grant.owner.id;
                let holds = self.holds(&env, owner, now).await?;
                let (version, attrs) = (holds.version, holds.attrs);
                // The holds count; a Scan counts again where they are missing (an item older
                // than holds) or would refuse (a hold another writer's delete left behind).
                let (held, theirs) = match holds.live {
                    Some(live) if live < *max_grants_per_user => (live, None),
                    _ => {
                        let all = self.scan(Some(&env)).await?;
                        let theirs: Vec<Grant> = all
                            .iter()
                            .filter_map(Read::live_grant)
                            .filter(|g| g.owner.id == *owner && g.is_live(now) && g.cidr != request.grant.cidr)
                            .cloned()
                            .collect();
                        (theirs.len(), Some(theirs))
                    }
                };
                let decided = request.add(expired, held)?;
                // Two concurrent adds by one owner: only one may pass the count it read.
                let mut cond = Expr::new();
                let vk = cond.name("v");
                match version {
                    Some(v) => {
                        let vv = cond.value(n(v));
                        cond.and(format!("{vk} = {vv}"));
                    }
                    None => cond.and(format!("attribute_not_exists({vk})")),
                }
                let one = cond.value(n(1));
                let kept: Vec<&Grant> = std::iter::once(&decided.stored).chain(theirs.iter().flatten()).collect();
                let holds = DynamoStore::hold_sets(&mut cond, kept.iter().copied(), true);
                let mut set = format!("ADD {vk} {one} SET {holds}");
                // Where a Scan counted, holds it did not find (left by another writer's
                // delete) go, so the next add counts by holds again.
                if theirs.is_some() {
                    let keep: BTreeSet<String> = kept.iter().map(|g| index::hold_attr(&g.cidr)).collect();
                    let stale: Vec<String> = attrs.iter().filter(|a| !keep.contains(*a)).map(|a| cond.name(a)).collect();
                    if !stale.is_empty() {
                        set.push_str(&format!(" REMOVE {}", stale.join(", ")));
                    }
                }
                tx.update(self.meta(), quota_key(owner), &set, cond);
                decided
            }
        };
        let Decided { stored, previous, mut events } = decided;
        self.index_expiry(&mut tx, read.as_ref().and_then(|r| r.grant.as_ref().ok()), Some(&stored));
        let first = self.allocate(events.len() as i64).await?;
        tx.put(&table, to_sdk(&seed::to_item(&stored)), Some(Expr::unchanged(read.as_ref().map(|r| &r.raw))));
        let (mut history, mut filed) = (false, BTreeSet::new());
        for (i, e) in events.iter_mut().enumerate() {
            e.id = first + i as i64;
            self.append(&mut tx, e, now, &mut history);
            self.file(&mut tx, &e.environment.to_string(), &mut filed);
        }
        match self.commit(tx).await {
            Ok(()) => Ok(Some(Upserted { grant: stored, previous })),
            Err(Failure::Conflict) => Ok(None),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// Puts an item into our table if `condition` holds: false when it did not.
    async fn put_if<const N: usize>(
        &self,
        item: HashMap<String, AttributeValue>,
        condition: &str,
        values: [(&str, AttributeValue); N],
    ) -> Result<bool, StoreError> {
        let mut put = self.client.put_item().table_name(self.meta()).set_item(Some(item)).condition_expression(condition);
        for (name, value) in values {
            put = put.expression_attribute_values(name, value);
        }
        match put.send().await.map_err(|e| failure(self.meta(), e.into())) {
            Ok(_) => Ok(true),
            Err(Failure::Conflict) => Ok(false),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    fn contended(&self) -> StoreError {
        StoreError::Contended { location: format!("dynamodb:{}", self.tables.grants), attempts: ATTEMPTS }
    }

    async fn record_with(&self, mut event: AuditEvent, once: Option<&str>) -> Result<bool, StoreError> {
        event.id = self.allocate(1).await?;
        let mut tx = Tx::default();
        let (mut history, mut filed) = (false, BTreeSet::new());
        self.append(&mut tx, &event, event.at, &mut history);
        self.file(&mut tx, &event.environment.to_string(), &mut filed);
        if let Some(key) = once {
            let mut item = meta_key("once", key);
            item.insert("audit_id".into(), n(event.id));
            item.insert("gc_at".into(), n((event.at + KEEP).unix_timestamp()));
            let mut cond = Expr::new();
            let k = cond.name("pk");
            cond.and(format!("attribute_not_exists({k})"));
            tx.put(self.meta(), item, Some(cond));
        }
        match self.commit(tx).await {
            Ok(()) => Ok(true),
            Err(Failure::Conflict) if once.is_some() => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    /// Every item under one partition of our table, in key order.
    async fn partition(
        &self,
        pk: &str,
        newest_first: bool,
        limit: Option<usize>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        loop {
            let page = self
                .client
                .query()
                .table_name(self.meta())
                .key_condition_expression("pk = :p")
                .expression_attribute_values(":p", s(pk))
                .consistent_read(true)
                .scan_index_forward(!newest_first)
                .set_limit(limit.map(|l| l.min(1000) as i32))
                .set_exclusive_start_key(start)
                .send()
                .await
                .map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
            out.extend(page.items().iter().cloned());
            if limit.is_some_and(|l| out.len() >= l) {
                out.truncate(limit.unwrap_or(usize::MAX));
                return Ok(out);
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => return Ok(out),
            }
        }
    }

    /// One item of our own table, read consistently.
    pub(crate) async fn meta_item(&self, pk: &str, sk: &str) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(self.meta())
            .set_key(Some(meta_key(pk, sk)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
        Ok(out.item)
    }

    /// One audit partition's newest `limit` events that `query` matches, older than its page
    /// start: read newest first a page at a time (the key narrows the page; the action and
    /// user are filtered as read) until `limit` match or the partition ends.
    async fn audit_partition(&self, pk: &str, query: &AuditQuery, limit: usize) -> Result<Vec<AuditEvent>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        let (condition, bound) = match query.before {
            Some(before) => ("pk = :p AND sk < :b", Some(s(padded(before)))),
            None => ("pk = :p", None),
        };
        let filtered = query.action.is_some() || query.user.is_some();
        while out.len() < limit {
            // Unfiltered, every event read is kept: read no more than are wanted. Filtered,
            // most may not be: read full pages rather than many small ones.
            let page_size = if filtered { 1000 } else { (limit - out.len()).clamp(1, 1000) };
            let page = self
                .client
                .query()
                .table_name(self.meta())
                .key_condition_expression(condition)
                .expression_attribute_values(":p", s(pk))
                .consistent_read(true)
                .scan_index_forward(false)
                .limit(page_size as i32)
                .set_exclusive_start_key(start);
            let page = match &bound {
                Some(b) => page.expression_attribute_values(":b", b.clone()),
                None => page,
            };
            let page = page.send().await.map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
            for item in page.items() {
                let event = self.parse_event(item)?;
                if query.matches(&event) {
                    out.push(event);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    fn parse_event(&self, item: &HashMap<String, AttributeValue>) -> Result<AuditEvent, StoreError> {
        let json = get_s(item, "event").unwrap_or_default();
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("audit item {:?}: {e}", get_s(item, "sk")),
        })
    }

    fn token_item(&self, token: &ApiToken) -> HashMap<String, AttributeValue> {
        let mut item = meta_key("token", &token.hash);
        item.insert("token".into(), s(serde_json::to_string(token).expect("tokens serialise")));
        item.insert("id".into(), s(token.id.clone()));
        item
    }

    fn parse_token(&self, item: &HashMap<String, AttributeValue>) -> Result<ApiToken, StoreError> {
        let json = get_s(item, "token").unwrap_or_default();
        let mut token: ApiToken = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("token item {:?}: {e}", get_s(item, "id")),
        })?;
        token.hash = get_s(item, "sk").unwrap_or_default();
        Ok(token)
    }

    /// Writes a token item (conditional on `expect`: absent, or exactly that JSON) with its
    /// audit event.
    async fn write_token(&self, token: &ApiToken, expect: Option<&str>, event: AuditEvent) -> Result<(), StoreError> {
        let mut event = event;
        event.id = self.allocate(1).await?;
        let mut tx = Tx::default();
        let (mut history, mut filed) = (false, BTreeSet::new());
        self.append(&mut tx, &event, event.at, &mut history);
        self.file(&mut tx, &event.environment.to_string(), &mut filed);
        let mut cond = Expr::new();
        match expect {
            None => {
                let k = cond.name("pk");
                cond.and(format!("attribute_not_exists({k})"));
            }
            Some(json) => {
                let (k, v) = (cond.name("token"), cond.value(s(json)));
                cond.and(format!("{k} = {v}"));
            }
        }
        tx.put(self.meta(), self.token_item(token), Some(cond));
        self.commit(tx).await.map_err(|f| match f {
            Failure::Conflict => self.contended(),
            Failure::Store(e) => e,
        })
    }

    /// Numbers audit events and adds them (with their notices) to a transaction.
    async fn append_all(&self, tx: &mut Tx, events: &mut [AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let first = self.allocate(events.len() as i64).await?;
        let (mut history, mut filed) = (false, BTreeSet::new());
        for (i, event) in events.iter_mut().enumerate() {
            event.id = first + i as i64;
            self.append(tx, event, event.at, &mut history);
            self.file(tx, &event.environment.to_string(), &mut filed);
        }
        Ok(())
    }

    fn request_item(&self, request: &ChangeRequest) -> HashMap<String, AttributeValue> {
        let mut item = meta_key("request", &request.id);
        item.insert("body".into(), s(serde_json::to_string(request).expect("requests serialise")));
        item.insert("version".into(), n(request.version));
        item.insert("status".into(), s(request.status.as_str()));
        item
    }

    fn parse_request(&self, item: &HashMap<String, AttributeValue>) -> Result<ChangeRequest, StoreError> {
        serde_json::from_str(&get_s(item, "body").unwrap_or_default()).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("change request {:?}: {e}", get_s(item, "sk")),
        })
    }

    /// Writes a request item under `cond` with its audit events, in one transaction (plus
    /// `extra`); `false` when a condition did not hold.
    async fn write_request(
        &self,
        request: &ChangeRequest,
        cond: Expr,
        extra: Option<(HashMap<String, AttributeValue>, Expr)>,
        mut events: Vec<AuditEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = Tx::default();
        self.append_all(&mut tx, &mut events).await?;
        if let Some((item, cond)) = extra {
            tx.put(self.meta(), item, Some(cond));
        }
        tx.put(self.meta(), self.request_item(request), Some(cond));
        match self.commit(tx).await {
            Ok(()) => Ok(true),
            Err(Failure::Conflict) => Ok(false),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// How far a stream shard has been read (its last processed sequence number).
    pub async fn checkpoint(&self, shard: &str) -> Result<Option<String>, StoreError> {
        Ok(self.meta_item("checkpoint", shard).await?.as_ref().and_then(|i| get_s(i, "sequence")))
    }

    /// Whether any shard of a stream has a checkpoint (so new shards are read from their start).
    pub async fn has_checkpoints(&self, stream_arn: &str) -> Result<bool, StoreError> {
        let items = self.partition("checkpoint", false, None).await?;
        Ok(items.iter().any(|i| get_s(i, "sk").is_some_and(|k| k.starts_with(stream_arn))))
    }

    pub async fn save_checkpoint(&self, shard: &str, sequence: &str, now: Timestamp) -> Result<(), StoreError> {
        let mut item = meta_key("checkpoint", shard);
        item.insert("sequence".into(), s(sequence));
        item.insert("at_ms".into(), n(ms(now)));
        // Shards live 24 hours; a checkpoint untouched for the retention period is garbage.
        item.insert("gc_at".into(), n((now + KEEP).unix_timestamp()));
        self.client
            .put_item()
            .table_name(self.meta())
            .set_item(Some(item))
            .send()
            .await
            .map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
        Ok(())
    }
}

#[async_trait]
impl Store for DynamoStore {
    async fn upsert(&self, request: Upsert) -> Result<Upserted, StoreError> {
        for _ in 0..ATTEMPTS {
            if let Some(done) = self.try_upsert(&request).await? {
                return Ok(done);
            }
        }
        Err(self.contended())
    }

    async fn remove(&self, key: &GrantKey, actor: &Actor, now: Timestamp) -> Result<Option<Grant>, StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(read) = self.read(key).await? else { return Ok(None) };
            let Some(old) = read.live_grant().cloned() else {
                // Already being deleted by someone (or unreadable: refuse to guess).
                if let (Some(mark), None) = (read.removal(), read.grant.as_ref().err()) {
                    self.delete_marked(key, &mark).await?;
                }
                return Ok(None);
            };
            let reason = format!("removed by {}", actor.name);
            let e = event(now, actor, Action::Removed, &old, Some(old.clone()), None, reason);
            if let Some(mark) = self.mark_and_record(&read, &old, e, "removed").await? {
                self.delete_marked(key, &mark).await?;
                return Ok(Some(old));
            }
        }
        Err(self.contended())
    }

    async fn grant(&self, key: &GrantKey) -> Result<Option<Grant>, StoreError> {
        Ok(self.read(key).await?.as_ref().and_then(Read::live_grant).cloned())
    }

    async fn grants(&self, environment: Option<&Environment>) -> Result<Vec<Grant>, StoreError> {
        let mut out: Vec<Grant> = self.scan(environment).await?.iter().filter_map(Read::live_grant).cloned().collect();
        out.sort_by(|a, b| (a.environment.as_str(), a.cidr).cmp(&(b.environment.as_str(), b.cidr)));
        Ok(out)
    }

    async fn expire(&self, now: Timestamp, environments: &BTreeSet<Environment>) -> Result<Vec<Grant>, StoreError> {
        let mut expired = Vec::new();
        for read in self.scan(None).await? {
            if let Some(mark) = read.removal() {
                // A deletion of ours that was recorded but not finished (a crash): finish it.
                if let Ok(g) = &read.grant {
                    self.delete_marked(&g.key(), &mark).await?;
                }
                continue;
            }
            let Ok(g) = &read.grant else { continue };
            if !environments.contains(&g.environment) {
                continue;
            }
            let Some(at) = g.expires_at.filter(|at| *at <= now) else { continue };
            let reason = format!("expired at {at}");
            let e = event(now, &sweeper(), Action::Expired, g, Some(g.clone()), None, reason);
            // Losing the race means someone refreshed, removed or expired it meanwhile.
            if let Some(mark) = self.mark_and_record(&read, g, e, "expired").await? {
                self.delete_marked(&g.key(), &mark).await?;
                expired.push(g.clone());
            }
        }
        Ok(expired)
    }

    async fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        if self.full_check_due() { self.full_expiry_check().await } else { self.next_indexed_expiry().await }
    }

    async fn environments_with_history(&self) -> Result<BTreeSet<Environment>, StoreError> {
        let items = self.partition("history", false, None).await?;
        Ok(items.iter().filter_map(|i| get_s(i, "sk")).filter_map(|e| Environment::parse(&e).ok()).collect())
    }

    async fn record(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.record_with(event, None).await.map(|_| ())
    }

    async fn record_once(&self, event: AuditEvent, key: &str) -> Result<bool, StoreError> {
        self.record_with(event, Some(key)).await
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = query.limit.min(AuditQuery::MAX_LIMIT);
        let partitions: BTreeSet<String> = match &query.environment {
            Some(env) => BTreeSet::from([env.to_string()]),
            None => self.partition("audit-envs", false, None).await?.iter().filter_map(|i| get_s(i, "sk")).collect(),
        };
        let mut events = Vec::new();
        for env in partitions {
            events.extend(self.audit_partition(&format!("audit#{env}"), query, limit).await?);
        }
        events.sort_by_key(|e| std::cmp::Reverse(e.id));
        events.truncate(limit);
        Ok(events)
    }

    async fn acquire_lease(&self, claim: LeaseClaim<'_>) -> Result<bool, StoreError> {
        let mut item = meta_key("lease", claim.name);
        item.insert("holder".into(), s(claim.holder));
        item.insert("until_ms".into(), n(ms(claim.now + claim.duration)));
        item.insert("gc_at".into(), n((claim.now + KEEP).unix_timestamp()));
        let condition = "attribute_not_exists(pk) OR holder = :h OR until_ms <= :now";
        self.put_if(item, condition, [(":h", s(claim.holder)), (":now", n(ms(claim.now)))]).await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let result = self
            .client
            .delete_item()
            .table_name(self.meta())
            .set_key(Some(meta_key("lease", name)))
            .condition_expression("holder = :h")
            .expression_attribute_values(":h", s(holder))
            .send()
            .await;
        match result.map_err(|e| failure(self.meta(), e.into())) {
            Ok(_) | Err(Failure::Conflict) => Ok(()),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    async fn lease_holder(&self, name: &str, now: Timestamp) -> Result<Option<LeaseHolder>, StoreError> {
        let Some(item) = self.meta_item("lease", name).await? else { return Ok(None) };
        let (holder, until) = (get_s(&item, "holder").unwrap_or_default(), from_ms(get_n(&item, "until_ms").unwrap_or(0)));
        Ok((until > now).then_some(LeaseHolder { holder, until }))
    }

    async fn claim_once(&self, key: &str, now: Timestamp, until: Timestamp) -> Result<bool, StoreError> {
        let mut item = meta_key("claim", key);
        item.insert("until_ms".into(), n(ms(until)));
        item.insert("gc_at".into(), n((until + time::Duration::hours(1)).unix_timestamp()));
        self.put_if(item, "attribute_not_exists(pk) OR until_ms <= :now", [(":now", n(ms(now)))]).await
    }

    async fn create_token(&self, token: ApiToken, actor: &Actor) -> Result<(), StoreError> {
        let event = portcullis_store::token_event(token.created_at, actor, Action::TokenCreated, &token);
        self.write_token(&token, None, event).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        self.meta_item("token", hash).await?.as_ref().map(|i| self.parse_token(i)).transpose()
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut tokens =
            self.partition("token", false, None).await?.iter().map(|i| self.parse_token(i)).collect::<Result<Vec<_>, _>>()?;
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn revoke_token(&self, id: &str, actor: &Actor, now: Timestamp) -> Result<Option<ApiToken>, StoreError> {
        let Some(token) = self.tokens().await?.into_iter().find(|t| t.id == id) else {
            return Ok(None);
        };
        if token.revoked_at.is_some() {
            return Ok(Some(token));
        }
        let before = serde_json::to_string(&token).expect("tokens serialise");
        let revoked = ApiToken { revoked_at: Some(now), ..token };
        let event = portcullis_store::token_event(now, actor, Action::TokenRevoked, &revoked);
        self.write_token(&revoked, Some(&before), event).await?;
        Ok(Some(revoked))
    }

    fn instance(&self) -> &str {
        &self.instance
    }

    async fn claim_notice(&self, now: Timestamp) -> Result<Option<Notice>, StoreError> {
        let now_ms = ms(now);
        for _ in 0..ATTEMPTS {
            let items = self.partition("outbox", false, None).await?;
            let due = items.iter().find(|i| {
                let mine = get_s(i, "claimed_by").as_deref() == Some(self.instance.as_str());
                get_n(i, "next_attempt_ms").unwrap_or(0) <= now_ms && (mine || get_n(i, "lease_until_ms").unwrap_or(0) <= now_ms)
            });
            let Some(item) = due else { return Ok(None) };
            let sk = get_s(item, "sk").unwrap_or_default();
            let result = self
                .client
                .update_item()
                .table_name(self.meta())
                .set_key(Some(meta_key("outbox", &sk)))
                .update_expression("SET claimed_by = :me, lease_until_ms = :until")
                .condition_expression("claimed_by = :was AND lease_until_ms = :lease")
                .expression_attribute_values(":me", s(self.instance.clone()))
                .expression_attribute_values(":until", n(ms(now + NOTICE_LEASE)))
                .expression_attribute_values(":was", item.get("claimed_by").cloned().unwrap_or_else(|| s("")))
                .expression_attribute_values(":lease", item.get("lease_until_ms").cloned().unwrap_or_else(|| n(0)))
                .send()
                .await;
            match result.map_err(|e| failure(self.meta(), e.into())) {
                Ok(_) => {
                    let event = self.parse_event(item)?;
                    let attempts = get_n(item, "attempts").unwrap_or(0) as u32;
                    return Ok(Some(Notice { event, attempts }));
                }
                Err(Failure::Conflict) => continue,
                Err(Failure::Store(e)) => return Err(e),
            }
        }
        Ok(None)
    }

    async fn settle_notice(&self, id: i64, settlement: Settlement, now: Timestamp) -> Result<(), StoreError> {
        let key = meta_key("outbox", &padded(id));
        let err = |e: aws_sdk_dynamodb::Error| StoreError::from(failure(self.meta(), e));
        match settlement {
            Settlement::Delivered => {
                self.client.delete_item().table_name(self.meta()).set_key(Some(key)).send().await.map_err(|e| err(e.into()))?;
            }
            Settlement::Retry { at, error } => {
                let result = self
                    .client
                    .update_item()
                    .table_name(self.meta())
                    .set_key(Some(key))
                    .update_expression(
                        "SET claimed_by = :none, lease_until_ms = :zero, next_attempt_ms = :at, last_error = :e ADD attempts :one",
                    )
                    .condition_expression("attribute_exists(pk)")
                    .expression_attribute_values(":none", s(""))
                    .expression_attribute_values(":zero", n(0))
                    .expression_attribute_values(":at", n(ms(at)))
                    .expression_attribute_values(":e", s(error))
                    .expression_attribute_values(":one", n(1))
                    .send()
                    .await;
                match result.map_err(|e| failure(self.meta(), e.into())) {
                    Ok(_) | Err(Failure::Conflict) => {}
                    Err(Failure::Store(e)) => return Err(e),
                }
            }
            Settlement::Abandoned { error } => {
                let mut tx = Tx::default();
                tx.delete(self.meta(), key);
                let mut kept = meta_key("outbox-abandoned", &padded(id));
                kept.insert("error".into(), s(error));
                kept.insert("at_ms".into(), n(ms(now)));
                kept.insert("gc_at".into(), n((now + KEEP).unix_timestamp()));
                tx.put(self.meta(), kept, None);
                self.commit(tx).await.map_err(StoreError::from)?;
            }
        }
        Ok(())
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        let items = self.partition("outbox", false, None).await?;
        let next = items
            .iter()
            .map(|i| {
                let mine = get_s(i, "claimed_by").as_deref() == Some(self.instance.as_str());
                let lease = if mine { 0 } else { get_n(i, "lease_until_ms").unwrap_or(0) };
                get_n(i, "next_attempt_ms").unwrap_or(0).max(lease)
            })
            .min();
        Ok(OutboxStatus { pending: items.len(), next_due: next.map(from_ms) })
    }

    async fn file_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError> {
        let absent = || {
            let mut e = Expr::new();
            let k = e.name("pk");
            e.and(format!("attribute_not_exists({k})"));
            e
        };
        let mut marker = meta_key("request-event", &request.event_id);
        marker.insert("id".into(), s(request.id.clone()));
        self.write_request(request, absent(), Some((marker, absent())), events).await
    }

    async fn request(&self, id: &str) -> Result<Option<ChangeRequest>, StoreError> {
        self.meta_item("request", id).await?.as_ref().map(|i| self.parse_request(i)).transpose()
    }

    async fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<ChangeRequest>, StoreError> {
        let items = self.partition("request", false, None).await?;
        let mut requests = items.iter().map(|i| self.parse_request(i)).collect::<Result<Vec<_>, _>>()?;
        requests.retain(|r| status.is_none_or(|s| r.status == s));
        requests.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(requests)
    }

    async fn update_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError> {
        let mut cond = Expr::new();
        let (k, v) = (cond.name("version"), cond.value(n(request.version.saturating_sub(1))));
        cond.and(format!("{k} = {v}"));
        self.write_request(request, cond, None, events).await
    }

    async fn baseline(&self, group: &TargetId) -> Result<Option<Vec<GroupRule>>, StoreError> {
        let Some(item) = self.meta_item("baseline", &format!("{}/{}", group.region, group.group_id)).await? else {
            return Ok(None);
        };
        serde_json::from_str(&get_s(&item, "rules").unwrap_or_default()).map(Some).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("baseline of {group}: {e}"),
        })
    }

    async fn set_baseline(&self, group: &TargetId, rules: &[GroupRule], mut events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let mut tx = Tx::default();
        self.append_all(&mut tx, &mut events).await?;
        let mut item = meta_key("baseline", &format!("{}/{}", group.region, group.group_id));
        item.insert("rules".into(), s(serde_json::to_string(rules).expect("rules serialise")));
        tx.put(self.meta(), item, None);
        self.commit(tx).await.map_err(|f| match f {
            Failure::Conflict => self.contended(),
            Failure::Store(e) => e,
        })
    }

    async fn note_own_changes(&self, keys: &[String], until: Timestamp) -> Result<(), StoreError> {
        self.note_own(keys, until).await
    }

    async fn noted_own_changes(&self, keys: &[String], now: Timestamp) -> Result<BTreeSet<String>, StoreError> {
        self.noted_own(keys, now).await
    }
}
