//! The audit log in SQLite: append-only (triggers refuse updates and deletes).

use super::*;
use crate::AuditStore;

#[async_trait]
impl AuditStore for SqliteStore {
    async fn record(&self, event: AuditEvent) -> Result<(), StoreError> {
        let this = self.clone();
        self.write(move |tx| this.append(tx, &event)).await
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let this = self.clone();
        let env = query.environment.as_ref().map(|e| e.to_string());
        let action = query.action.map(|a| a.as_str());
        let (user, before, limit) = (query.user.clone(), query.before, query.limit.min(AuditQuery::MAX_LIMIT) as i64);
        self.run(move |conn| {
            this.select_audit(
                conn,
                "(?1 IS NULL OR environment = ?1) AND (?2 IS NULL OR action = ?2) AND (?3 IS NULL OR id < ?3)
                 AND (?4 IS NULL OR actor_is(actor, ?4)) ORDER BY id DESC LIMIT ?5",
                params![env, action, before, user, limit],
            )
        })
        .await
    }

    async fn record_once(&self, event: AuditEvent, key: &str) -> Result<bool, StoreError> {
        let (this, key) = (self.clone(), key.to_string());
        self.write(move |tx| {
            let seen: Option<i64> = tx
                .query_row("SELECT audit_id FROM recorded_once WHERE key = ?1", params![key], |r| r.get(0))
                .optional()
                .map_err(|e| this.err(e))?;
            if seen.is_some() {
                return Ok(false);
            }
            this.append(tx, &event)?;
            tx.execute("INSERT INTO recorded_once (key, audit_id) VALUES (?1, last_insert_rowid())", params![key])
                .map_err(|e| this.err(e))?;
            Ok(true)
        })
        .await
    }
}
