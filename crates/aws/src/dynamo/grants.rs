//! Grants in the docustack IP Whitelist Manager's table(s): every change a transaction
//! conditional on the item as read, with its audit event and notice in our own table.

use super::*;
use portcullis_store::GrantStore;

#[async_trait]
impl GrantStore for DynamoStore {
    async fn upsert(&self, request: Upsert) -> Result<Upserted, StoreError> {
        for _ in 0..ATTEMPTS {
            if let Some(done) = self.try_upsert(&request).await? {
                return Ok(done);
            }
        }
        Err(self.contended())
    }

    async fn remove(&self, key: &GrantKey, actor: &Actor, now: Timestamp) -> Result<Option<Grant>, StoreError> {
        for _ in 0..ATTEMPTS {
            let Some(read) = self.read(key).await? else { return Ok(None) };
            let Some(old) = read.live_grant().cloned() else {
                // Already being deleted by someone (or unreadable: refuse to guess).
                if let (Some(mark), None) = (read.removal(), read.grant.as_ref().err()) {
                    self.delete_marked(key, &mark).await?;
                }
                return Ok(None);
            };
            let reason = format!("removed by {}", actor.name);
            let e = event(now, actor, Action::Removed, &old, Some(old.clone()), None, reason);
            if let Some(mark) = self.mark_and_record(&read, &old, e, "removed").await? {
                self.delete_marked(key, &mark).await?;
                return Ok(Some(old));
            }
        }
        Err(self.contended())
    }

    async fn grant(&self, key: &GrantKey) -> Result<Option<Grant>, StoreError> {
        Ok(self.read(key).await?.as_ref().and_then(Read::live_grant).cloned())
    }

    async fn grants(&self, environment: Option<&Environment>) -> Result<Vec<Grant>, StoreError> {
        let mut out: Vec<Grant> = self.scan(environment).await?.iter().filter_map(Read::live_grant).cloned().collect();
        out.sort_by(|a, b| (a.environment.as_str(), a.cidr).cmp(&(b.environment.as_str(), b.cidr)));
        Ok(out)
    }

    async fn expire(&self, now: Timestamp, environments: &BTreeSet<Environment>) -> Result<Vec<Grant>, StoreError> {
        let mut expired = Vec::new();
        for read in self.scan(None).await? {
            if let Some(mark) = read.removal() {
                // A deletion of ours that was recorded but not finished (a crash): finish it.
                if let Ok(g) = &read.grant {
                    self.delete_marked(&g.key(), &mark).await?;
                }
                continue;
            }
            let Ok(g) = &read.grant else { continue };
            if !environments.contains(&g.environment) {
                continue;
            }
            let Some(at) = g.expires_at.filter(|at| *at <= now) else { continue };
            let reason = format!("expired at {at}");
            let e = event(now, &sweeper(), Action::Expired, g, Some(g.clone()), None, reason);
            // Losing the race means someone refreshed, removed or expired it meanwhile.
            if let Some(mark) = self.mark_and_record(&read, g, e, "expired").await? {
                self.delete_marked(&g.key(), &mark).await?;
                expired.push(g.clone());
            }
        }
        Ok(expired)
    }

    async fn next_expiry(&self) -> Result<Option<Timestamp>, StoreError> {
        if self.full_check_due() { self.full_expiry_check().await } else { self.next_indexed_expiry().await }
    }

    async fn environments_with_history(&self) -> Result<BTreeSet<Environment>, StoreError> {
        let items = self.partition("history", false, None).await?;
        Ok(items.iter().filter_map(|i| get_s(i, "sk")).filter_map(|e| Environment::parse(&e).ok()).collect())
    }
}

