//! Leases and one-time claims in our own table (conditional writes), and this process's name.

use super::*;
use portcullis_store::LeaseStore;

#[async_trait]
impl LeaseStore for DynamoStore {
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

    fn instance(&self) -> &str {
        &self.instance
    }
}

impl DynamoStore {
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
