//! Guard's ledger in our own table: `own` / key, one item per change guard is about to make,
//! with `until_ms` (when it stops counting) and `gc_at` (DynamoDB's TTL collects it later).
//! Noting is one conditional PutItem per key; asking is one consistent GetItem per key an event names (an
//! event names a handful of rules).

use std::collections::BTreeSet;

use portcullis_core::Timestamp;
use portcullis_store::StoreError;
use portcullis_store::millis as ms;

use super::*;
use portcullis_store::GuardStore;

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

#[async_trait]
impl GuardStore for DynamoStore {
    async fn file_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError> {
        let absent = || {
            let mut e = Expr::new();
            let k = e.name("pk");
            e.and(format!("attribute_not_exists({k})"));
            e
        };
        let mut marker = meta_key("request-event", &request.event_id);
        marker.insert("id".into(), s(request.id.clone()));
        self.write_request(request, absent(), Some((marker, absent())), events).await
    }

    async fn request(&self, id: &str) -> Result<Option<ChangeRequest>, StoreError> {
        self.meta_item("request", id).await?.as_ref().map(|i| self.parse_request(i)).transpose()
    }

    async fn requests(&self, status: Option<RequestStatus>) -> Result<Vec<ChangeRequest>, StoreError> {
        let items = self.partition("request", false, None).await?;
        let mut requests = items.iter().map(|i| self.parse_request(i)).collect::<Result<Vec<_>, _>>()?;
        requests.retain(|r| status.is_none_or(|s| r.status == s));
        requests.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(requests)
    }

    async fn update_request(&self, request: &ChangeRequest, events: Vec<AuditEvent>) -> Result<bool, StoreError> {
        let mut cond = Expr::new();
        let (k, v) = (cond.name("version"), cond.value(n(request.version.saturating_sub(1))));
        cond.and(format!("{k} = {v}"));
        self.write_request(request, cond, None, events).await
    }

    async fn baseline(&self, group: &TargetId) -> Result<Option<Vec<GroupRule>>, StoreError> {
        let Some(item) = self.meta_item("baseline", &format!("{}/{}", group.region, group.group_id)).await? else {
            return Ok(None);
        };
        serde_json::from_str(&get_s(&item, "rules").unwrap_or_default()).map(Some).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("baseline of {group}: {e}"),
        })
    }

    async fn set_baseline(&self, group: &TargetId, rules: &[GroupRule], mut events: Vec<AuditEvent>) -> Result<(), StoreError> {
        let mut tx = Tx::default();
        self.append_all(&mut tx, &mut events).await?;
        let mut item = meta_key("baseline", &format!("{}/{}", group.region, group.group_id));
        item.insert("rules".into(), s(serde_json::to_string(rules).expect("rules serialise")));
        tx.put(self.meta(), item, None);
        self.commit(tx).await.map_err(|f| match f {
            Failure::Conflict => self.contended(),
            Failure::Store(e) => e,
        })
    }

    async fn note_own_changes(&self, keys: &[String], until: Timestamp) -> Result<(), StoreError> {
        self.note_own(keys, until).await
    }

    async fn noted_own_changes(&self, keys: &[String], now: Timestamp) -> Result<BTreeSet<String>, StoreError> {
        self.noted_own(keys, now).await
    }
}

impl DynamoStore {
    pub(super) fn request_item(&self, request: &ChangeRequest) -> HashMap<String, AttributeValue> {
        let mut item = meta_key("request", &request.id);
        item.insert("body".into(), s(serde_json::to_string(request).expect("requests serialise")));
        item.insert("version".into(), n(request.version));
        item.insert("status".into(), s(request.status.as_str()));
        item
    }

    pub(super) fn parse_request(&self, item: &HashMap<String, AttributeValue>) -> Result<ChangeRequest, StoreError> {
        serde_json::from_str(&get_s(item, "body").unwrap_or_default()).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("change request {:?}: {e}", get_s(item, "sk")),
        })
    }

    /// Writes a request item under `cond` with its audit events, in one transaction (plus
    /// `extra`); `false` when a condition did not hold.
    pub(super) async fn write_request(
        &self,
        request: &ChangeRequest,
        cond: Expr,
        extra: Option<(HashMap<String, AttributeValue>, Expr)>,
        mut events: Vec<AuditEvent>,
    ) -> Result<bool, StoreError> {
        let mut tx = Tx::default();
        self.append_all(&mut tx, &mut events).await?;
        if let Some((item, cond)) = extra {
            tx.put(self.meta(), item, Some(cond));
        }
        tx.put(self.meta(), self.request_item(request), Some(cond));
        match self.commit(tx).await {
            Ok(()) => Ok(true),
            Err(Failure::Conflict) => Ok(false),
            Err(Failure::Store(e)) => Err(e),
        }
    }
}
