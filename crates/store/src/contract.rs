//! The contract every [`Store`] keeps, as one suite each backend runs: SQLite here, DynamoDB on
//! moto in the binary's tests. Each case gets two handles on one fresh store (two processes,
//! each with its own [`Store::instance`]), so races between writers are part of the contract;
//! where a backend can interleave two writers, [`Pair::interleave`] forces it.
//!
//! [`store_contract!`](crate::store_contract) turns every case into a test of its own.

use std::collections::BTreeSet;
use std::sync::Arc;

use portcullis_core::{
    Action, ApiToken, AuditEvent, Cidr, Description, Environment, Grant, GrantKey, Interface, Owner, Role, Source, Timestamp,
};
use time::Duration;
use time::macros::datetime;

use portcullis_core::TargetId;
use portcullis_core::guard::{ChangeRequest, GroupRule, GuardRule, GuardedGroup, RequestStatus, RuleSource};

use crate::{Actor, AuditQuery, LeaseClaim, LeaseHolder, NOTICE_LEASE, Settlement, Store, StoreError, Upsert};
use portcullis_core::PolicyRefusal;

/// Two handles on one store, as two processes would hold it.
pub struct Pair {
    pub a: Arc<dyn Store>,
    pub b: Arc<dyn Store>,
    /// Whatever must outlive the case (a temporary directory, say).
    pub keep: Box<dyn std::any::Any + Send>,
    /// How to force two writers to read before either writes, where the backend lets them
    /// (DynamoDB's conditional writes: a proxy holds the writes). `None` where a writer takes
    /// its lock before it reads (SQLite's `BEGIN IMMEDIATE`), so the race cannot happen.
    pub interleave: Option<Arc<dyn Interleave>>,
}

/// Forces a race: writes are held until every writer has read.
pub trait Interleave: Send + Sync {
    /// Holds the next `writers` writes until all of them have been made (each writer has read
    /// by then), then lets them through together.
    fn hold(&self, writers: usize);
    /// How many writes the last hold held before it let them through: `writers` when the race
    /// was forced, fewer when it gave up waiting.
    fn held(&self) -> usize;
}

/// Runs two racing calls, forced to read before either writes where `p` can force it; checks
/// that it was.
async fn race<A, B>(p: &Pair, round: impl std::fmt::Display, a: A, b: B) -> (A::Output, B::Output)
where
    A: std::future::Future,
    B: std::future::Future,
{
    if let Some(interleave) = &p.interleave {
        interleave.hold(2);
    }
    let out = tokio::join!(a, b);
    if let Some(interleave) = &p.interleave {
        assert_eq!(interleave.held(), 2, "{round}: the race was not forced: both writers must read before either writes");
    }
    out
}

/// The environments the cases use; a backend must be able to hold grants in both.
pub const ENVIRONMENTS: [&str; 2] = ["dev", "prod"];

const T0: Timestamp = datetime!(2026-03-01 09:00 UTC);
const LIMIT: usize = 3;

fn env(name: &str) -> Environment {
    Environment::parse(name).expect("a valid environment")
}

fn grant(cidr: &str, environment: &str, owner: &str, at: Timestamp, ttl: Duration) -> Grant {
    Grant {
        cidr: Cidr::parse(cidr).expect("a valid cidr"),
        environment: env(environment),
        owner: Owner::named(owner),
        source: Source::Manual,
        description: Description::parse("").expect("an empty description"),
        created_at: at,
        expires_at: Some(at + ttl),
    }
}

fn actor(name: &str) -> Actor {
    Actor { name: name.into(), interface: Interface::Cli }
}

fn upsert(grant: Grant, by: &str) -> Upsert {
    Upsert { grant, actor: actor(by), max_grants_per_user: LIMIT }
}

fn key(cidr: &str, environment: &str) -> GrantKey {
    GrantKey { cidr: Cidr::parse(cidr).expect("a valid cidr"), environment: env(environment) }
}

