//! What keeps the hot paths' DynamoDB cost constant, whatever the size of the grants tables:
//! two indexes in our own table, written in the same transaction as each change of ours.
//!
//! - **Expiries:** one item per grant with an expiry, `expiry` / `<microseconds:020>#<env>#<cidr>`.
//!   The sweeper's next expiry is one Query of the first item and one GetItem that checks it
//!   still stands (a stale entry is deleted and the next one read), not a Scan of every table.
//! - **Holds:** each owner's quota item (`quota` / `<env>#<owner>`, whose version already makes
//!   two adds by one owner exclusive) carries one attribute per grant, `h#<cidr>` = its expiry
//!   in microseconds (0: none). The per-user limit counts the live ones: no Scan.
//!
//! Writers other than portcullis (the IP Whitelist Manager's Lambda, the console) do not write these. So a slow
//! full check, at most once a minute, scans the tables for the next expiry and puts back what
//! the expiry index lacks; and where the holds say an add would pass the limit, a Scan counts
//! again before anyone is refused (a hold left by another writer's delete cannot refuse an add).
//! An owner's quota item written before holds existed is filled in from a Scan on their first add.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use portcullis_core::{Cidr, Environment, Grant, GrantKey, Timestamp};
use portcullis_store::StoreError;

use super::{DynamoStore, Expr, Read, Tx, failure, get_n, get_s, meta_key, n, s};

/// How often the next expiry is also found by a full Scan (and the expiry index repaired).
pub(super) const FULL_CHECK: Duration = Duration::from_secs(60);

/// The attribute that marks a quota item whose holds are complete.
const INDEXED: &str = "indexed";

fn micros(t: Timestamp) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

fn from_micros(us: i64) -> Option<Timestamp> {
    Timestamp::from_unix_timestamp_nanos(i128::from(us) * 1_000).ok()
}

/// The expiry index's key for a grant's expiry (none for a grant without one).
pub(super) fn expiry_key(grant: &Grant) -> Option<HashMap<String, AttributeValue>> {
    let at = grant.expires_at?;
    Some(meta_key("expiry", &format!("{:020}#{}#{}", micros(at), grant.environment, grant.cidr)))
}

/// The expiry index's item for a grant.
pub(super) fn expiry_item(grant: &Grant) -> Option<HashMap<String, AttributeValue>> {
    let mut item = expiry_key(grant)?;
    item.insert("env".into(), s(grant.environment.as_str()));
    item.insert("cidr".into(), s(grant.cidr.to_string()));
    Some(item)
}

/// The grant an expiry index item names, and the expiry it records.
fn indexed(item: &HashMap<String, AttributeValue>) -> Option<(GrantKey, Timestamp)> {
    let sk = get_s(item, "sk")?;
    let at = from_micros(sk.split('#').next()?.parse().ok()?)?;
    let environment = Environment::parse(&get_s(item, "env")?).ok()?;
    let cidr = Cidr::parse(&get_s(item, "cidr")?).ok()?;
    Some((GrantKey { cidr, environment }, at))
}

/// The attribute of an owner's quota item that holds one grant.
pub(super) fn hold_attr(cidr: &Cidr) -> String {
    format!("h#{cidr}")
}

/// A hold's value: the grant's expiry in microseconds, 0 for none.
pub(super) fn hold_value(grant: &Grant) -> AttributeValue {
    n(grant.expires_at.map_or(0, micros))
}

/// An owner's quota item as read: its version, and how many of their grants are live at `now`
/// by its holds (none when the item predates holds).
pub(super) struct Holds {
    pub version: Option<i64>,
    pub live: Option<usize>,
    /// Every hold attribute the item carries, live or not.
    pub attrs: Vec<String>,
}

impl DynamoStore {
    pub(super) async fn holds(&self, env: &Environment, owner: &str, now: Timestamp) -> Result<Holds, StoreError> {
        let Some(item) = self.meta_item("quota", &format!("{env}#{owner}")).await? else {
            return Ok(Holds { version: None, live: Some(0), attrs: vec![] });
        };
        let now = micros(now);
        let live = item
            .iter()
            .filter(|(k, _)| k.starts_with("h#"))
            .filter_map(|(_, v)| v.as_n().ok()?.parse::<i64>().ok())
            .filter(|&at| at == 0 || at > now)
            .count();
        let attrs = item.keys().filter(|k| k.starts_with("h#")).cloned().collect();
        Ok(Holds { version: get_n(&item, "v"), live: item.contains_key(INDEXED).then_some(live), attrs })
    }

