//! A grants-table item in DynamoDB JSON, as the IP Whitelist Manager's Lambda (or a person in
//! the console) may have written it, read with its codec (`store::ip_whitelist`).
//!
//! Beyond "never panics": an item that reads as a grant writes back as an item that reads as
//! the same grant, and its key item names the same grant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_store::ip_whitelist::{from_item, item_from_json, key_item, removal, to_item};

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Some(item) = item_from_json(Some(&value)) else { return };
    let _ = removal(&item);
    let Ok(grant) = from_item(&item) else { return };
    let written = to_item(&grant);
    assert_eq!(from_item(&written).as_ref(), Ok(&grant), "{item:?} read as {grant:?}, but writes as {written:?}");
    let key = key_item(&grant.key());
    assert!(key.iter().all(|(k, v)| written.get(k) == Some(v)), "the key item {key:?} is not part of {written:?}");
});