fn event(action: Action, reason: &str) -> AuditEvent {
    AuditEvent {
        id: 0,
        at: T0,
        actor: "stream".into(),
        interface: Interface::Stream,
        action,
        environment: env("dev").into(),
        cidr: None,
        before: None,
        after: None,
        reason: reason.into(),
        request: None,
    }
}

/// The audit actions recorded for one address, oldest first.
async fn actions_for(store: &dyn Store, cidr: &str) -> Vec<Action> {
    let cidr = Cidr::parse(cidr).expect("a valid cidr");
    let mut events: Vec<AuditEvent> =
        store.audit(None, 10_000).await.expect("audit").into_iter().filter(|e| e.cidr == Some(cidr)).collect();
    events.reverse();
    events.into_iter().map(|e| e.action).collect()
}

/// Add, look up, refresh by another user (owner kept, later expiry, description replaced),
/// remove, remove again; each change audited, the environment in the history.
pub async fn upsert_refresh_remove(p: Pair) {
    assert!(p.a.environments_with_history().await.unwrap().is_empty(), "a new store has no history");
    let first = p.a.upsert(upsert(grant("198.51.100.7", "dev", "alice", T0, Duration::days(7)), "alice")).await.unwrap();
    assert!(first.previous.is_none());
    assert_eq!(p.b.grant(&key("198.51.100.7", "dev")).await.unwrap(), Some(first.grant.clone()), "read through the other handle");
    assert_eq!(p.b.grant(&key("198.51.100.7", "prod")).await.unwrap(), None, "keys are per environment");

    let mut asked = grant("198.51.100.7/32", "dev", "bob", T0 + Duration::hours(1), Duration::hours(1));
    asked.description = Description::parse("office").unwrap();
    let second = p.b.upsert(upsert(asked, "bob")).await.unwrap();
    assert_eq!(second.previous.as_ref(), Some(&first.grant));
    assert_eq!(second.grant.owner.name, "alice", "the owner is kept");
    assert_eq!(second.grant.description.as_str(), "office", "the description is replaced");
    assert_eq!(second.grant.expires_at, Some(T0 + Duration::days(7)), "the later expiry is kept");
    assert_eq!(p.a.grants(Some(&env("dev"))).await.unwrap(), vec![second.grant.clone()]);
    assert!(p.a.grants(Some(&env("prod"))).await.unwrap().is_empty());

    let removed = p.a.remove(&key("198.51.100.7", "dev"), &actor("carol"), T0 + Duration::hours(2)).await.unwrap();
    assert_eq!(removed, Some(second.grant));
    assert_eq!(p.b.remove(&key("198.51.100.7", "dev"), &actor("carol"), T0 + Duration::hours(2)).await.unwrap(), None);
    assert!(p.b.grants(None).await.unwrap().is_empty());
    assert_eq!(actions_for(p.a.as_ref(), "198.51.100.7/32").await, [Action::Added, Action::Refreshed, Action::Removed]);
    let refreshed = p.a.audit(None, 10).await.unwrap().into_iter().find(|e| e.action == Action::Refreshed).unwrap();
    assert!(refreshed.reason.contains("bob") && refreshed.reason.contains("alice"), "{}", refreshed.reason);
    assert_eq!(p.b.environments_with_history().await.unwrap(), BTreeSet::from([env("dev")]));
}

