//! The outbox in SQLite: notices claimed for a while by one process, settled when delivered.

use super::*;
use crate::OutboxStore;

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim_notice(&self, now: Timestamp) -> Result<Option<Notice>, StoreError> {
        let this = self.clone();
        self.write(move |tx| {
            let now_ms = ms(now);
            let claimed: Option<(i64, i64)> = tx
                .query_row(
                    "SELECT audit_id, attempts FROM outbox
                     WHERE state = 'pending' AND next_attempt_ms <= ?1 AND (claimed_by = ?2 OR lease_until_ms <= ?1)
                     ORDER BY audit_id LIMIT 1",
                    params![now_ms, &*this.instance],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .optional()
                .map_err(|e| this.err(e))?;
            let Some((id, attempts)) = claimed else { return Ok(None) };
            tx.execute(
                "UPDATE outbox SET claimed_by = ?2, lease_until_ms = ?3 WHERE audit_id = ?1",
                params![id, &*this.instance, ms(now + crate::NOTICE_LEASE)],
            )
            .map_err(|e| this.err(e))?;
            let event = this
                .select_audit(tx, "id = ?1", params![id])?
                .pop()
                .ok_or_else(|| this.corrupt(format!("outbox notice {id} has no audit event")))?;
            Ok(Some(Notice { event, attempts: attempts as u32 }))
        })
        .await
    }

    async fn settle_notice(&self, id: i64, settlement: Settlement, now: Timestamp) -> Result<(), StoreError> {
        let this = self.clone();
        self.write(move |tx| {
            let now = ms(now);
            let changed = match &settlement {
                Settlement::Delivered => tx.execute(
                    "UPDATE outbox SET state = 'delivered', claimed_by = NULL, lease_until_ms = 0,
                        attempts = attempts + 1, settled_at_ms = ?2, last_error = NULL WHERE audit_id = ?1",
                    params![id, now],
                ),
                Settlement::Retry { at, error } => tx.execute(
                    "UPDATE outbox SET claimed_by = NULL, lease_until_ms = 0, attempts = attempts + 1,
                        next_attempt_ms = ?2, last_error = ?3 WHERE audit_id = ?1 AND state = 'pending'",
                    params![id, ms(*at), error],
                ),
                Settlement::Abandoned { error } => tx.execute(
                    "UPDATE outbox SET state = 'abandoned', claimed_by = NULL, lease_until_ms = 0,
                        settled_at_ms = ?2, last_error = ?3 WHERE audit_id = ?1",
                    params![id, now, error],
                ),
            };
            changed.map_err(|e| this.err(e))?;
            if !matches!(settlement, Settlement::Retry { .. }) {
                // Settled notices are kept a while for inspection; prune when one more settles.
                tx.execute(
                    "DELETE FROM outbox WHERE state != 'pending' AND settled_at_ms < ?1",
                    params![now - SETTLED_RETENTION.whole_milliseconds() as i64],
                )
                .map_err(|e| this.err(e))?;
            }
            Ok(())
        })
        .await
    }

    async fn outbox_status(&self) -> Result<OutboxStatus, StoreError> {
        let this = self.clone();
        self.run(move |conn| {
            let (pending, next): (i64, Option<i64>) = conn
                .query_row(
                    "SELECT COUNT(*), MIN(MAX(next_attempt_ms, CASE WHEN claimed_by = ?1 THEN 0 ELSE lease_until_ms END))
                     FROM outbox WHERE state = 'pending'",
                    params![&*this.instance],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )
                .map_err(|e| this.err(e))?;
            Ok(OutboxStatus { pending: pending as usize, next_due: next.map(from_ms) })
        })
        .await
    }
}
