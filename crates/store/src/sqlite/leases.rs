//! Leases and one-time claims in SQLite, and this process's name among those sharing the file.

use super::*;
use crate::LeaseStore;

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn acquire_lease(&self, claim: LeaseClaim<'_>) -> Result<bool, StoreError> {
        let (this, name, holder) = (self.clone(), claim.name.to_string(), claim.holder.to_string());
        let (now, until) = (ms(claim.now), ms(claim.now + claim.duration));
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "INSERT INTO leases (name, holder, until_ms) VALUES (?1, ?2, ?3)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, until_ms = excluded.until_ms
                     WHERE leases.holder = excluded.holder OR leases.until_ms <= ?4",
                    params![name, holder, until, now],
                )
                .map_err(|e| this.err(e))?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<(), StoreError> {
        let (this, name, holder) = (self.clone(), name.to_string(), holder.to_string());
        self.write(move |tx| {
            tx.execute("DELETE FROM leases WHERE name = ?1 AND holder = ?2", params![name, holder]).map_err(|e| this.err(e))?;
            Ok(())
        })
        .await
    }

    async fn lease_holder(&self, name: &str, now: Timestamp) -> Result<Option<LeaseHolder>, StoreError> {
        let (this, name, now) = (self.clone(), name.to_string(), ms(now));
        self.run(move |conn| {
            conn.query_row("SELECT holder, until_ms FROM leases WHERE name = ?1 AND until_ms > ?2", params![name, now], |r| {
                Ok(LeaseHolder { holder: r.get(0)?, until: from_ms(r.get(1)?) })
            })
            .optional()
            .map_err(|e| this.err(e))
        })
        .await
    }

    async fn claim_once(&self, key: &str, now: Timestamp, until: Timestamp) -> Result<bool, StoreError> {
        let (this, key) = (self.clone(), key.to_string());
        let (now, until) = (ms(now), ms(until));
        self.write(move |tx| {
            tx.execute("DELETE FROM claims WHERE until_ms <= ?1", params![now]).map_err(|e| this.err(e))?;
            let claimed = tx
                .execute("INSERT INTO claims (key, until_ms) VALUES (?1, ?2) ON CONFLICT (key) DO NOTHING", params![key, until])
                .map_err(|e| this.err(e))?;
            Ok(claimed == 1)
        })
        .await
    }

    fn instance(&self) -> &str {
        &self.instance
    }
}