/// The per-user limit counts live grants of one owner in one environment; `expire` takes
/// exactly the due grants of the environments asked for, and records each once.
pub async fn per_user_limit_and_expiry(p: Pair) {
    for i in 1..=LIMIT as i64 {
        p.a.upsert(upsert(grant(&format!("203.0.113.{i}"), "dev", "alice", T0, Duration::minutes(i)), "alice")).await.unwrap();
    }
    let err = p.b.upsert(upsert(grant("203.0.113.9", "dev", "alice", T0, Duration::days(1)), "alice")).await.unwrap_err();
    assert!(matches!(err, StoreError::Refused(PolicyRefusal::TooManyGrants { .. })), "{err}");
    assert_eq!(p.b.grant(&key("203.0.113.9", "dev")).await.unwrap(), None, "a refused add stores nothing");
    // Another owner, and the same owner elsewhere, have limits of their own.
    p.b.upsert(upsert(grant("203.0.113.10", "dev", "bob", T0, Duration::days(1)), "bob")).await.unwrap();
    p.b.upsert(upsert(grant("203.0.113.11", "prod", "alice", T0, Duration::minutes(1)), "alice")).await.unwrap();
    // A refresh of one of alice's own grants is no new grant.
    p.b.upsert(upsert(grant("203.0.113.3", "dev", "alice", T0, Duration::minutes(3)), "alice")).await.unwrap();

    assert_eq!(p.a.next_expiry().await.unwrap(), Some(T0 + Duration::minutes(1)));
    let later = T0 + Duration::minutes(2);
    assert!(p.a.expire(later, &BTreeSet::new()).await.unwrap().is_empty(), "no environment asked for, none expired");
    let mut gone: Vec<String> =
        p.a.expire(later, &BTreeSet::from([env("dev")])).await.unwrap().iter().map(|g| g.cidr.to_string()).collect();
    gone.sort();
    assert_eq!(gone, ["203.0.113.1/32", "203.0.113.2/32"], "due at or before now, in dev only");
    assert!(p.b.expire(later, &BTreeSet::from([env("dev")])).await.unwrap().is_empty(), "expired once");
    assert_eq!(
        p.b.grant(&key("203.0.113.11", "prod")).await.unwrap().map(|g| g.environment),
        Some(env("prod")),
        "prod stays due"
    );
    assert_eq!(actions_for(p.b.as_ref(), "203.0.113.1/32").await, [Action::Added, Action::Expired]);
    // Expired grants no longer count against the limit.
    p.b.upsert(upsert(grant("203.0.113.9", "dev", "alice", later, Duration::days(1)), "alice")).await.unwrap();
}

/// One holder at a time, renewable, until it lapses or its holder gives it up.
pub async fn leases(p: Pair) {
    let claim = |holder, now| LeaseClaim { name: "sweeper", holder, now, duration: Duration::seconds(15) };
    assert_eq!(p.b.lease_holder("sweeper", T0).await.unwrap(), None, "never taken");
    assert!(p.a.acquire_lease(claim("a", T0)).await.unwrap());
    let held_by_a = Some(LeaseHolder { holder: "a".into(), until: T0 + Duration::seconds(15) });
    assert_eq!(p.b.lease_holder("sweeper", T0 + Duration::seconds(14)).await.unwrap(), held_by_a, "any handle sees the holder");
    assert_eq!(p.b.lease_holder("sweeper", T0 + Duration::seconds(15)).await.unwrap(), None, "lapsed");
    assert!(!p.b.acquire_lease(claim("b", T0 + Duration::seconds(5))).await.unwrap(), "held by a");
    assert!(p.b.acquire_lease(LeaseClaim { name: "apply:dev", ..claim("b", T0) }).await.unwrap(), "leases are by name");
    assert!(p.a.acquire_lease(claim("a", T0 + Duration::seconds(10))).await.unwrap(), "a renews");
    assert!(!p.b.acquire_lease(claim("b", T0 + Duration::seconds(24))).await.unwrap(), "renewed until 25 s");
    assert!(p.b.acquire_lease(claim("b", T0 + Duration::seconds(25))).await.unwrap(), "lapsed: b takes it");
    assert_eq!(p.a.lease_holder("sweeper", T0 + Duration::seconds(26)).await.unwrap().map(|h| h.holder), Some("b".into()));
    p.a.release_lease("sweeper", "a").await.unwrap();
    assert!(!p.a.acquire_lease(claim("a", T0 + Duration::seconds(26))).await.unwrap(), "a cannot release b's lease");
    p.b.release_lease("sweeper", "b").await.unwrap();
    assert_eq!(p.a.lease_holder("sweeper", T0 + Duration::seconds(26)).await.unwrap(), None, "released");
    assert!(p.a.acquire_lease(claim("a", T0 + Duration::seconds(27))).await.unwrap(), "released: free at once");
}

