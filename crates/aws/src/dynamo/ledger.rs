//! Guard's ledger in our own table: `own` / key, one item per change guard is about to make,
//! with `until_ms` (when it stops counting) and `gc_at` (DynamoDB's TTL collects it later).
//! Noting is one conditional PutItem per key; asking is one consistent GetItem per key an event names (an
//! event names a handful of rules).

use std::collections::BTreeSet;

use portcullis_core::Timestamp;
use portcullis_store::StoreError;
use portcullis_store::millis as ms;

use super::{DynamoStore, get_n, meta_key, n};

impl DynamoStore {
    pub(super) async fn note_own(&self, keys: &[String], until: Timestamp) -> Result<(), StoreError> {
        for key in keys {
            let mut item = meta_key("own", key);
            item.insert("until_ms".into(), n(ms(until)));
            item.insert("gc_at".into(), n((until + time::Duration::days(1)).unix_timestamp()));
            // A later note stands: an earlier time never shortens it.
            self.put_if(item, "attribute_not_exists(pk) OR until_ms < :until", [(":until", n(ms(until)))]).await?;
        }
        Ok(())
    }

    pub(super) async fn noted_own(&self, keys: &[String], now: Timestamp) -> Result<BTreeSet<String>, StoreError> {
        let mut noted = BTreeSet::new();
        for key in keys {
            let item = self.meta_item("own", key).await?;
            if item.as_ref().and_then(|i| get_n(i, "until_ms")).is_some_and(|until| until > ms(now)) {
                noted.insert(key.clone());
            }
        }
        Ok(noted)
    }
}
