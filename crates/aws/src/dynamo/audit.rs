//! The audit log in our own table: `audit#{env}` / zero-padded id, ids from one counter.

use super::*;
use portcullis_store::AuditStore;

#[async_trait]
impl AuditStore for DynamoStore {
    async fn record(&self, event: AuditEvent) -> Result<(), StoreError> {
        self.record_with(event, None).await.map(|_| ())
    }

    async fn query_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEvent>, StoreError> {
        let limit = query.limit.min(AuditQuery::MAX_LIMIT);
        let partitions: BTreeSet<String> = match &query.environment {
            Some(env) => BTreeSet::from([env.to_string()]),
            None => self.partition("audit-envs", false, None).await?.iter().filter_map(|i| get_s(i, "sk")).collect(),
        };
        let mut events = Vec::new();
        for env in partitions {
            events.extend(self.audit_partition(&format!("audit#{env}"), query, limit).await?);
        }
        events.sort_by_key(|e| std::cmp::Reverse(e.id));
        events.truncate(limit);
        Ok(events)
    }

    async fn record_once(&self, event: AuditEvent, key: &str) -> Result<bool, StoreError> {
        self.record_with(event, Some(key)).await
    }
}

impl DynamoStore {
    /// Hands out `count` consecutive audit ids.
    pub(super) async fn allocate(&self, count: i64) -> Result<i64, StoreError> {
        let out = self
            .client
            .update_item()
            .table_name(self.meta())
            .set_key(Some(meta_key("counter", "audit")))
            .update_expression("ADD #n :k")
            .expression_attribute_names("#n", "n")
            .expression_attribute_values(":k", n(count))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::UpdatedNew)
            .send()
            .await
            .map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
        let last = out.attributes.as_ref().and_then(|a| get_n(a, "n")).ok_or_else(|| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: "the audit counter has no number".into(),
        })?;
        Ok(last - count + 1)
    }

    /// Adds an audit event (and its notice, and the history mark) to a transaction.
    pub(super) fn append(&self, tx: &mut Tx, event: &AuditEvent, now: Timestamp, history: &mut bool) {
        let json = serde_json::to_string(event).expect("audit events serialise");
        let mut audit = meta_key(&format!("audit#{}", event.environment), &padded(event.id));
        audit.insert("id".into(), n(event.id));
        audit.insert("event".into(), s(json.clone()));
        tx.put(self.meta(), audit, None);
        if portcullis_store::is_announced(event.action) {
            let mut notice = meta_key("outbox", &padded(event.id));
            notice.insert("event".into(), s(json));
            notice.insert("claimed_by".into(), s(self.instance.clone()));
            notice.insert("lease_until_ms".into(), n(ms(event.at + NOTICE_LEASE)));
            notice.insert("next_attempt_ms".into(), n(ms(event.at)));
            notice.insert("attempts".into(), n(0));
            tx.put(self.meta(), notice, None);
        }
        if !*history && portcullis_store::is_grant_change(event.action) {
            *history = true;
            let mut h = meta_key("history", &event.environment.to_string());
            h.insert("first_change_ms".into(), n(ms(now)));
            tx.put(self.meta(), h, None);
        }
    }

    /// Records the partition an event is filed under, for `audit(None)`.
    pub(super) fn file(&self, tx: &mut Tx, environment: &str, done: &mut BTreeSet<String>) {
        if done.insert(environment.to_string()) {
            tx.put(self.meta(), meta_key("audit-envs", environment), None);
        }
    }

    pub(super) async fn record_with(&self, mut event: AuditEvent, once: Option<&str>) -> Result<bool, StoreError> {
        event.id = self.allocate(1).await?;
        let mut tx = Tx::default();
        let (mut history, mut filed) = (false, BTreeSet::new());
        self.append(&mut tx, &event, event.at, &mut history);
        self.file(&mut tx, &event.environment.to_string(), &mut filed);
        if let Some(key) = once {
            let mut item = meta_key("once", key);
            item.insert("audit_id".into(), n(event.id));
            item.insert("gc_at".into(), n((event.at + KEEP).unix_timestamp()));
            let mut cond = Expr::new();
            let k = cond.name("pk");
            cond.and(format!("attribute_not_exists({k})"));
            tx.put(self.meta(), item, Some(cond));
        }
        match self.commit(tx).await {
            Ok(()) => Ok(true),
            Err(Failure::Conflict) if once.is_some() => Ok(false),
            Err(f) => Err(f.into()),
        }
    }

    /// One audit partition's newest `limit` events that `query` matches, older than its page
    /// start: read newest first a page at a time (the key narrows the page; the action and
    /// user are filtered as read) until `limit` match or the partition ends.
    pub(super) async fn audit_partition(
        &self,
        pk: &str,
        query: &AuditQuery,
        limit: usize,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        let mut out = Vec::new();
        let mut start = None;
        let (condition, bound) = match query.before {
            Some(before) => ("pk = :p AND sk < :b", Some(s(padded(before)))),
            None => ("pk = :p", None),
        };
        let filtered = query.action.is_some() || query.user.is_some();
        while out.len() < limit {
            // Unfiltered, every event read is kept: read no more than are wanted. Filtered,
            // most may not be: read full pages rather than many small ones.
            let page_size = if filtered { 1000 } else { (limit - out.len()).clamp(1, 1000) };
            let page = self
                .client
                .query()
                .table_name(self.meta())
                .key_condition_expression(condition)
                .expression_attribute_values(":p", s(pk))
                .consistent_read(true)
                .scan_index_forward(false)
                .limit(page_size as i32)
                .set_exclusive_start_key(start);
            let page = match &bound {
                Some(b) => page.expression_attribute_values(":b", b.clone()),
                None => page,
            };
            let page = page.send().await.map_err(|e| StoreError::from(failure(self.meta(), e.into())))?;
            for item in page.items() {
                let event = self.parse_event(item)?;
                if query.matches(&event) {
                    out.push(event);
                }
            }
            match page.last_evaluated_key {
                Some(k) if !k.is_empty() => start = Some(k),
                _ => break,
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    pub(super) fn parse_event(&self, item: &HashMap<String, AttributeValue>) -> Result<AuditEvent, StoreError> {
        let json = get_s(item, "event").unwrap_or_default();
        serde_json::from_str(&json).map_err(|e| StoreError::Corrupt {
            location: format!("dynamodb:{}", self.meta()),
            message: format!("audit item {:?}: {e}", get_s(item, "sk")),
        })
    }

    /// Numbers audit events and adds them (with their notices) to a transaction.
    pub(super) async fn append_all(&self, tx: &mut Tx, events: &mut [AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let first = self.allocate(events.len() as i64).await?;
        let (mut history, mut filed) = (false, BTreeSet::new());
        for (i, event) in events.iter_mut().enumerate() {
            event.id = first + i as i64;
            self.append(tx, event, event.at, &mut history);
            self.file(tx, &event.environment.to_string(), &mut filed);
        }
        Ok(())
    }
}
