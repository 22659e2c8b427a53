//! API tokens in our own table: `token` / hash of the secret.

use super::*;
use portcullis_store::TokenStore;

#[async_trait]
impl TokenStore for DynamoStore {
    async fn create_token(&self, token: ApiToken, actor: &Actor) -> Result<(), StoreError> {
        let event = portcullis_store::token_event(token.created_at, actor, Action::TokenCreated, &token);
        self.write_token(&token, None, event).await
    }

    async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, StoreError> {
        self.meta_item("token", hash).await?.as_ref().map(|i| self.parse_token(i)).transpose()
    }

    async fn tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let mut tokens =
            self.partition("token", false, None).await?.iter().map(|i| self.parse_token(i)).collect::<Result<Vec<_>, _>>()?;
        tokens.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(tokens)
    }

    async fn revoke_token(&self, id: &str, actor: &Actor, now: Timestamp) -> Result<Option<ApiToken>, StoreError> {
        let Some(token) = self.tokens().await?.into_iter().find(|t| t.id == id) else {
            return Ok(None);
        };
        if token.revoked_at.is_some() {
            return Ok(Some(token));
        }
        let before = serde_json::to_string(&token).expect("tokens serialise");
        let revoked = ApiToken { revoked_at: Some(now), ..token };
        let event = portcullis_store::token_event(now, actor, Action::TokenRevoked, &revoked);
        self.write_token(&revoked, Some(&before), event).await?;
        Ok(Some(revoked))
    }
}

impl DynamoStore {
    pub(super) fn token_item(&self, token: &ApiToken) -> HashMap<String, AttributeValue> {
        let mut item = meta_key("token", &token.hash);
        item.insert("token".into(), s(serde_json::to_string(token).expect("tokens serialise")));
        item.insert("id".into(), s(token.id.clone()));
        item
    }

    pub(super) fn parse_token(&self, item: &HashMap<String, AttributeValue>) -> Result<ApiToken, StoreError> {
        let json = get_s(item, "token").unwrap_or_default();
        let mut token: ApiToken = serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("token item {:?}: {e}", get_s(item, "id")),
        })?;
        token.hash = get_s(item, "sk").unwrap_or_default();
        Ok(token)
    }

    /// Writes a token item (conditional on `expect`: absent, or exactly that JSON) with its
    /// audit event.
    pub(super) async fn write_token(&self, token: &ApiToken, expect: Option<&str>, event: AuditEvent) -> Result<(), StoreError> {
        let mut event = event;
        event.id = self.allocate(1).await?;
        let mut tx = Tx::default();
        let (mut history, mut filed) = (false, BTreeSet::new());
        self.append(&mut tx, &event, event.at, &mut history);
        self.file(&mut tx, &event.environment.to_string(), &mut filed);
        let mut cond = Expr::new();
        match expect {
            None => {
                let k = cond.name("pk");
                cond.and(format!("attribute_not_exists({k})"));
            }
            Some(json) => {
                let (k, v) = (cond.name("token"), cond.value(s(json)));
                cond.and(format!("{k} = {v}"));
            }
        }
        tx.put(self.meta(), self.token_item(token), Some(cond));
        self.commit(tx).await.map_err(|f| match f {
            Failure::Conflict => self.contended(),
            Failure::Store(e) => e,
        })
    }
}