/// Two processes racing for a free lease: exactly one gets it, every round.
pub async fn racing_for_one_lease(p: Pair) {
    for round in 0..10 {
        let now = T0 + Duration::minutes(round);
        let name = format!("race-{round}");
        let claim = |holder| LeaseClaim { name: &name, holder, now, duration: Duration::seconds(15) };
        let (a, b) = race(&p, round, p.a.acquire_lease(claim("a")), p.b.acquire_lease(claim("b"))).await;
        assert!(a.unwrap() ^ b.unwrap(), "round {round}: exactly one holder");
    }
}

/// `record_once` writes one event per key, whichever handle asks, however often.
pub async fn record_once_and_claims(p: Pair) {
    assert!(p.a.record_once(event(Action::Refused, "unreadable"), "stream:1").await.unwrap());
    assert!(!p.b.record_once(event(Action::Refused, "unreadable"), "stream:1").await.unwrap(), "another process");
    let (one, two) = race(
        &p,
        "record_once",
        p.a.record_once(event(Action::Refused, "raced"), "stream:2"),
        p.b.record_once(event(Action::Refused, "raced"), "stream:2"),
    )
    .await;
    assert!(one.unwrap() ^ two.unwrap(), "racing: exactly one records it");
    let recorded: Vec<String> = p.a.audit(None, 10).await.unwrap().into_iter().map(|e| e.reason).collect();
    assert_eq!(recorded, ["raced", "unreadable"]);

    let until = T0 + Duration::minutes(10);
    assert!(p.a.claim_once("slack:v0=abc", T0, until).await.unwrap(), "first use");
    assert!(!p.b.claim_once("slack:v0=abc", T0 + Duration::minutes(1), until).await.unwrap(), "a replay, elsewhere");
    assert!(p.b.claim_once("slack:v0=def", T0, until).await.unwrap(), "another key");
    assert!(p.a.claim_once("slack:v0=abc", until, until + Duration::minutes(10)).await.unwrap(), "lapsed: claimable again");
}

