//! Store tests against SQLite files on disk: the store contract (`contract`, shared with the
//! DynamoDB store), then what only SQLite has (file modes, migrations, triggers).

/// The store contract on two handles on one SQLite file.
mod contract {
    use std::sync::Arc;

    use portcullis_store::SqliteStore;
    use portcullis_store::contract::Pair;

    async fn pair() -> Pair {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("p.db");
        let (a, b) = (SqliteStore::open(&path).unwrap(), SqliteStore::open(&path).unwrap());
        // SQLite takes its write lock before it reads: two writers cannot interleave.
        Pair { a: Arc::new(a), b: Arc::new(b), keep: Box::new(dir), interleave: None }
    }

    portcullis_store::store_contract!(pair);
}

use std::os::unix::fs::PermissionsExt;

use portcullis_core::{Action, Cidr, Description, Environment, Grant, Interface, Owner, Source, Timestamp};
use portcullis_store::prelude::*;
use portcullis_store::{Actor, SqliteStore, Upsert};
use time::Duration;
use time::macros::datetime;

const T0: Timestamp = datetime!(2026-03-01 09:00 UTC);

fn grant(cidr: &str, owner: &str, desc: &str, at: Timestamp, ttl: Duration) -> Grant {
    Grant {
        cidr: Cidr::parse(cidr).unwrap(),
        environment: Environment::parse("dev").unwrap(),
        owner: Owner::named(owner),
        source: Source::Manual,
        description: Description::parse(desc).unwrap(),
        created_at: at,
        expires_at: Some(at + ttl),
    }
}

fn actor(name: &str) -> Actor {
    Actor { name: name.into(), interface: Interface::Cli }
}

fn upsert(g: Grant, who: &str) -> Upsert {
    Upsert { grant: g, actor: actor(who), max_grants_per_user: 3 }
}

#[tokio::test]
async fn created_private_and_migrated_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    assert_eq!(store.schema_version().unwrap(), 7);
    drop(store);
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(again.schema_version().unwrap(), 7);
    assert!(SqliteStore::open(dir.path().join("missing/dir/p.db")).is_err());
}

#[tokio::test]
async fn audit_log_is_append_only() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let store = SqliteStore::open(&path).unwrap();
    store.upsert(upsert(grant("198.51.100.7", "alice", "", T0, Duration::days(1)), "alice")).await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert!(conn.execute("DELETE FROM audit", []).is_err());
    assert!(conn.execute("UPDATE audit SET actor = 'mallory'", []).is_err());
}

#[tokio::test]
async fn forty_concurrent_writes_through_two_handles_on_one_file_all_land_and_are_audited() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let (a, b) = (SqliteStore::open(&path).unwrap(), SqliteStore::open(&path).unwrap());
    let mut tasks = Vec::new();
    for i in 0..40u8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let g = grant(&format!("203.0.113.{i}"), &format!("user{i}"), "", T0, Duration::days(1));
            store.upsert(upsert(g, "x")).await.unwrap();
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(a.grants(None).await.unwrap().len(), 40);
    assert_eq!(b.audit(None, 100).await.unwrap().len(), 40);
}

#[tokio::test]
async fn history_counts_grant_changes_not_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    assert!(store.environments_with_history().await.unwrap().is_empty());
    store
        .record(portcullis_core::AuditEvent {
            id: 0,
            at: T0,
            actor: "mallory".into(),
            interface: Interface::Cli,
            action: Action::Refused,
            environment: Environment::parse("prod").unwrap().into(),
            cidr: None,
            before: None,
            after: None,
            reason: "not allowed".into(),
            request: None,
        })
        .await
        .unwrap();
    assert!(store.environments_with_history().await.unwrap().is_empty(), "a refusal is no history");
    let g = grant("198.51.100.7", "alice", "", T0, Duration::days(1));
    store.upsert(upsert(g.clone(), "alice")).await.unwrap();
    store.remove(&g.key(), &actor("alice"), T0).await.unwrap();
    let history = store.environments_with_history().await.unwrap();
    assert_eq!(history.into_iter().collect::<Vec<_>>(), [Environment::parse("dev").unwrap()]);
}

#[tokio::test]
async fn a_store_from_before_the_outbox_is_migrated_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let store = SqliteStore::open(&path).unwrap();
    let g = grant("198.51.100.7", "alice", "home", T0, Duration::days(1));
    store.upsert(upsert(g, "alice")).await.unwrap();
    drop(store);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("DROP TABLE outbox; DROP TABLE leases; DROP TABLE recorded_once; DROP TABLE tokens; DROP TABLE claims; DROP TABLE change_requests; DROP TABLE baselines; DROP TABLE own_changes; ALTER TABLE audit DROP COLUMN request_json; PRAGMA user_version = 1;").unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 7);
    assert_eq!(store.grants(None).await.unwrap().len(), 1);
    assert_eq!(store.outbox_status().await.unwrap().pending, 0, "old changes are not announced again");
}
