//! Store tests against SQLite files on disk.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;

use portcullis_core::{Action, Cidr, Description, Environment, Grant, Interface, Owner, Source, Timestamp, ValidationError};
use portcullis_store::{Actor, NOTICE_LEASE, Settlement, SqliteStore, Store, StoreError, Upsert};
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
    assert_eq!(store.schema_version().unwrap(), 5);
    drop(store);
    let again = SqliteStore::open(&path).unwrap();
    assert_eq!(again.schema_version().unwrap(), 5);
    assert!(SqliteStore::open(dir.path().join("missing/dir/p.db")).is_err());
}

#[tokio::test]
async fn refresh_keeps_owner_takes_later_expiry_and_audits_both_users() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let first = store.upsert(upsert(grant("198.51.100.7", "alice", "home", T0, Duration::days(7)), "alice")).await.unwrap();
    assert!(first.previous.is_none());
    let later = T0 + Duration::hours(1);
    let second = store.upsert(upsert(grant("198.51.100.7/32", "bob", "office", later, Duration::hours(1)), "bob")).await.unwrap();
    assert_eq!(second.grant.owner.name, "alice");
    assert_eq!(second.grant.description.as_str(), "office");
    assert_eq!(second.grant.expires_at, Some(T0 + Duration::days(7)));
    assert_eq!(store.grants(None).await.unwrap().len(), 1);
    assert_eq!(store.grant(&second.grant.key()).await.unwrap(), Some(second.grant.clone()), "one grant by its key");
    let other =
        portcullis_core::GrantKey { cidr: Cidr::parse("198.51.100.8").unwrap(), environment: Environment::parse("dev").unwrap() };
    assert_eq!(store.grant(&other).await.unwrap(), None);
    let audit = store.audit(None, 10).await.unwrap();
    assert_eq!(audit[0].action, Action::Refreshed);
    assert!(audit[0].reason.contains("bob") && audit[0].reason.contains("alice"), "{}", audit[0].reason);
    assert_eq!(audit[1].action, Action::Added);
    assert!(store.environments_with_history().await.unwrap().contains(&Environment::parse("dev").unwrap()));
}

#[tokio::test]
async fn per_user_limit_is_atomic_and_expire_sweeps_exactly_the_due() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    for i in 1..=3 {
        store.upsert(upsert(grant(&format!("203.0.113.{i}"), "alice", "", T0, Duration::minutes(i)), "alice")).await.unwrap();
    }
    let err = store.upsert(upsert(grant("203.0.113.9", "alice", "", T0, Duration::days(1)), "alice")).await.unwrap_err();
    assert!(matches!(err, StoreError::Validation(ValidationError::TooManyGrants { .. })), "{err}");
    assert_eq!(store.next_expiry().await.unwrap(), Some(T0 + Duration::minutes(1)));
    // Only the environments asked for: a sweep whose revoke failed elsewhere leaves those due.
    assert!(store.expire(T0 + Duration::minutes(2), &BTreeSet::new()).await.unwrap().is_empty());
    let dev = BTreeSet::from([Environment::parse("dev").unwrap()]);
    let gone = store.expire(T0 + Duration::minutes(2), &dev).await.unwrap();
    assert_eq!(gone.len(), 2);
    assert_eq!(store.grants(None).await.unwrap().len(), 1);
    let expired = store.audit(None, 10).await.unwrap().into_iter().filter(|e| e.action == Action::Expired).count();
    assert_eq!(expired, 2);
    // Expired grants no longer count against the limit.
    store.upsert(upsert(grant("203.0.113.9", "alice", "", T0 + Duration::minutes(2), Duration::days(1)), "alice")).await.unwrap();
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
async fn two_handles_on_one_file_never_lose_a_write() {
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
async fn announced_changes_enter_the_outbox_with_their_audit_record() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let (cli, server) = (SqliteStore::open(&path).unwrap(), SqliteStore::open(&path).unwrap());
    assert_ne!(cli.instance(), server.instance());
    let g = grant("198.51.100.7", "alice", "home", T0, Duration::days(1));
    cli.upsert(upsert(g.clone(), "alice")).await.unwrap();
    cli.upsert(upsert(g.clone(), "alice")).await.unwrap(); // a refresh is audited, not announced
    cli.remove(&g.key(), &actor("bob"), T0).await.unwrap();
    assert_eq!(cli.outbox_status().await.unwrap().pending, 2);

    // The writer holds its notices for NOTICE_LEASE; another process waits for the lease.
    assert_eq!(server.claim_notice(T0).await.unwrap(), None);
    let first = cli.claim_notice(T0).await.unwrap().unwrap();
    assert_eq!((first.event.action, first.attempts), (Action::Added, 0));
    cli.settle_notice(first.event.id, Settlement::Delivered, T0).await.unwrap();
    let second = cli.claim_notice(T0).await.unwrap().unwrap();
    assert_eq!(second.event.action, Action::Removed);
    assert_eq!(second.event.before.as_ref().unwrap().description.as_str(), "home");
    let retry_at = T0 + Duration::seconds(2);
    cli.settle_notice(second.event.id, Settlement::Retry { at: retry_at, error: "503".into() }, T0).await.unwrap();
    assert_eq!(cli.claim_notice(T0 + Duration::seconds(1)).await.unwrap(), None, "not due before its retry time");
    assert_eq!(server.outbox_status().await.unwrap().next_due, Some(retry_at));

    // A released notice is anyone's once due; a claimed one is not, until its lease lapses.
    let again = server.claim_notice(retry_at).await.unwrap().unwrap();
    assert_eq!((again.event.id, again.attempts), (second.event.id, 1));
    assert_eq!(cli.claim_notice(retry_at).await.unwrap(), None);
    let crashed = cli.claim_notice(retry_at + NOTICE_LEASE).await.unwrap().unwrap();
    assert_eq!(crashed.event.id, second.event.id, "a crashed claimant's notice is delivered by another");
    cli.settle_notice(crashed.event.id, Settlement::Delivered, retry_at + NOTICE_LEASE).await.unwrap();
    assert_eq!(cli.outbox_status().await.unwrap().pending, 0);
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
    conn.execute_batch("DROP TABLE outbox; DROP TABLE leases; DROP TABLE recorded_once; DROP TABLE tokens; DROP TABLE claims; PRAGMA user_version = 1;").unwrap();
    drop(conn);
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), 5);
    assert_eq!(store.grants(None).await.unwrap().len(), 1);
    assert_eq!(store.outbox_status().await.unwrap().pending, 0, "old changes are not announced again");
}

