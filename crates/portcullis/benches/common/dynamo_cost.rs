//! Counting the DynamoDB calls of the hot paths (shared by `benches/dynamo_cost.rs` and the
//! binary's `dynamo_cost` test): seed a grants table as another writer would, and count what
//! one call of ours costs.

use std::collections::BTreeMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use portcullis_aws::DynamoStore;
use portcullis_core::Timestamp;

/// Puts grants `range` into `table` (environment `dev`) as another writer would, 25 a call,
/// owned by `user0`…`user99`, expiring over the next four days.
pub async fn seed(client: &aws_sdk_dynamodb::Client, table: &str, range: std::ops::Range<u32>, now: Timestamp) {
    let iso = portcullis_store::ip_whitelist::iso;
    let s = |v: String| AttributeValue::S(v);
    let items: Vec<WriteRequest> = range
        .map(|i| {
            let expires = now + time::Duration::hours(1 + i64::from(i % 96));
            let item = [
                ("ip_address", s(format!("10.{}.{}.{}/32", i >> 16, (i >> 8) & 255, i & 255))),
                ("environment", s("dev".into())),
                ("added_at", s(iso(now))),
                ("expires_at", s(iso(expires))),
                ("ttl", AttributeValue::N(expires.unix_timestamp().to_string())),
                ("user_id", s(format!("U{}", i % 100))),
                ("username", s(format!("user{}", i % 100))),
            ];
            let put = PutRequest::builder().set_item(Some(item.map(|(k, v)| (k.to_string(), v)).into())).build().unwrap();
            WriteRequest::builder().put_request(put).build()
        })
        .collect();
    for chunk in items.chunks(25) {
        let out = client.batch_write_item().request_items(table, chunk.to_vec()).send().await.unwrap();
        assert!(out.unprocessed_items.unwrap_or_default().is_empty(), "every item is processed");
    }
}

/// The calls `f` made through `store`, by operation.
pub async fn calls_of<F: std::future::Future<Output = ()>>(store: &DynamoStore, f: F) -> BTreeMap<String, u64> {
    let before = store.calls().snapshot();
    f.await;
    let mut after = store.calls().snapshot();
    for (op, n) in before {
        *after.entry(op).or_default() -= n;
    }
    after.retain(|_, n| *n > 0);
    after
}

/// A count by operation in a few words: `GetItem 1, Query 1 (2)`.
pub fn in_words(calls: &BTreeMap<String, u64>) -> String {
    let total: u64 = calls.values().sum();
    let each: Vec<String> = calls.iter().map(|(op, n)| format!("{op} {n}")).collect();
    format!("{} ({total})", each.join(", "))
}
