//! The DynamoDB store: grants in the docustack IP Whitelist Manager's table(s), everything
//! else in one table of portcullis's own. Each part of the store is a file: `grants`, `audit`,
//! `leases` (and stream checkpoints), `outbox`, `tokens`, `guard` (requests, baselines, the
//! ledger), `tables` (creating and checking them), `index` (what keeps the hot paths' cost flat).
//!
//! Grants table (`ip-whitelist-{env}`, or one table for every environment): exactly the IP
//! Whitelist Manager's schema ([`portcullis_store::ip_whitelist`]), so the old Lambda reads
//! what we write and we read what it wrote. Every change is a conditional write on the item as
//! it was read, so concurrent adds, refreshes and removes never lose an update; the loser reads
//! again and retries.
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
//! - `request`, `request-event`, `baseline`, `own`: guard's (see `guard`).
//!
//! Deleting a grant is two steps: the item is first marked (`pc_removal`) in the transaction
//! that records and announces the change, then deleted. The REMOVE stream record thus carries
//! the mark, so the stream handler knows the change was ours and was announced already; a
//! marked item is no longer a grant, so a crash between the two steps loses nothing.

mod audit;
mod grants;
mod guard;
mod index;
mod leases;
mod outbox;
mod tables;
mod tokens;

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
use portcullis_store::ip_whitelist::{self, Attr, Item};
use portcullis_store::{
    Actor, AuditQuery, Decided, LeaseClaim, LeaseHolder, NOTICE_LEASE, Notice, OutboxStatus, Settlement, StoreError, Upsert,
    UpsertDecision, Upserted, grant_event as event, sweeper_actor as sweeper,
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

/// An item from the SDK as the IP Whitelist Manager's item codec reads it.
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
                let k = e.name(ip_whitelist::IP_ADDRESS);
                e.and(format!("attribute_not_exists({k})"));
            }
            Some(old) => {
                for attr in [
                    ip_whitelist::ADDED_AT,
                    ip_whitelist::EXPIRES_AT,
                    ip_whitelist::TTL,
                    ip_whitelist::USER_ID,
                    ip_whitelist::DESCRIPTION,
                    ip_whitelist::REMOVAL,
                ] {
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
    grant: Result<Grant, ip_whitelist::ItemError>,
}

impl Read {
    fn removal(&self) -> Option<String> {
        get_s(&self.raw, ip_whitelist::REMOVAL)
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

    async fn commit(&self, tx: Tx) -> Result<(), Failure> {
        self.client
            .transact_write_items()
            .set_transact_items(Some(tx.items))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| failure(self.meta(), e.into()))
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
}
