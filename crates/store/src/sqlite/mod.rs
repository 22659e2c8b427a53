//! The embedded store: one SQLite file and its schema (migrations, here, with the helpers every
//! statement shares); each part of the `Store` as SQL in a file of its own (`grants`, `audit`,
//! `leases`, `outbox`, `tokens`, `guard`). The decisions (upsert, history, announcement) are the
//! pure functions of this crate.

mod audit;
mod grants;
mod guard;
mod leases;
mod outbox;
mod tokens;

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portcullis_core::TargetId;
use portcullis_core::guard::{ChangeRequest, GroupRule, RequestStatus};
use portcullis_core::{
    Action, ActorName, ApiToken, AuditEvent, AuditScope, Cidr, Description, Environment, Grant, GrantKey, Interface,
    InvalidInput, Owner, Role, Source, Timestamp,
};
use rusqlite::{Connection, OptionalExtension, Row, Transaction, TransactionBehavior, params};

use crate::{
    Actor, AuditQuery, Decided, LeaseClaim, LeaseHolder, Notice, OutboxStatus, Settlement, StoreError, Upsert, UpsertDecision,
    Upserted, grant_event as event, sweeper_actor as sweeper, token_event,
};

/// Schema migrations, applied in order; `PRAGMA user_version` counts those applied.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE grants (
    cidr            TEXT NOT NULL,
    environment     TEXT NOT NULL,
    owner_id        TEXT NOT NULL,
    owner_name      TEXT NOT NULL,
    owner_display   TEXT NOT NULL DEFAULT '',
    source          TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    updated_at_ms   INTEGER NOT NULL,
    PRIMARY KEY (cidr, environment)
);
CREATE INDEX grants_expiry ON grants (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
CREATE TABLE audit (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms       INTEGER NOT NULL,
    actor       TEXT NOT NULL,
    interface   TEXT NOT NULL,
    action      TEXT NOT NULL,
    environment TEXT NOT NULL,
    cidr        TEXT,
    before_json TEXT,
    after_json  TEXT,
    reason      TEXT NOT NULL
);
CREATE INDEX audit_environment ON audit (environment, id);
-- Environments with at least one grant change, kept with the audit log so the empty-store
-- safety check is a lookup, not a scan of the whole log.
CREATE TABLE environments (
    name          TEXT PRIMARY KEY,
    first_change_ms INTEGER NOT NULL
);
CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
"#,
    r#"
-- Announcements waiting to be delivered, one per announced audit event, written in the same
-- transaction as the event. A notice is leased to the process that wrote or claimed it.
CREATE TABLE outbox (
    audit_id        INTEGER PRIMARY KEY REFERENCES audit (id),
    state           TEXT NOT NULL DEFAULT 'pending',  -- pending | delivered | abandoned
    claimed_by      TEXT,
    lease_until_ms  INTEGER NOT NULL DEFAULT 0,
    next_attempt_ms INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    last_error      TEXT,
    settled_at_ms   INTEGER
);
CREATE INDEX outbox_pending ON outbox (audit_id) WHERE state = 'pending';
CREATE INDEX outbox_settled ON outbox (settled_at_ms) WHERE state != 'pending';
"#,
    r#"
-- Named leases (one sweeper among several processes), and the keys of events recorded once
-- (stream records, which may be delivered more than once).
CREATE TABLE leases (
    name     TEXT PRIMARY KEY,
    holder   TEXT NOT NULL,
    until_ms INTEGER NOT NULL
);
CREATE TABLE recorded_once (
    key      TEXT PRIMARY KEY,
    audit_id INTEGER NOT NULL REFERENCES audit (id)
);
"#,
    r#"
-- API tokens: only a SHA-256 of each secret is kept.
CREATE TABLE tokens (
    id             TEXT PRIMARY KEY,
    hash           TEXT NOT NULL UNIQUE,
    user           TEXT NOT NULL,
    role           TEXT NOT NULL,
    environments   TEXT NOT NULL DEFAULT '',  -- comma-separated; empty = any
    created_at_ms  INTEGER NOT NULL,
    expires_at_ms  INTEGER,
    revoked_at_ms  INTEGER,
    created_by     TEXT NOT NULL
);
"#,
    r#"
-- Request signatures seen (Slack's, IAM logins'), until they could no longer be replayed.
CREATE TABLE claims (
    key      TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
CREATE INDEX claims_until ON claims (until_ms);
"#,
    r#"
-- Guard: change requests (the request as JSON; version for conditional decisions) and the
-- approved rules of each guarded group.
CREATE TABLE change_requests (
    id            TEXT PRIMARY KEY,
    event_id      TEXT NOT NULL UNIQUE,
    status        TEXT NOT NULL,
    version       INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    body          TEXT NOT NULL
);
CREATE INDEX change_requests_status ON change_requests (status, created_at_ms);
CREATE TABLE baselines (
    region   TEXT NOT NULL,
    group_id TEXT NOT NULL,
    rules    TEXT NOT NULL,
    PRIMARY KEY (region, group_id)
);
-- The request a guard event is about, so its notice can show it (and its buttons).
ALTER TABLE audit ADD COLUMN request_json TEXT;
"#,
    r#"
-- Guard's ledger: the changes it is about to make, so the events they cause are its own.
CREATE TABLE own_changes (
    key      TEXT PRIMARY KEY,
    until_ms INTEGER NOT NULL
);
"#,
];

/// Settled notices are kept this long (for inspection), then deleted.
const SETTLED_RETENTION: time::Duration = time::Duration::days(7);

/// The embedded store: one SQLite file in WAL mode, safe for the CLI and a running server to
/// share (writes take the lock up front with `BEGIN IMMEDIATE` and wait for each other).
#[derive(Clone)]
pub struct SqliteStore {
    path: PathBuf,
    conn: Arc<Mutex<Connection>>,
    instance: Arc<str>,
}

impl SqliteStore {
    /// Opens the store, creating the file (mode 0600) and its schema on first use.
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let location = path.display().to_string();
        let io = |source| StoreError::Io { location: location.clone(), source };
        OpenOptions::new().read(true).write(true).create(true).truncate(false).mode(0o600).open(&path).map_err(io)?;
        let sqlite = |source: rusqlite::Error| StoreError::Backend { location: location.clone(), source: Box::new(source) };
        let mut conn = Connection::open(&path).map_err(sqlite)?;
        conn.busy_timeout(Duration::from_secs(30)).map_err(sqlite)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(sqlite)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(sqlite)?;
        migrate(&mut conn).map_err(sqlite)?;
        // `actor_is(actor, user)` is `ActorName::is`, so the audit's user filter is one rule,
        // applied in the query.
        conn.create_scalar_function(
            "actor_is",
            2,
            rusqlite::functions::FunctionFlags::SQLITE_UTF8 | rusqlite::functions::FunctionFlags::SQLITE_DETERMINISTIC,
            |cx| Ok(ActorName::new(&cx.get::<String>(0)?).is(&cx.get::<String>(1)?)),
        )
        .map_err(sqlite)?;
        let instance = crate::instance_name().into();
        Ok(SqliteStore { path, conn: Arc::new(Mutex::new(conn)), instance })
    }

    /// The store's files (the database and its `-wal`/`-shm`) that others may read or write,
    /// with their modes: a file made before portcullis created it 0600, or copied.
    pub fn exposed_files(&self) -> Vec<(PathBuf, u32)> {
        use std::os::unix::fs::PermissionsExt;
        self.files()
            .into_iter()
            .filter_map(|p| std::fs::metadata(&p).ok().map(|m| (p, m.permissions().mode() & 0o777)))
            .filter(|(_, mode)| mode & 0o077 != 0)
            .collect()
    }

    /// Makes every exposed file private (0600); returns what it changed, with the old modes.
    pub fn make_private(&self) -> Result<Vec<(PathBuf, u32)>, StoreError> {
        use std::os::unix::fs::PermissionsExt;
        let exposed = self.exposed_files();
        for (path, _) in &exposed {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| StoreError::Io { location: path.display().to_string(), source })?;
        }
        Ok(exposed)
    }

    fn files(&self) -> Vec<PathBuf> {
        let base = self.path.as_os_str().to_owned();
        let with = |suffix: &str| {
            let mut name = base.clone();
            name.push(suffix);
            PathBuf::from(name)
        };
        vec![self.path.clone(), with("-wal"), with("-shm")]
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version this file is at.
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        let conn = self.conn.lock().expect("store mutex poisoned");
        conn.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(|e| self.err(e))
    }

    fn err(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Backend { location: self.path.display().to_string(), source: Box::new(source) }
    }

    /// Runs blocking SQLite work off the async runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = conn.lock().expect("store mutex poisoned");
            work(&mut conn)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
    }

    /// Runs a write transaction that holds the write lock from its start.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let this = self.clone();
        self.run(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(|e| this.err(e))?;
            let out = work(&tx)?;
            tx.commit().map_err(|e| this.err(e))?;
            Ok(out)
        })
        .await
    }
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let version: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
    }
    tx.commit()
}

