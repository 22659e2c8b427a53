//! Guard's change requests (JSON, with a version for conditional decisions), baselines and
//! ledger in SQLite.

use super::*;
use crate::GuardStore;

#[async_trait]
impl GuardStore for SqliteStore {
    async fn file_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError> {
        let (this, request) = (self.clone(), request.clone());
        self.write(move |tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO change_requests (id, event_id, status, version, created_at_ms, body)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (event_id) DO NOTHING",
                    params![
                        request.id,
                        request.event_id,
                        request.status.as_str(),
                        request.version as i64,
                        ms(request.created_at),
                        serde_json::to_string(&request).expect("requests serialise"),
                    ],
                )
                .map_err(|e| this.err(e))?;
            if inserted == 0 {
                return Ok(false);
            }
            events.iter().try_for_each(|e| this.append(tx, e))?;
            Ok(true)
        })
        .await
    }

    async fn request(&self, id: &str) -> Result<Option<ChangeRequest>, StoreError> {
        let (this, id) = (self.clone(), id.to_string());
        self.run(move |conn| Ok(this.select_requests(conn, "id = ?1", params![id])?.pop())).await
    }

    async fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<ChangeRequest>, StoreError> {
        let this = self.clone();
        self.run(move |conn| match status {
            Some(s) => this.select_requests(conn, "status = ?1 ORDER BY created_at_ms, id", params![s.as_str()]),
            None => this.select_requests(conn, "1 ORDER BY created_at_ms, id", []),
        })
        .await
    }

    async fn update_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError> {
        let (this, request) = (self.clone(), request.clone());
        self.write(move |tx| {
            let updated = tx
                .execute(
                    "UPDATE change_requests SET status = ?2, version = ?3, body = ?4 WHERE id = ?1 AND version = ?3 - 1",
                    params![
                        request.id,
                        request.status.as_str(),
                        request.version as i64,
                        serde_json::to_string(&request).expect("requests serialise"),
                    ],
                )
                .map_err(|e| this.err(e))?;
            if updated == 0 {
                return Ok(false);
            }
            events.iter().try_for_each(|e| this.append(tx, e))?;
            Ok(true)
        })
        .await
    }

    async fn baseline(&self, group: &TargetId) -> Result<Option<Vec<GroupRule>>, StoreError> {
        let (this, group) = (self.clone(), group.clone());
        self.run(move |conn| {
            let rules: Option<String> = conn
                .query_row(
                    "SELECT rules FROM baselines WHERE region = ?1 AND group_id = ?2",
                    params![group.region, group.group_id],
                    |r| r.get(0),
                )
                .optional()
                .map_err(|e| this.err(e))?;
            rules
                .map(|json| serde_json::from_str(&json).map_err(|e| this.corrupt(format!("baseline of {group}: {e}"))))
                .transpose()
        })
        .await
    }

    async fn set_baseline(&self, group: &TargetId, rules: &[GroupRule], events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let (this, group) = (self.clone(), group.clone());
        let json = serde_json::to_string(rules).expect("rules serialise");
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO baselines (region, group_id, rules) VALUES (?1, ?2, ?3)
                 ON CONFLICT (region, group_id) DO UPDATE SET rules = excluded.rules",
                params![group.region, group.group_id, json],
            )
            .map_err(|e| this.err(e))?;
            events.iter().try_for_each(|e| this.append(tx, e))
        })
        .await
    }

    async fn note_own_changes(&self, keys: &[String], until: Timestamp) -> Result<(), StoreError> {
        let (this, keys) = (self.clone(), keys.to_vec());
        self.write(move |tx| {
            // Notes lapsed a day before this one are of no more use: an event that old is left
            // to the guard sweep.
            tx.execute("DELETE FROM own_changes WHERE until_ms < ?1", params![ms(until - time::Duration::days(1))])
                .map_err(|e| this.err(e))?;
            for key in &keys {
                tx.execute(
                    "INSERT INTO own_changes (key, until_ms) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET until_ms = max(until_ms, excluded.until_ms)",
                    params![key, ms(until)],
                )
                .map_err(|e| this.err(e))?;
            }
            Ok(())
        })
        .await
    }

    async fn noted_own_changes(&self, keys: &[String], now: Timestamp) -> Result<BTreeSet<String>, StoreError> {
        let (this, keys) = (self.clone(), keys.to_vec());
        self.run(move |conn| {
            let mut noted = BTreeSet::new();
            let mut stmt =
                conn.prepare_cached("SELECT 1 FROM own_changes WHERE key = ?1 AND until_ms > ?2").map_err(|e| this.err(e))?;
            for key in keys {
                if stmt.exists(params![key, ms(now)]).map_err(|e| this.err(e))? {
                    noted.insert(key);
                }
            }
            Ok(noted)
        })
        .await
    }
}