/// Audit queries: by environment, action and user (by name or either half of "name (id)"),
/// newest first, a page at a time from the last id seen, and the same from either handle.
pub async fn audit_queries(p: Pair) {
    let by = |actor: &str, action: Action, environment: &str, reason: &str| AuditEvent {
        actor: actor.into(),
        environment: env(environment).into(),
        ..event(action, reason)
    };
    let events = [
        by("alice", Action::Refused, "dev", "1"),
        by("john.doe (U123)", Action::Refused, "dev", "2"),
        by("malice", Action::Refused, "dev", "3"),
        by("alice", Action::DriftRepaired, "prod", "4"),
        by("alice", Action::Refused, "prod", "5"),
        by("U123", Action::Refused, "dev", "6"),
    ];
    for (i, e) in events.into_iter().enumerate() {
        let store = if i % 2 == 0 { &p.a } else { &p.b };
        store.record(e).await.unwrap();
    }
    let reasons = |events: Vec<AuditEvent>| events.into_iter().map(|e| e.reason).collect::<Vec<_>>();
    let ask = |q: AuditQuery| {
        let b = p.b.clone();
        async move { reasons(b.query_audit(&q).await.unwrap()) }
    };
    let all = AuditQuery { limit: 100, ..AuditQuery::default() };
    assert_eq!(ask(all.clone()).await, ["6", "5", "4", "3", "2", "1"], "newest first");
    assert_eq!(ask(AuditQuery { user: Some("alice".into()), ..all.clone() }).await, ["5", "4", "1"], "not malice");
    assert_eq!(ask(AuditQuery { user: Some("U123".into()), ..all.clone() }).await, ["6", "2"], "by Slack id");
    assert_eq!(ask(AuditQuery { user: Some("john.doe".into()), ..all.clone() }).await, ["2"], "by Slack name");
    assert_eq!(ask(AuditQuery { user: Some("doe".into()), ..all.clone() }).await, Vec::<String>::new(), "no part of a name");
    assert_eq!(ask(AuditQuery { action: Some(Action::DriftRepaired), ..all.clone() }).await, ["4"]);
    let prod_alice =
        AuditQuery { environment: Some(env("prod")), user: Some("alice".into()), action: Some(Action::Refused), ..all.clone() };
    assert_eq!(ask(prod_alice).await, ["5"], "every filter at once");

    // Pages of two, each starting below the last id of the one before, cover the log once.
    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = p.a.query_audit(&AuditQuery { before, limit: 2, ..AuditQuery::default() }).await.unwrap();
        let Some(last) = page.last() else { break };
        before = Some(last.id);
        pages.push(reasons(page));
    }
    assert_eq!(pages, [vec!["6", "5"], vec!["4", "3"], vec!["2", "1"]]);
    let dev_refusals =
        AuditQuery { environment: Some(env("dev")), action: Some(Action::Refused), limit: 2, ..AuditQuery::default() };
    let first = p.a.query_audit(&dev_refusals).await.unwrap();
    assert_eq!(reasons(first.clone()), ["6", "3"]);
    let next = AuditQuery { before: first.last().map(|e| e.id), ..dev_refusals };
    assert_eq!(ask(next).await, ["2", "1"], "a filtered page goes on where the last one ended");
}

/// Tokens by hash, listed, revoked once, each audited without the hash.
pub async fn tokens(p: Pair) {
    let token = ApiToken {
        id: "abc123".into(),
        hash: "f".repeat(64),
        user: "ci".into(),
        role: Role::Admin,
        environments: [env("dev")].into(),
        created_at: T0,
        expires_at: Some(T0 + Duration::days(1)),
        revoked_at: None,
        created_by: "root".into(),
    };
    let root = actor("root");
    p.a.create_token(token.clone(), &root).await.unwrap();
    assert_eq!(p.b.token_by_hash(&"f".repeat(64)).await.unwrap(), Some(token.clone()));
    assert_eq!(p.b.token_by_hash("nope").await.unwrap(), None);
    assert!(p.b.create_token(token.clone(), &root).await.is_err(), "ids and hashes are unique");
    let revoked = p.b.revoke_token("abc123", &root, T0 + Duration::hours(1)).await.unwrap().unwrap();
    assert_eq!(revoked.revoked_at, Some(T0 + Duration::hours(1)));
    let again = p.a.revoke_token("abc123", &root, T0 + Duration::hours(2)).await.unwrap().unwrap();
    assert_eq!(again.revoked_at, Some(T0 + Duration::hours(1)), "revoking twice changes nothing");
    assert_eq!(p.a.revoke_token("missing", &root, T0).await.unwrap(), None);
    assert_eq!(p.a.tokens().await.unwrap(), vec![revoked]);
    let audit = p.a.audit(None, 10).await.unwrap();
    let actions: Vec<Action> = audit.iter().map(|e| e.action).collect();
    assert_eq!(actions, [Action::TokenRevoked, Action::TokenCreated]);
    assert!(audit.iter().all(|e| !e.reason.contains(&"f".repeat(64))), "the audit never holds the hash");
}