use crate::{from_millis as from_ms, millis as ms};

const GRANT_COLUMNS: &str =
    "cidr, environment, owner_id, owner_name, owner_display, source, description, created_at_ms, expires_at_ms";

const TOKEN_COLUMNS: &str = "id, hash, user, role, environments, created_at_ms, expires_at_ms, revoked_at_ms, created_by";

/// A row that does not read as what its table holds: a corrupt store.
struct CorruptRow(String);

fn request_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ChangeRequest, CorruptRow>> {
    let (id, body): (String, String) = (row.get(0)?, row.get(1)?);
    Ok(serde_json::from_str(&body).map_err(|e| CorruptRow(format!("change request {id}: {e}"))))
}

fn token_from_row(row: &Row<'_>) -> rusqlite::Result<Result<ApiToken, CorruptRow>> {
    let (id, role, envs): (String, String, String) = (row.get(0)?, row.get(3)?, row.get(4)?);
    let environments = envs.split(',').filter(|e| !e.is_empty()).map(Environment::parse).collect::<Result<_, _>>();
    let (Some(role), Ok(environments)) = (Role::parse(&role), environments) else {
        return Ok(Err(CorruptRow(format!("token {id}: unreadable role {role:?} or environments {envs:?}"))));
    };
    Ok(Ok(ApiToken {
        hash: row.get(1)?,
        user: row.get(2)?,
        role,
        environments,
        created_at: from_ms(row.get(5)?),
        expires_at: row.get::<_, Option<i64>>(6)?.map(from_ms),
        revoked_at: row.get::<_, Option<i64>>(7)?.map(from_ms),
        created_by: row.get(8)?,
        id,
    }))
}

