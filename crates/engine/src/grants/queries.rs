//! What interfaces may ask: live grants, the audit log, the process's status and API tokens.
//! Interfaces read through these, never through the store, so a rule about what is shown
//! (live grants only, audit limits) is written once.

use portcullis_core::{ApiToken, AuditEvent, AuditScope, Grant};
pub use portcullis_store::AuditQuery;

use crate::{EngineError, Gauges, Grants, Requester, Scope, Status};

/// How long the gauges read for a scrape are reused while this process changes nothing: with
/// scrapes every few seconds, the store is read (on DynamoDB, a Scan of the grants) at most
/// this often, and a change made here shows at the next scrape.
pub const GAUGES_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(15);

impl Grants {
    /// The grants that open the firewall now (stored but expired ones are not shown), in one
    /// environment or in every one the requester's credentials are valid in.
    pub async fn live_grants(&self, scope: &Scope, by: &Requester) -> Result<Vec<Grant>, EngineError> {
        if let Some(env) = scope.environment() {
            self.authorize_read(env, by).await?;
        }
        let visible = self.visible_environments(by);
        let now = self.clock().now();
        let grants = self.store().grants(scope.environment()).await?;
        let sees = |g: &Grant| !by.credential.is_limited() || visible.contains(&g.environment);
        Ok(grants.into_iter().filter(|g| g.is_live(now) && sees(g)).collect())
    }

    /// The live grant with this key (a caller's own address, say), if any; the requester's
    /// credentials must be valid in its environment.
    pub async fn live_grant(&self, key: &portcullis_core::GrantKey, by: &Requester) -> Result<Option<Grant>, EngineError> {
        self.authorize_read(&key.environment, by).await?;
        let now = self.clock().now();
        Ok(self.store().grant(key).await?.filter(|g| g.is_live(now)))
    }

    /// The audit log, newest first: one environment's, or what the requester may see of all
    /// (a limited credential sees no event about every environment or none).
    pub async fn audit(&self, query: &AuditQuery, by: &Requester) -> Result<Vec<AuditEvent>, EngineError> {
        if let Some(env) = &query.environment {
            self.authorize_read(env, by).await?;
        }
        let visible = self.visible_environments(by);
        let sees = |scope: &AuditScope| match scope {
            AuditScope::Environment(e) => visible.contains(e),
            AuditScope::Environments(es) => es.iter().all(|e| visible.contains(e)),
            AuditScope::All | AuditScope::Unknown => !by.credential.is_limited(),
        };
        let events = self.store().query_audit(query).await?;
        Ok(events.into_iter().filter(|e| !by.credential.is_limited() || sees(&e.environment)).collect())
    }

    /// The last reconcile, the next expiry, overdue grants, the outbox and the lease. A
    /// limited credential sees only its environments' grants, and no reconcile summary (it
    /// names every environment's groups).
    pub async fn status(&self, by: &Requester) -> Result<Status, EngineError> {
        let now = self.clock().now();
        let visible = self.visible_environments(by);
        let sees = |g: &Grant| !by.credential.is_limited() || visible.contains(&g.environment);
        let grants: Vec<Grant> = self.store().grants(None).await?.into_iter().filter(sees).collect();
        let next_expiry = grants.iter().filter_map(|g| g.expires_at).min();
        let overdue = grants.into_iter().filter(|g| !g.is_live(now)).collect();
        let last_reconcile = match by.credential.is_limited() {
            true => None,
            false => self.last_reconcile.lock().expect("status mutex poisoned").clone(),
        };
        let outbox_pending = self.store().outbox_status().await?.pending;
        let sweeper_lease = self.lease().map(|l| l.is_held());
        let sweeper_lease_holder = self.store().lease_holder(crate::SWEEPER_LEASE, now).await?;
        let refused_grants =
            self.refused.lock().expect("refusal map poisoned").values().filter(|r| sees(&r.grant)).cloned().collect();
        Ok(Status {
            last_reconcile,
            next_expiry,
            overdue,
            outbox_pending,
            sweeper_lease,
            sweeper_lease_holder,
            instance: self.store().instance().to_string(),
            refused_grants,
            temporary_approval: None,
            break_glass_ttl: None,
        })
    }

    /// The grants' part of the gauges, read now: live grants by environment and source, and
    /// the outbox's backlog (the engine adds the rest, and caches them).
    pub(crate) async fn gauges(&self) -> Result<Gauges, EngineError> {
        let now = self.clock().now();
        let mut live_grants = std::collections::BTreeMap::new();
        for g in self.store().grants(None).await?.into_iter().filter(|g| g.is_live(now)) {
            *live_grants.entry((g.environment, g.source)).or_insert(0) += 1;
        }
        let outbox_pending = self.store().outbox_status().await?.pending;
        Ok(Gauges { live_grants, outbox_pending, lease_held: None, pending_requests: 0 })
    }

    /// Whether this is the first use of `key` (a request signature) within `lifetime`, across
    /// every process on the store: a replayed request is refused by whichever replica it reaches.
    pub async fn first_use(&self, key: &str, lifetime: time::Duration) -> Result<bool, EngineError> {
        let now = self.clock().now();
        Ok(self.store().claim_once(key, now, now + lifetime).await?)
    }

    /// Stores a new API token (by hash) and audits its creation.
    pub async fn create_token(&self, token: ApiToken, by: &Requester) -> Result<(), EngineError> {
        Ok(self.store().create_token(token, &by.actor()).await?)
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> Result<Vec<ApiToken>, EngineError> {
        Ok(self.store().tokens().await?)
    }

    /// The token whose secret hashes to `hash`, revoked and expired ones included: looked up on
    /// every request, so a revocation takes effect at once.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<ApiToken>, EngineError> {
        Ok(self.store().token_by_hash(hash).await?)
    }

    /// Revokes a token now and audits it; `None` when there is no such id.
    pub async fn revoke_token(&self, id: &str, by: &Requester) -> Result<Option<ApiToken>, EngineError> {
        Ok(self.store().revoke_token(id, &by.actor(), self.clock().now()).await?)
    }
}

/// A term in the TTL grammar (`24h`, `7d`, `90m`), as a decision's `for` takes it: hours up
/// to a day, so the configured 24 h reads `24h`, as people say it.
pub(crate) fn term(duration: time::Duration) -> String {
    let s = duration.whole_seconds().max(60);
    if s % 3600 == 0 && s <= 86_400 {
        return format!("{}h", s / 3600);
    }
    portcullis_core::Ttl::from_seconds(s as u64).map_or_else(|_| format!("{}m", s / 60), |ttl| ttl.to_string())
}
