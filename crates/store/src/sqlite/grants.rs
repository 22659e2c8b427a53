//! Grants in SQLite: each change, with its audit event (and its notice), in one transaction.

use super::*;
use crate::GrantStore;

#[async_trait]
impl GrantStore for SqliteStore {
    async fn upsert(&self, request: Upsert) -> Result<Upserted, StoreError> {
        let this = self.clone();
        self.write(move |tx| {
            let now = request.grant.created_at;
            let existing = this.get(tx, &request.grant.key())?;
            let decided = match request.decide(existing.as_ref()) {
                UpsertDecision::Refresh(decided) => decided,
                UpsertDecision::Add { expired } => {
                    if let Some(old) = &expired {
                        this.delete(tx, &old.key())?;
                    }
                    let held: i64 = tx
                        .query_row(
                            "SELECT COUNT(*) FROM grants WHERE environment = ?1 AND owner_id = ?2
                               AND (expires_at_ms IS NULL OR expires_at_ms > ?3)",
                            params![request.grant.environment.as_str(), request.grant.owner.id, ms(now)],
                            |r| r.get(0),
                        )
                        .map_err(|e| this.err(e))?;
                    request.add(expired, held as usize)?
                }
            };
            this.put(tx, &decided.stored, now)?;
            for event in &decided.events {
                this.append(tx, event)?;
            }
            let Decided { stored, previous, .. } = decided;
            Ok(Upserted { grant: stored, previous })
        })
        .await
    }

    async fn remove(&self, key: &GrantKey, actor: &Actor, now: Timestamp) -> Result<Option<Grant>, StoreError> {
        let (this, key, actor) = (self.clone(), key.clone(), actor.clone());
        self.write(move |tx| {
            let Some(old) = this.get(tx, &key)? else { return Ok(None) };
            this.delete(tx, &key)?;
            let reason = format!("removed by {}", actor.name);
            this.append(tx, &event(now, &actor, Action::Removed, &old, Some(old.clone()), None, reason))?;
            Ok(Some(old))
        })
        .await
    }

    async fn grant(&self, key: &GrantKey) -> Result<Option<Grant>, StoreError> {
        let (this, key) = (self.clone(), key.clone());
        self.run(move |conn| this.get(conn, &key)).await
    }

    async fn grants(&self, environment: Option<&Environment>) -> Result<Vec<Grant>, StoreError> {
        let (this, env) = (self.clone(), environment.map(|e| e.to_string()));
        self.run(move |conn| this.select_grants(conn, "?1 IS NULL OR environment = ?1 ORDER BY environment, cidr", params![env]))
            .await
    }

    async fn expire(&self, now: Timestamp, environments: &BTreeSet<Environment>) -> Result<Vec<Grant>, StoreError> {
        let (this, environments) = (self.clone(), environments.clone());
        self.write(move |tx| {
            let mut expired = this.select_grants(tx, "expires_at_ms <= ?1 ORDER BY expires_at_ms", params![ms(now)])?;
            expired.retain(|g| environments.contains(&g.environment));
            for g in &expired {
                this.delete(tx, &g.key())?;
                let at = g.expires_at.expect("selected by expiry");
                let reason = format!("expired at {}", at);
                this.append(tx, &event(now, &sweeper(), Action::Expired, g, Some(g.clone()), None, reason))?;
            }
            Ok(expired)
        })
        .await
    }

    async fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        let this = self.clone();
        self.run(move |conn| {
            let at: Option<i64> =
                conn.query_row("SELECT MIN(expires_at_ms) FROM grants", [], |r| r.get(0)).map_err(|e| this.err(e))?;
            Ok(at.map(from_ms))
        })
        .await
    }

    async fn environments_with_history(&self) -> Result<BTreeSet<Environment>, StoreError> {
        let this = self.clone();
        self.run(move |conn| {
            let mut stmt = conn.prepare_cached("SELECT name FROM environments").map_err(|e| this.err(e))?;
            let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(|e| this.err(e))?;
            let mut out = BTreeSet::new();
            for row in rows {
                let name = row.map_err(|e| this.err(e))?;
                out.insert(Environment::parse(&name).map_err(|e| this.corrupt(e.to_string()))?);
            }
            Ok(out)
        })
        .await
    }
}