fn grant_from_row(row: &Row<'_>) -> rusqlite::Result<Result<Grant, CorruptRow>> {
    let cidr: String = row.get(0)?;
    let environment: String = row.get(1)?;
    let source: String = row.get(5)?;
    let description: String = row.get(6)?;
    let expires: Option<i64> = row.get(8)?;
    let owner = Owner { id: row.get(2)?, name: row.get(3)?, display_name: row.get(4)? };
    let created = from_ms(row.get(7)?);
    let corrupt = |e: InvalidInput| CorruptRow(format!("grant {cidr} in {environment}: {e}"));
    Ok((|| {
        Ok(Grant {
            cidr: Cidr::parse(&cidr).map_err(corrupt)?,
            environment: Environment::parse(&environment).map_err(corrupt)?,
            owner,
            source: Source::parse(&source).ok_or_else(|| CorruptRow(format!("grant {cidr}: unknown source {source:?}")))?,
            description: Description::parse(&description).map_err(corrupt)?,
            created_at: created,
            expires_at: expires.map(from_ms),
        })
    })())
}

const AUDIT_COLUMNS: &str =
    "id, at_ms, actor, interface, action, environment, cidr, before_json, after_json, reason, request_json";

impl SqliteStore {
    /// Audit events matching a `WHERE … ORDER BY …` clause.
    fn select_audit(&self, conn: &Connection, clause: &str, args: impl rusqlite::Params) -> Result<Vec<AuditEvent>, StoreError> {
        let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit WHERE {clause}");
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(args, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, String>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, Option<String>>(7)?,
                    r.get::<_, Option<String>>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, Option<String>>(10)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, at, actor, interface, action, environment, cidr, before, after, reason, request) =
                row.map_err(|e| self.err(e))?;
            let grant = |json: Option<String>| -> Result<Option<Grant>, StoreError> {
                json.map(|j| serde_json::from_str(&j).map_err(|e| self.corrupt(format!("audit {id}: {e}")))).transpose()
            };
            out.push(AuditEvent {
                id,
                at: from_ms(at),
                actor: ActorName::new(&actor),
                interface: Interface::parse(&interface)
                    .ok_or_else(|| self.corrupt(format!("audit {id}: unknown interface {interface:?}")))?,
                action: Action::parse(&action).ok_or_else(|| self.corrupt(format!("audit {id}: unknown action {action:?}")))?,
                environment: AuditScope::parse(&environment)
                    .ok_or_else(|| self.corrupt(format!("audit {id}: unreadable environment {environment:?}")))?,
                cidr: cidr.map(|c| Cidr::parse(&c).map_err(|e| self.corrupt(format!("audit {id}: {e}")))).transpose()?,
                before: grant(before)?,
                after: grant(after)?,
                reason,
                request: request
                    .map(|j| serde_json::from_str(&j).map_err(|e| self.corrupt(format!("audit {id}: request: {e}"))))
                    .transpose()?,
            });
        }
        Ok(out)
    }

    fn corrupt(&self, message: String) -> StoreError {
        StoreError::Corrupt { location: self.path.display().to_string(), message }
    }

    /// Rows of `table` matching a `WHERE … ORDER BY …` clause, each read by `from_row` (whose
    /// inner `Err` is a row that does not parse: a corrupt store).
    fn select<T>(
        &self,
        conn: &Connection,
        columns_and_table: &str,
        clause: &str,
        args: impl rusqlite::Params,
        from_row: fn(&Row<'_>) -> rusqlite::Result<Result<T, CorruptRow>>,
    ) -> Result<Vec<T>, StoreError> {
        let sql = format!("SELECT {columns_and_table} WHERE {clause}");
        let mut stmt = conn.prepare_cached(&sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map(args, from_row).map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            out.push(row.map_err(|e| self.err(e))?.map_err(|CorruptRow(m)| self.corrupt(m))?);
        }
        Ok(out)
    }

    /// Grants matching a `WHERE … ORDER BY …` clause.
    fn select_grants(&self, conn: &Connection, clause: &str, args: impl rusqlite::Params) -> Result<Vec<Grant>, StoreError> {
        self.select(conn, &format!("{GRANT_COLUMNS} FROM grants"), clause, args, grant_from_row)
    }

    fn select_tokens(&self, conn: &Connection, clause: &str, args: impl rusqlite::Params) -> Result<Vec<ApiToken>, StoreError> {
        self.select(conn, &format!("{TOKEN_COLUMNS} FROM tokens"), clause, args, token_from_row)
    }

    /// Change requests matching a `WHERE … ORDER BY …` clause.
    fn select_requests(
        &self,
        conn: &Connection,
        clause: &str,
        args: impl rusqlite::Params,
    ) -> Result<Vec<ChangeRequest>, StoreError> {
        self.select(conn, "id, body FROM change_requests", clause, args, request_from_row)
    }

    fn get(&self, tx: &Connection, key: &GrantKey) -> Result<Option<Grant>, StoreError> {
        let args = params![key.cidr.to_string(), key.environment.as_str()];
        Ok(self.select_grants(tx, "cidr = ?1 AND environment = ?2", args)?.pop())
    }

    fn put(&self, tx: &Connection, g: &Grant, now: Timestamp) -> Result<(), StoreError> {
        tx.execute(
            "INSERT INTO grants (cidr, environment, owner_id, owner_name, owner_display, source, description,
                                 created_at_ms, expires_at_ms, updated_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
             ON CONFLICT (cidr, environment) DO UPDATE SET
                owner_id = excluded.owner_id, owner_name = excluded.owner_name,
                owner_display = excluded.owner_display, source = excluded.source,
                description = excluded.description, created_at_ms = excluded.created_at_ms,
                expires_at_ms = excluded.expires_at_ms, updated_at_ms = excluded.updated_at_ms",
            params![
                g.cidr.to_string(),
                g.environment.as_str(),
                g.owner.id,
                g.owner.name,
                g.owner.display_name,
                g.source.as_str(),
                g.description.as_str(),
                ms(g.created_at),
                g.expires_at.map(ms),
                ms(now),
            ],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn delete(&self, tx: &Connection, key: &GrantKey) -> Result<(), StoreError> {
        tx.execute(
            "DELETE FROM grants WHERE cidr = ?1 AND environment = ?2",
            params![key.cidr.to_string(), key.environment.as_str()],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    fn append(&self, tx: &Connection, e: &AuditEvent) -> Result<(), StoreError> {
        let json = |g: &Option<Grant>| g.as_ref().map(|g| serde_json::to_string(g).expect("grants serialise"));
        tx.execute(
            "INSERT INTO audit (at_ms, actor, interface, action, environment, cidr, before_json, after_json, reason, request_json)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            params![
                ms(e.at),
                e.actor.as_str(),
                e.interface.as_str(),
                e.action.as_str(),
                e.environment.to_string(),
                e.cidr.map(|c| c.to_string()),
                json(&e.before),
                json(&e.after),
                e.reason,
                e.request.as_ref().map(|r| serde_json::to_string(r).expect("requests serialise")),
            ],
        )
        .map_err(|e| self.err(e))?;
        if crate::is_announced(e.action) {
            tx.execute(
                "INSERT INTO outbox (audit_id, claimed_by, lease_until_ms, next_attempt_ms) VALUES (?1, ?2, ?3, ?4)",
                params![tx.last_insert_rowid(), &*self.instance, ms(e.at + crate::NOTICE_LEASE), ms(e.at)],
            )
            .map_err(|e| self.err(e))?;
        }
        if crate::is_grant_change(e.action) {
            tx.execute(
                "INSERT OR IGNORE INTO environments (name, first_change_ms) VALUES (?1, ?2)",
                params![e.environment.to_string(), ms(e.at)],
            )
            .map_err(|e| self.err(e))?;
        }
        Ok(())
    }
}
