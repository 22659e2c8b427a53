//! API tokens in SQLite, by the hash of their secret.

use super::*;
use crate::TokenStore;

#[async_trait]
impl TokenStore for SqliteStore {
    async fn create_token(&self, token: ApiToken, actor: &Actor) -> Result<(), StoreError> {
        let (this, actor) = (self.clone(), actor.clone());
        self.write(move |tx| {
            let envs = token.environment_list().unwrap_or_default();
            tx.execute(
                &format!("INSERT INTO tokens ({TOKEN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    token.id,
                    token.hash,
                    token.user,
                    token.role.as_str(),
                    envs,
                    ms(token.created_at),
                    token.expires_at.map(ms),
                    token.revoked_at.map(ms),
                    token.created_by,
                ],
            )
            .map_err(|e| this.err(e))?;
            this.append(tx, &token_event(token.created_at, &actor, Action::TokenCreated, &token))
        })
        .await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        let (this, hash) = (self.clone(), hash.to_string());
        self.run(move |conn| Ok(this.select_tokens(conn, "hash = ?1", params![hash])?.pop())).await
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let this = self.clone();
        self.run(move |conn| this.select_tokens(conn, "1 ORDER BY created_at_ms, id", [])).await
    }

    async fn revoke_token(&self, id: &str, actor: &Actor, now: Timestamp) -> Result<Option<ApiToken>, StoreError> {
        let (this, id, actor) = (self.clone(), id.to_string(), actor.clone());
        self.write(move |tx| {
            let Some(mut token) = this.select_tokens(tx, "id = ?1", params![id])?.pop() else {
                return Ok(None);
            };
            if token.revoked_at.is_some() {
                return Ok(Some(token));
            }
            token.revoked_at = Some(now);
            tx.execute("UPDATE tokens SET revoked_at_ms = ?2 WHERE id = ?1", params![id, ms(now)]).map_err(|e| this.err(e))?;
            this.append(tx, &token_event(now, &actor, Action::TokenRevoked, &token))?;
            Ok(Some(token))
        })
        .await
    }
}