/// Announced changes enter the outbox with their audit record, leased to the writer for
/// [`NOTICE_LEASE`]; a retry is anyone's once due; a crashed claimant's notice is taken over.
pub async fn outbox(p: Pair) {
    assert_ne!(p.a.instance(), p.b.instance());
    let g = grant("198.51.100.7", "dev", "alice", T0, Duration::days(1));
    p.a.upsert(upsert(g.clone(), "alice")).await.unwrap();
    p.a.upsert(upsert(g.clone(), "alice")).await.unwrap(); // a refresh is audited, not announced
    p.a.remove(&g.key(), &actor("bob"), T0).await.unwrap();
    assert_eq!(p.a.outbox_status().await.unwrap().pending, 2);

    assert_eq!(p.b.claim_notice(T0).await.unwrap(), None, "the writer's own, until its lease lapses");
    let first = p.a.claim_notice(T0).await.unwrap().unwrap();
    assert_eq!((first.event.action, first.attempts), (Action::Added, 0));
    p.a.settle_notice(first.event.id, Settlement::Delivered, T0).await.unwrap();
    let second = p.a.claim_notice(T0).await.unwrap().unwrap();
    assert_eq!(second.event.action, Action::Removed);
    let retry_at = T0 + Duration::seconds(2);
    p.a.settle_notice(second.event.id, Settlement::Retry { at: retry_at, error: "503".into() }, T0).await.unwrap();
    assert_eq!(p.a.claim_notice(T0 + Duration::seconds(1)).await.unwrap(), None, "not due before its retry time");
    assert_eq!(p.b.outbox_status().await.unwrap().next_due, Some(retry_at));

    let again = p.b.claim_notice(retry_at).await.unwrap().unwrap();
    assert_eq!((again.event.id, again.attempts), (second.event.id, 1));
    assert_eq!(p.a.claim_notice(retry_at).await.unwrap(), None, "claimed by b");
    let crashed = p.a.claim_notice(retry_at + NOTICE_LEASE).await.unwrap().unwrap();
    assert_eq!(crashed.event.id, second.event.id, "a crashed claimant's notice is delivered by another");
    p.a.settle_notice(crashed.event.id, Settlement::Delivered, retry_at + NOTICE_LEASE).await.unwrap();
    assert_eq!(p.b.outbox_status().await.unwrap().pending, 0);
}

/// Two writers add the same key at once, round after round: exactly one adds it, the other
/// refreshes it, and both writes are audited.
pub async fn racing_writers_on_one_key(p: Pair) {
    for round in 0..10 {
        let cidr = format!("198.51.100.{}", round + 1);
        let (alice, bob) = (format!("alice{round}"), format!("bob{round}"));
        let (a, b) = race(
            &p,
            round,
            p.a.upsert(upsert(grant(&cidr, "dev", &alice, T0, Duration::hours(1)), &alice)),
            p.b.upsert(upsert(grant(&cidr, "dev", &bob, T0, Duration::hours(2)), &bob)),
        )
        .await;
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(a.previous.is_none() ^ b.previous.is_none(), "round {round}: exactly one adds it");
        let stored = p.a.grant(&key(&cidr, "dev")).await.unwrap().unwrap();
        let winner = if a.previous.is_none() { &alice } else { &bob };
        assert_eq!(&stored.owner.name, winner, "round {round}: the adder owns it");
        assert_eq!(stored.expires_at, Some(T0 + Duration::hours(2)), "round {round}: the later expiry wins");
        assert_eq!(actions_for(p.b.as_ref(), &format!("{cidr}/32")).await, [Action::Added, Action::Refreshed], "round {round}");
    }
    assert_eq!(p.a.grants(None).await.unwrap().len(), 10, "nothing lost");
}