impl DynamoStore {
    pub(super) async fn read(&self, key: &GrantKey) -> Result<Option<Read>, StoreError> {
        let table = self.tables.grants_table(&key.environment);
        let out = self
            .client
            .get_item()
            .table_name(&table)
            .set_key(Some(to_sdk(&ip_whitelist::key_item(key))))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| StoreError::from(failure(&table, e.into())))?;
        Ok(out.item.map(|raw| {
            let grant = ip_whitelist::from_item(&from_sdk(&raw));
            Read { raw, grant }
        }))
    }

    /// Every item of the grants tables in scope, read consistently.
    pub(super) async fn scan(&self, environment: Option<&Environment>) -> Result<Vec<Read>, StoreError> {
        let tables: Vec<(String, Vec<Environment>)> = match environment {
            Some(env) => vec![(self.tables.grants_table(env), vec![env.clone()])],
            None => self.grants_tables().into_iter().collect(),
        };
        let mut out = Vec::new();
        for (table, envs) in tables {
            let mut start = None;
            loop {
                let page = self
                    .client
                    .scan()
                    .table_name(&table)
                    .consistent_read(true)
                    .set_exclusive_start_key(start)
                    .send()
                    .await
                    .map_err(|e| StoreError::from(failure(&table, e.into())))?;
                for raw in page.items() {
                    // A table shared by environments may hold ones this process does not know.
                    let wanted = get_s(raw, ip_whitelist::ENVIRONMENT).is_some_and(|e| envs.iter().any(|k| k.as_str() == e));
                    if !wanted {
                        continue;
                    }
                    let grant = ip_whitelist::from_item(&from_sdk(raw));
                    if let Err(e) = &grant {
                        tracing::warn!(table = %table, item = ?get_s(raw, ip_whitelist::IP_ADDRESS), error = %e,
                            "skipping an item that is not a readable grant");
                    }
                    out.push(Read { raw: raw.clone(), grant });
                }
                match page.last_evaluated_key {
                    Some(k) if !k.is_empty() => start = Some(k),
                    _ => break,
                }
            }
        }
        Ok(out)
    }

    /// Marks a grant item for deletion in a transaction that records (and announces) why.
    pub(super) async fn mark_and_record(
        &self,
        read: &Read,
        grant: &Grant,
        mut event: AuditEvent,
        kind: &str,
    ) -> Result<Option<String>, StoreError> {
        event.id = self.allocate(1).await?;
        let mark = format!("{kind}:{}", event.id);
        let table = self.tables.grants_table(&grant.environment);
        let mut tx = Tx::default();
        let mut cond = Expr::unchanged(Some(&read.raw));
        let (k, v) = (cond.name(ip_whitelist::REMOVAL), cond.value(s(mark.clone())));
        tx.update(&table, to_sdk(&ip_whitelist::key_item(&grant.key())), &format!("SET {k} = {v}"), cond);
        // The grant's hold and its expiry go with it.
        let mut e = Expr::new();
        let remove = format!("REMOVE {}", e.name(&index::hold_attr(&grant.cidr)));
        tx.update(self.meta(), meta_key("quota", &format!("{}#{}", grant.environment, grant.owner.id)), &remove, e);
        self.index_expiry(&mut tx, Some(grant), None);
        let (mut history, mut filed) = (false, BTreeSet::new());
        self.append(&mut tx, &event, event.at, &mut history);
        self.file(&mut tx, &event.environment.to_string(), &mut filed);
        match self.commit(tx).await {
            Ok(()) => Ok(Some(mark)),
            Err(Failure::Conflict) => Ok(None),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// Deletes an item we marked, if it still carries our mark.
    pub(super) async fn delete_marked(&self, key: &GrantKey, mark: &str) -> Result<(), StoreError> {
        let table = self.tables.grants_table(&key.environment);
        let result = self
            .client
            .delete_item()
            .table_name(&table)
            .set_key(Some(to_sdk(&ip_whitelist::key_item(key))))
            .condition_expression("#r = :m")
            .expression_attribute_names("#r", ip_whitelist::REMOVAL)
            .expression_attribute_values(":m", s(mark))
            .send()
            .await;
        match result.map_err(|e| failure(&table, e.into())) {
            Ok(_) | Err(Failure::Conflict) => Ok(()),
            Err(Failure::Store(e)) => Err(e),
        }
    }

    /// One attempt at an upsert; `None` when it lost to a concurrent change.
    pub(super) async fn try_upsert(&self, request: &Upsert) -> Result<Option<Upserted>, StoreError> {
        let Upsert { grant: asked, actor, max_grants_per_user } = request;
        let mut asked = asked.clone();
        asked.created_at = ip_whitelist::to_micros(asked.created_at);
        asked.expires_at = asked.expires_at.map(ip_whitelist::to_micros);
        let now = asked.created_at;
        let env = asked.environment.clone();
        let table = self.tables.grants_table(&env);
        let read = self.read(&asked.key()).await?;
        let request = Upsert { grant: asked, actor: actor.clone(), max_grants_per_user: *max_grants_per_user };
        let mut tx = Tx::default();
        let quota_key = |owner: &str| meta_key("quota", &format!("{env}#{owner}"));
        let decided = match request.decide(read.as_ref().and_then(Read::live_grant)) {
            UpsertDecision::Refresh(decided) => {
                // The owner's hold follows the refreshed expiry.
                let mut e = Expr::new();
                let set = format!("SET {}", DynamoStore::hold_sets(&mut e, [&decided.stored], false));
                tx.update(self.meta(), quota_key(&decided.stored.owner.id), &set, e);
                decided
            }
            UpsertDecision::Add { expired } => {
                let owner = &request.grant.owner.id;
                let holds = self.holds(&env, owner, now).await?;
                let (version, attrs) = (holds.version, holds.attrs);
                // The holds count; a Scan counts again where they are missing (an item older
                // than holds) or would refuse (a hold another writer's delete left behind).
                let (held, theirs) = match holds.live {
                    Some(live) if live < *max_grants_per_user => (live, None),
                    _ => {
                        let all = self.scan(Some(&env)).await?;
                        let theirs: Vec<Grant> = all
                            .iter()
                            .filter_map(Read::live_grant)
                            .filter(|g| g.owner.id == *owner && g.is_live(now) && g.cidr != request.grant.cidr)
                            .cloned()
                            .collect();
                        (theirs.len(), Some(theirs))
                    }
                };
                let decided = request.add(expired, held)?;
                // Two concurrent adds by one owner: only one may pass the count it read.
                let mut cond = Expr::new();
                let vk = cond.name("v");
                match version {
                    Some(v) => {
                        let vv = cond.value(n(v));
                        cond.and(format!("{vk} = {vv}"));
                    }
                    None => cond.and(format!("attribute_not_exists({vk})")),
                }
                let one = cond.value(n(1));
                let kept: Vec<&Grant> = std::iter::once(&decided.stored).chain(theirs.iter().flatten()).collect();
                let holds = DynamoStore::hold_sets(&mut cond, kept.iter().copied(), true);
                let mut set = format!("ADD {vk} {one} SET {holds}");
                // Where a Scan counted, holds it did not find (left by another writer's
                // delete) go, so the next add counts by holds again.
                if theirs.is_some() {
                    let keep: BTreeSet<String> = kept.iter().map(|g| index::hold_attr(&g.cidr)).collect();
                    let stale: Vec<String> = attrs.iter().filter(|a| !keep.contains(*a)).map(|a| cond.name(a)).collect();
                    if !stale.is_empty() {
                        set.push_str(&format!(" REMOVE {}", stale.join(", ")));
                    }
                }
                tx.update(self.meta(), quota_key(owner), &set, cond);
                decided
            }
        };
        let Decided { stored, previous, mut events } = decided;
        self.index_expiry(&mut tx, read.as_ref().and_then(|r| r.grant.as_ref().ok()), Some(&stored));
        let first = self.allocate(events.len() as i64).await?;
        tx.put(&table, to_sdk(&ip_whitelist::to_item(&stored)), Some(Expr::unchanged(read.as_ref().map(|r| &r.raw))));
        let (mut history, mut filed) = (false, BTreeSet::new());
        for (i, e) in events.iter_mut().enumerate() {
            e.id = first + i as i64;
            self.append(&mut tx, e, now, &mut history);
            self.file(&mut tx, &e.environment.to_string(), &mut filed);
        }
        match self.commit(tx).await {
            Ok(()) => Ok(Some(Upserted { grant: stored, previous })),
            Err(Failure::Conflict) => Ok(None),
            Err(Failure::Store(e)) => Err(e),
        }
    }
}