#[tokio::test]
async fn one_lease_holder_at_a_time_until_it_lapses_or_is_released() {
    use portcullis_store::LeaseClaim;
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let claim = |holder, now| LeaseClaim { name: "sweeper", holder, now, duration: Duration::seconds(15) };
    assert!(store.acquire_lease(claim("a", T0)).await.unwrap());
    assert!(!store.acquire_lease(claim("b", T0 + Duration::seconds(5))).await.unwrap(), "held by a");
    assert!(store.acquire_lease(claim("a", T0 + Duration::seconds(10))).await.unwrap(), "a renews");
    assert!(!store.acquire_lease(claim("b", T0 + Duration::seconds(24))).await.unwrap(), "renewed until 25 s");
    assert!(store.acquire_lease(claim("b", T0 + Duration::seconds(25))).await.unwrap(), "lapsed: b takes it");
    store.release_lease("sweeper", "a").await.unwrap();
    assert!(!store.acquire_lease(claim("a", T0 + Duration::seconds(26))).await.unwrap(), "a cannot release b's lease");
    store.release_lease("sweeper", "b").await.unwrap();
    assert!(store.acquire_lease(claim("a", T0 + Duration::seconds(27))).await.unwrap());
}

#[tokio::test]
async fn record_once_records_a_key_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let event = portcullis_core::AuditEvent {
        id: 0,
        at: T0,
        actor: "stream".into(),
        interface: portcullis_core::Interface::Stream,
        action: portcullis_core::Action::Refused,
        environment: Environment::parse("dev").unwrap().into(),
        cidr: None,
        before: None,
        after: None,
        reason: "unreadable".into(),
    };
    assert!(store.record_once(event.clone(), "stream:1").await.unwrap());
    assert!(!store.record_once(event.clone(), "stream:1").await.unwrap());
    assert!(store.record_once(event, "stream:2").await.unwrap());
    assert_eq!(store.audit(None, 10).await.unwrap().len(), 2);
}

#[tokio::test]
async fn tokens_by_hash_list_and_revoke_with_audit() {
    use portcullis_core::{ApiToken, Role};
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(dir.path().join("p.db")).unwrap();
    let token = ApiToken {
        id: "abc123".into(),
        hash: "f".repeat(64),
        user: "ci".into(),
        role: Role::Admin,
        environments: [portcullis_core::Environment::parse("dev").unwrap()].into(),
        created_at: T0,
        expires_at: Some(T0 + Duration::days(1)),
        revoked_at: None,
        created_by: "root".into(),
    };
    let actor = Actor { name: "root".into(), interface: Interface::Cli };
    store.create_token(token.clone(), &actor).await.unwrap();
    assert_eq!(store.token_by_hash(&"f".repeat(64)).await.unwrap(), Some(token.clone()));
    assert_eq!(store.token_by_hash("nope").await.unwrap(), None);
    assert!(store.create_token(token.clone(), &actor).await.is_err(), "ids and hashes are unique");
    let revoked = store.revoke_token("abc123", &actor, T0 + Duration::hours(1)).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(T0 + Duration::hours(1)));
    let again = store.revoke_token("abc123", &actor, T0 + Duration::hours(2)).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(T0 + Duration::hours(1)), "revoking twice changes nothing");
    assert_eq!(store.revoke_token("missing", &actor, T0).await.unwrap(), None);
    assert_eq!(store.tokens().await.unwrap(), vec![revoked]);
    let audit = store.audit(None, 10).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["token-revoked", "token-created"]);
    assert!(!audit[0].reason.contains(&"f".repeat(64)), "the audit never holds the hash");
}

#[tokio::test]
async fn a_claim_holds_until_it_lapses_across_handles_on_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.db");
    let (one, two) = (SqliteStore::open(&path).unwrap(), SqliteStore::open(&path).unwrap());
    let until = T0 + Duration::minutes(10);
    assert!(one.claim_once("slack:v0=abc", T0, until).await.unwrap(), "first use");
    assert!(!two.claim_once("slack:v0=abc", T0 + Duration::minutes(1), until).await.unwrap(), "a replay, through another handle");
    assert!(two.claim_once("slack:v0=def", T0, until).await.unwrap(), "another signature");
    assert!(one.claim_once("slack:v0=abc", until, until + Duration::minutes(10)).await.unwrap(), "lapsed: claimable again");
}