/// Two writers add different addresses for one owner at once, with one place left under the
/// limit: exactly one gets it, the other is refused, and the limit holds.
pub async fn racing_writers_on_one_users_limit(p: Pair) {
    for round in 0..6u8 {
        let owner = format!("user{round}");
        for i in 1..LIMIT as u8 {
            let cidr = format!("203.0.{round}.{i}");
            p.a.upsert(upsert(grant(&cidr, "dev", &owner, T0, Duration::hours(1)), &owner)).await.unwrap();
        }
        let (x, y) = (format!("203.0.{round}.100"), format!("203.0.{round}.101"));
        let (a, b) = race(
            &p,
            round,
            p.a.upsert(upsert(grant(&x, "dev", &owner, T0, Duration::hours(1)), &owner)),
            p.b.upsert(upsert(grant(&y, "dev", &owner, T0, Duration::hours(1)), &owner)),
        )
        .await;
        let refused = |r: &Result<_, StoreError>| matches!(r, Err(StoreError::Refused(PolicyRefusal::TooManyGrants { .. })));
        assert!(
            (a.is_ok() && refused(&b)) || (refused(&a) && b.is_ok()),
            "round {round}: exactly one wins: {:?} / {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        );
        let held = p.b.grants(Some(&env("dev"))).await.unwrap().into_iter().filter(|g| g.owner.name == owner).count();
        assert_eq!(held, LIMIT, "round {round}: the limit holds and the winner's grant is stored");
    }
}

/// Two writers remove one grant at once: exactly one removes it, and it is audited once.
pub async fn racing_removes(p: Pair) {
    for round in 0..5 {
        let cidr = format!("192.0.2.{}", round + 1);
        p.a.upsert(upsert(grant(&cidr, "dev", "alice", T0, Duration::hours(1)), "alice")).await.unwrap();
        let k = key(&cidr, "dev");
        let (by_a, by_b) = (actor("a"), actor("b"));
        let (a, b) = race(&p, round, p.a.remove(&k, &by_a, T0), p.b.remove(&k, &by_b, T0)).await;
        assert!(a.unwrap().is_some() ^ b.unwrap().is_some(), "round {round}: exactly one removes it");
        assert_eq!(actions_for(p.a.as_ref(), &format!("{cidr}/32")).await, [Action::Added, Action::Removed], "round {round}");
    }
}

fn change_request(id: &str, event_id: &str) -> ChangeRequest {
    let group = GuardedGroup {
        id: TargetId { region: "us-east-1".into(), group_id: "sg-0123".into() },
        account: "123456789012".into(),
        rules: vec![],
    };
    let mut r = ChangeRequest::pending(id, event_id, "arn:aws:iam::123456789012:user/alice", &group, T0, Duration::hours(24));
    r.add = vec![GuardRule::new("tcp", Some(22), Some(22), RuleSource::Ipv4("203.0.113.0/24".into()), None)];
    r
}

/// A request is filed once per event, and a decision is written only over the version it
/// read: of two handles deciding from one read, exactly one wins.
pub async fn change_requests(p: Pair) {
    let r = change_request("r1", "e1");
    let filed = crate::request_event(T0, &actor("guard"), Action::ChangeRequested, &r, "");
    assert!(p.a.file_request(&r, vec![filed.clone()]).await.unwrap());
    assert!(!p.b.file_request(&change_request("r2", "e1"), vec![filed]).await.unwrap(), "the same event files nothing new");
    assert_eq!(p.b.request("r2").await.unwrap(), None);
    assert_eq!(p.b.request("r1").await.unwrap(), Some(r.clone()));
    let later = ChangeRequest { created_at: T0 + Duration::minutes(1), ..change_request("r0", "e0") };
    assert!(p.b.file_request(&later, vec![]).await.unwrap());

    let mut approved = r.clone();
    approved.status = RequestStatus::Approved;
    approved.approvals = vec!["UBOB".into()];
    approved.version = 1;
    let mut denied = r.clone();
    denied.status = RequestStatus::Denied;
    denied.denied_by = Some("UCAROL".into());
    denied.version = 1;
    let event = |action, request: &ChangeRequest| vec![crate::request_event(T0, &actor("x"), action, request, "")];
    let (a, b) = race(
        &p,
        "decisions",
        p.a.update_request(&approved, event(Action::ChangeApproved, &approved)),
        p.b.update_request(&denied, event(Action::ChangeDenied, &denied)),
    )
    .await;
    assert!(a.as_ref().unwrap() ^ b.as_ref().unwrap(), "exactly one decision lands: {a:?} {b:?}");
    let stored = p.a.request("r1").await.unwrap().unwrap();
    assert_eq!(stored, if *a.as_ref().unwrap() { approved } else { denied });
    let decided: Vec<Action> = p.a.audit(None, 10).await.unwrap().iter().map(|e| e.action).collect();
    assert_eq!(decided.iter().filter(|a| matches!(a, Action::ChangeApproved | Action::ChangeDenied)).count(), 1, "{decided:?}");

    let all: Vec<String> = p.b.requests(None).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(all, ["r1", "r0"], "oldest first");
    let pending: Vec<String> = p.b.requests(Some(RequestStatus::Pending)).await.unwrap().into_iter().map(|r| r.id).collect();
    assert_eq!(pending, ["r0"]);
}

/// A guarded group's baseline: absent until recorded, then replaced whole.
pub async fn baselines(p: Pair) {
    let group = TargetId { region: "us-east-1".into(), group_id: "sg-0123".into() };
    assert_eq!(p.a.baseline(&group).await.unwrap(), None);
    let rule = |port| GroupRule {
        rule_id: Some(format!("sgr-{port}")),
        rule: GuardRule::new("tcp", Some(port), Some(port), RuleSource::Group("sg-9".into()), Some("app")),
    };
    p.a.set_baseline(&group, &[rule(22), rule(443)], vec![]).await.unwrap();
    assert_eq!(p.b.baseline(&group).await.unwrap(), Some(vec![rule(22), rule(443)]));
    p.b.set_baseline(&group, &[], vec![]).await.unwrap();
    assert_eq!(p.a.baseline(&group).await.unwrap(), Some(vec![]), "an empty baseline is a baseline");
    let other = TargetId { region: "eu-west-1".into(), group_id: "sg-0123".into() };
    assert_eq!(p.a.baseline(&other).await.unwrap(), None);
}

/// Guard's ledger: a noted change counts, in every process, until its time; others never do.
pub async fn own_change_ledger(p: Pair) {
    let keys = ["us-east-1/sg-1 -id sgr-1".to_string(), "us-east-1/sg-1 +rule tcp 22 from 203.0.113.0/24".to_string()];
    let asked = [keys[0].clone(), keys[1].clone(), "us-east-1/sg-1 -id sgr-2".to_string()];
    assert!(p.b.noted_own_changes(&asked, T0).await.unwrap().is_empty());
    p.a.note_own_changes(&keys, T0 + Duration::minutes(20)).await.unwrap();
    let noted = p.b.noted_own_changes(&asked, T0 + Duration::minutes(19)).await.unwrap();
    assert_eq!(noted, keys.iter().cloned().collect::<BTreeSet<_>>(), "the other process sees the notes");
    assert!(p.b.noted_own_changes(&asked, T0 + Duration::minutes(20)).await.unwrap().is_empty(), "lapsed");
    // Noting again extends; an earlier time never shortens a note.
    p.b.note_own_changes(&keys[..1], T0 + Duration::minutes(40)).await.unwrap();
    p.a.note_own_changes(&keys[..1], T0 + Duration::minutes(30)).await.unwrap();
    assert_eq!(p.a.noted_own_changes(&asked, T0 + Duration::minutes(35)).await.unwrap().len(), 1);
}

/// One `#[tokio::test]` per contract case, each on the pair `$pair().await` makes (a fresh
/// store for each case).
#[macro_export]
macro_rules! store_contract {
    ($pair:path) => {
        $crate::store_contract!(@cases $pair;
            upsert_refresh_remove, per_user_limit_and_expiry, leases, racing_for_one_lease,
            record_once_and_claims, audit_queries, tokens, outbox, racing_writers_on_one_key,
            racing_writers_on_one_users_limit, racing_removes, change_requests, baselines, own_change_ledger);
    };
    (@cases $pair:path; $($case:ident),*) => {
        $(
            #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                $crate::contract::$case($pair().await).await
            }
        )*
    };
}