    /// The SET clauses that record `grants` as held on an owner's quota item (with `complete`:
    /// and that its holds are all of the owner's grants), with their names and values in `expr`.
    pub(super) fn hold_sets<'a>(expr: &mut Expr, grants: impl IntoIterator<Item = &'a Grant>, complete: bool) -> String {
        let mut sets = Vec::new();
        for g in grants {
            let (k, v) = (expr.name(&hold_attr(&g.cidr)), expr.value(hold_value(g)));
            sets.push(format!("{k} = {v}"));
        }
        if complete {
            let (k, v) = (expr.name(INDEXED), expr.value(AttributeValue::Bool(true)));
            sets.push(format!("{k} = {v}"));
        }
        sets.join(", ")
    }

    /// Keeps the expiry index right for a write that changes a grant from `old` to `new`
    /// (either may be none), in the same transaction.
    pub(super) fn index_expiry(&self, tx: &mut Tx, old: Option<&Grant>, new: Option<&Grant>) {
        let (old_key, new_item) = (old.and_then(expiry_key), new.and_then(expiry_item));
        let new_key = new.and_then(expiry_key);
        if let Some(key) = old_key.filter(|k| Some(k) != new_key.as_ref()) {
            tx.delete(self.meta(), key);
        }
        if let Some(item) = new_item {
            tx.put(self.meta(), item, None);
        }
    }

    /// The next expiry by the index: its first item, checked against the grant it names (a
    /// stale one, left by another writer's change, is deleted and the next read).
    pub(super) async fn next_indexed_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        for _ in 0..16 {
            let first = self.partition("expiry", false, Some(1)).await?;
            let Some(item) = first.first() else { return Ok(None) };
            let stands = match indexed(item) {
                Some((key, at)) => {
                    let read = self.read(&key).await?;
                    read.as_ref().and_then(Read::live_grant).is_some_and(|g| g.expires_at == Some(at)).then_some(at)
                }
                None => None,
            };
            if stands.is_some() {
                return Ok(stands);
            }
            let key = meta_key("expiry", &get_s(item, "sk").unwrap_or_default());
            self.client
                .delete_item()
                .table_name(self.meta())
                .set_key(Some(key))
                .send()
                .await
                .map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
        }
        // A run of stale entries: the full check finds the truth.
        self.full_expiry_check().await
    }

    /// The next expiry by a full Scan, putting back what the expiry index lacks (what other
    /// writers made). `next_expiry` runs it at most once a minute; `init` and tests may at once.
    pub async fn full_expiry_check(&self) -> Result<Option<Timestamp>, StoreError> {
        *self.last_full_check.lock().expect("full-check mutex poisoned") = Some(Instant::now());
        let grants: Vec<Grant> = self.scan(None).await?.iter().filter_map(Read::live_grant).cloned().collect();
        let known: std::collections::BTreeSet<String> =
            self.partition("expiry", false, None).await?.iter().filter_map(|i| get_s(i, "sk")).collect();
        let missing: Vec<HashMap<String, AttributeValue>> = grants
            .iter()
            .filter_map(expiry_item)
            .filter(|item| !known.contains(&get_s(item, "sk").unwrap_or_default()))
            .collect();
        if !missing.is_empty() {
            tracing::info!(count = missing.len(), "indexing expiries another writer made");
        }
        for chunk in missing.chunks(25) {
            let mut writes: Vec<WriteRequest> = chunk
                .iter()
                .map(|item| {
                    let put = PutRequest::builder().set_item(Some(item.clone())).build().expect("a put has its item");
                    WriteRequest::builder().put_request(put).build()
                })
                .collect();
            // What DynamoDB leaves unprocessed (throttling) is sent again, a few times.
            for _ in 0..5 {
                if writes.is_empty() {
                    break;
                }
                let out = self
                    .client
                    .batch_write_item()
                    .request_items(self.meta(), writes)
                    .send()
                    .await
                    .map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
                writes = out.unprocessed_items.and_then(|mut u| u.remove(self.meta())).unwrap_or_default();
            }
        }
        Ok(grants.iter().filter_map(|g| g.expires_at).min())
    }

    /// Whether the slow full check is due.
    pub(super) fn full_check_due(&self) -> bool {
        self.last_full_check.lock().expect("full-check mutex poisoned").is_none_or(|at| at.elapsed() >= FULL_CHECK)
    }
}
