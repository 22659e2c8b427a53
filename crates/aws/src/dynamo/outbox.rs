//! The outbox in our own table: `outbox` / id, claimed with a lease, deleted when delivered.

use super::*;
use portcullis_store::OutboxStore;

#[async_trait]
impl OutboxStore for DynamoStore {
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
}
