//! Guard in process, over the in-memory EC2 (both seams: the grants' reconcile and guard act on
//! the same groups) on virtual time: events and sweeps, what is ours, guard's own calls fed back
//! to it, decisions and their truth, and who may see a request.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use portcullis_core::guard::{
    Approvers, GroupRule, GroupSelection, GuardRule, GuardScope, RequestStatus, RuleSource, UNKNOWN_REQUESTER, Verdict,
};
use portcullis_core::{Action, Credential, Environment, Interface, Owner, Policy, PrincipalPattern, Route, TargetId};
use portcullis_engine::{
    Apply, Cause, DecisionOutcome, Engine, ErrorClass, FailureKind, FaultyGuard, GuardCall, GuardEvent, GuardFault, GuardOutcome,
    GuardSettings, HandChange, Requester, Scope, Subject,
};
use time::Duration;

use crate::{Rig, add, rig};

pub(crate) const EAST: &str = "us-east-1";
pub(crate) const GROUP: &str = "sg-us-east-1";
/// The identity guard's own calls appear under in the trail: not one STS names, nor one
/// `own_principals` lists unless a case says so, so only the ledger knows them.
const PORTCULLIS_ROLE: &str = "arn:aws:sts::123456789012:assumed-role/portcullis-lambda/portcullis-dev";
pub(crate) const ALICE: &str = "arn:aws:iam::123456789012:user/alice";
const MALLORY: &str = "arn:aws:iam::123456789012:user/mallory";

pub(crate) fn tcp(port: i32, cidr: &str, description: Option<&str>) -> GuardRule {
    GuardRule::new("tcp", Some(port), Some(port), RuleSource::Ipv4(cidr.into()), description)
}

pub(crate) fn settings(own_principals: &[&str], break_glass: Option<Duration>) -> GuardSettings {
    let alice = PrincipalPattern::parse(ALICE).unwrap();
    GuardSettings {
        scopes: vec![GuardScope {
            route: Route::region(EAST),
            selection: GroupSelection::Ids([GROUP.to_string(), "sg-other".to_string()].into()),
        }],
        own_principals: own_principals.iter().map(|p| PrincipalPattern::parse(p).unwrap()).collect(),
        approvers: Approvers {
            users: ["ubob", "ucarol", "ualice"].map(String::from).into(),
            groups: BTreeSet::new(),
            min_approvals: 1,
            people: BTreeMap::from([("ualice".to_string(), vec![alice])]),
            max_term: Duration::hours(24),
            break_glass,
        },
        request_ttl: Duration::hours(24),
        max_event_age: Duration::minutes(15),
        temporary_approval: Duration::hours(24),
    }
}

/// The rig's engine with guard on `sg-us-east-1` (a `dev` target, tcp 7233) and `sg-other`
/// (no environment's), and a baseline rule on each.
pub(crate) fn guarded(r: &Rig, own_principals: &[&str], break_glass: Option<Duration>) -> Arc<Engine> {
    r.firewall.put_group(EAST, "sg-other", &[]);
    let builder = Engine::builder(r.store.clone(), r.firewall.clone(), r.clock.clone(), r.settings.clone());
    Arc::new(builder.guard(settings(own_principals, break_glass), r.firewall.clone()).build())
}

pub(crate) fn hand(r: &Rig, group: &str, change: HandChange, by: &str) -> GuardEvent {
    r.firewall.by_hand(EAST, group, change, by)
}

pub(crate) fn person(id: &str) -> Requester {
    Requester::named(id, Interface::Cli)
}

pub(crate) async fn baseline(r: &Rig, engine: &Engine) {
    r.firewall.by_hand(EAST, GROUP, HandChange::Authorize(tcp(5432, "10.20.0.0/16", Some("db"))), ALICE);
    r.firewall.by_hand(EAST, "sg-other", HandChange::Authorize(tcp(22, "10.0.0.0/8", Some("ops"))), ALICE);
    let report = engine.guard().unwrap().record_baseline(false, &person("ops")).await.unwrap();
    assert_eq!(report.groups.len(), 2, "{report:?}");
}

fn id_of(r: &Rig, group: &str, port: i32) -> String {
    let rules = r.firewall.guard_rules(EAST, group);
    rules.iter().find(|g| g.rule.from_port == Some(port)).and_then(|g| g.rule_id.clone()).expect("the rule is there")
}

fn without_ids(rules: Vec<GroupRule>) -> Vec<GuardRule> {
    let mut out: Vec<GuardRule> = rules.into_iter().map(|r| r.rule).collect();
    out.sort();
    out
}

async fn requests(engine: &Engine) -> Vec<portcullis_core::guard::ChangeRequest> {
    engine.guard().unwrap().requests(None, &person("ops")).await.unwrap()
}

#[tokio::test]
async fn a_marker_nothing_backs_is_reverted_by_event_and_sweep_and_a_backed_rule_is_left_alone() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    engine.grants().add(add("203.0.113.7", "1h")).await.unwrap();
    baseline(&r, &engine).await;
    let ours = r.firewall.guard_rules(EAST, GROUP).into_iter().find(|g| g.rule.from_port == Some(7233)).unwrap();
    assert!(ours.rule.description.as_deref().unwrap().starts_with("pc:dev"), "{ours:?}");

    let spoofs = [
        "pc:dev evil: looks like ours",
        "pc:zzz",
        "pc:prod",
        "pc:grant/r-0000000000000000 x: y",
        "pc:timed/r-0000000000000000 x: y",
        " pc:dev leading space",
    ];
    for (i, description) in spoofs.into_iter().enumerate() {
        let rule = tcp(2222 + i as i32, "0.0.0.0/0", Some(description));
        let event = hand(&r, GROUP, HandChange::Authorize(rule.clone()), MALLORY);
        let outcome = engine.guard().unwrap().event(event).await.unwrap();
        let GuardOutcome::Reverted { request, failures } = outcome else { panic!("{description:?}: {outcome:?}") };
        assert!(failures.is_empty(), "{failures:?}");
        assert!(!r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.same_access(&rule)), "{description:?} stays open");
        if description.trim().starts_with("pc:") {
            assert!(request.notes.iter().any(|n| n.contains("claims to be")), "{:?}", request.notes);
        }
    }
    // A baseline rule edited to the whole internet behind our marker is put back as it was.
    let db = id_of(&r, GROUP, 5432);
    let edit = hand(&r, GROUP, HandChange::Modify(db.clone(), tcp(5432, "0.0.0.0/0", Some("pc:dev ops: db"))), MALLORY);
    assert!(matches!(engine.guard().unwrap().event(edit).await.unwrap(), GuardOutcome::Reverted { .. }));
    let db_now = r.firewall.guard_rules(EAST, GROUP).into_iter().find(|g| g.rule_id.as_deref() == Some(&db)).unwrap();
    assert_eq!(db_now.rule, tcp(5432, "10.20.0.0/16", Some("db")));

    // What no event reports, the sweep finds; the backed rule of ours stays through it all.
    hand(&r, GROUP, HandChange::Authorize(tcp(2299, "0.0.0.0/0", Some("pc:dev quiet"))), MALLORY);
    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert_eq!(sweep.reverted.len(), 1, "{sweep:?}");
    assert!(!r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.from_port == Some(2299)));
    assert!(r.firewall.guard_rules(EAST, GROUP).contains(&ours), "the grant's own rule is the reconcile's");
    assert!(engine.guard().unwrap().sweep().await.unwrap().reverted.is_empty(), "settled");

    // The other side: a rule of ours whose grant is gone is still closed by the reconcile.
    r.firewall.by_hand(EAST, GROUP, HandChange::Authorize(tcp(7233, "198.51.100.9/32", Some("pc:dev gone: x"))), MALLORY);
    let report = engine.grants().reconcile(Scope::All, Cause::Periodic).await.unwrap();
    assert_eq!(report.revoked, 1, "{report:?}");
    assert!(!r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.source == RuleSource::Ipv4("198.51.100.9/32".into())));
}

/// One out-of-band change of each kind, then every event guard's own calls (and the
/// reconcile's) cause handed back to it for 8 rounds: the group settles at the baseline after
/// the first, with exactly one request, whatever `own_principals` says.
#[tokio::test]
async fn guard_s_own_calls_fed_back_to_it_settle_after_one_round() {
    for own in [
        &[][..],
        &["arn:aws:sts::123456789012:assumed-role/someone-else/*"],
        &["arn:aws:sts::123456789012:assumed-role/portcullis-lambda/*"],
    ] {
        for kind in ["add", "remove", "remove-by-id", "edit"] {
            let r = rig(&[EAST]);
            let engine = guarded(&r, own, None);
            engine.grants().add(add("203.0.113.7", "1h")).await.unwrap();
            r.firewall.by_hand(EAST, GROUP, HandChange::Authorize(tcp(443, "198.51.100.0/24", Some("office"))), ALICE);
            baseline(&r, &engine).await;
            r.firewall.take_trail(PORTCULLIS_ROLE);
            let settled = without_ids(r.firewall.guard_rules(EAST, GROUP));
            let office = tcp(443, "198.51.100.0/24", Some("office"));
            let change = match kind {
                "add" => HandChange::Authorize(tcp(3389, "0.0.0.0/0", None)),
                "remove" => HandChange::Revoke(office.access()),
                "remove-by-id" => HandChange::RevokeById(id_of(&r, GROUP, 443)),
                _ => HandChange::Modify(id_of(&r, GROUP, 443), tcp(443, "0.0.0.0/0", Some("open to all"))),
            };
            let first = engine.guard().unwrap().event(hand(&r, GROUP, change, MALLORY)).await.unwrap();
            assert!(matches!(first, GuardOutcome::Reverted { .. }), "{own:?} {kind}: {first:?}");
            for round in 1..=8 {
                // The reconcile runs too, and its calls come back as well.
                engine.grants().reconcile(Scope::All, Cause::Periodic).await.unwrap();
                for event in r.firewall.take_trail(PORTCULLIS_ROLE) {
                    let outcome = engine.guard().unwrap().event(event).await.unwrap();
                    assert!(matches!(outcome, GuardOutcome::Ignored { .. }), "{own:?} {kind} round {round}: {outcome:?}");
                }
                assert_eq!(without_ids(r.firewall.guard_rules(EAST, GROUP)), settled, "{own:?} {kind} round {round}");
            }
            assert!(engine.guard().unwrap().sweep().await.unwrap().reverted.is_empty(), "{own:?} {kind}: the sweep agrees");
            assert_eq!(requests(&engine).await.len(), 1, "{own:?} {kind}: exactly one request");
        }
    }
}

#[tokio::test]
async fn a_call_made_as_the_identity_sts_names_is_portcullis_s_own() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let learned = engine.guard().unwrap().own_identities().await;
    assert_eq!(learned[0].pattern, "arn:aws:sts::123456789012:assumed-role/portcullis/*", "{learned:?}");
    let by_us = hand(
        &r,
        GROUP,
        HandChange::Authorize(tcp(8443, "198.51.100.0/24", None)),
        "arn:aws:sts::123456789012:assumed-role/portcullis/other-session",
    );
    let outcome = engine.guard().unwrap().event(by_us).await.unwrap();
    assert!(matches!(&outcome, GuardOutcome::Ignored { reason } if reason.contains("sts:GetCallerIdentity")), "{outcome:?}");
}

#[tokio::test]
async fn without_a_baseline_guard_closes_but_never_opens() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    r.firewall.by_hand(EAST, GROUP, HandChange::Authorize(tcp(3389, "0.0.0.0/0", None)), ALICE);
    let removal = hand(&r, GROUP, HandChange::Revoke(tcp(3389, "0.0.0.0/0", None)), ALICE);
    let GuardOutcome::Reverted { request, .. } = engine.guard().unwrap().event(removal).await.unwrap() else { panic!("filed") };
    assert!(r.firewall.guard_rules(EAST, GROUP).is_empty(), "RDP stays closed");
    assert!(request.notes[0].contains("no baseline"), "{:?}", request.notes);
    let addition = hand(&r, GROUP, HandChange::Authorize(tcp(22, "0.0.0.0/0", None)), ALICE);
    engine.guard().unwrap().event(addition).await.unwrap();
    assert!(r.firewall.guard_rules(EAST, GROUP).is_empty(), "an addition is still revoked");
    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert_eq!(sweep.without_baseline.len(), 2);
}

#[tokio::test]
async fn the_baseline_follows_a_restore_so_a_later_edit_is_put_back_not_revoked() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let old = id_of(&r, GROUP, 5432);
    let removal = hand(&r, GROUP, HandChange::RevokeById(old.clone()), MALLORY);
    engine.guard().unwrap().event(removal).await.unwrap();
    let new = id_of(&r, GROUP, 5432);
    assert_ne!(old, new, "a restore is a new rule");
    let group = TargetId { region: EAST.into(), group_id: GROUP.into() };
    let base = engine.guard().unwrap().requests(None, &person("ops")).await.unwrap();
    assert_eq!(base.len(), 1);
    let edit = hand(&r, GROUP, HandChange::Modify(new.clone(), tcp(5432, "0.0.0.0/0", None)), MALLORY);
    let GuardOutcome::Reverted { request, .. } = engine.guard().unwrap().event(edit).await.unwrap() else { panic!("filed") };
    assert!(request.notes.is_empty(), "known from the baseline: {:?}", request.notes);
    assert_eq!(id_of(&r, GROUP, 5432), new);
    assert_eq!(without_ids(r.firewall.guard_rules(EAST, &group.group_id)), vec![tcp(5432, "10.20.0.0/16", Some("db"))]);
}

#[tokio::test]
async fn an_edit_that_changes_nothing_files_nothing() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let id = id_of(&r, GROUP, 5432);
    let calls = r.firewall.calls().len();
    let same = hand(&r, GROUP, HandChange::Modify(id, tcp(5432, "10.20.0.0/16", Some("db"))), MALLORY);
    assert!(matches!(engine.guard().unwrap().event(same).await.unwrap(), GuardOutcome::Ignored { .. }));
    assert!(requests(&engine).await.is_empty());
    assert_eq!(r.firewall.take_trail(PORTCULLIS_ROLE).len(), 0, "no revert call");
    assert_eq!(r.firewall.calls().len(), calls);
}

#[tokio::test]
async fn a_change_the_sweep_filed_is_one_request_when_its_event_comes_late() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let late = hand(&r, GROUP, HandChange::Authorize(tcp(3389, "0.0.0.0/0", None)), MALLORY);
    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert_eq!(sweep.reverted.len(), 1);
    assert_eq!(sweep.reverted[0].requester, UNKNOWN_REQUESTER);
    let outcome = engine.guard().unwrap().event(late.clone()).await.unwrap();
    let GuardOutcome::Reported { request } = outcome else { panic!("{outcome:?}") };
    assert_eq!(request.reported_by, std::slice::from_ref(&late.event_id));
    assert_eq!(requests(&engine).await.len(), 1);
    assert!(matches!(engine.guard().unwrap().event(late).await.unwrap(), GuardOutcome::Duplicate { .. }), "a redelivery");
    assert_eq!(requests(&engine).await.len(), 1);
}

#[tokio::test]
async fn a_decision_says_applied_only_once_it_is_and_a_failed_apply_is_retried_by_the_sweep() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let event = hand(&r, GROUP, HandChange::Authorize(tcp(22, "203.0.113.0/24", Some("vendor"))), ALICE);
    let GuardOutcome::Reverted { request, .. } = engine.guard().unwrap().event(event).await.unwrap() else { panic!("filed") };

    // Decided now, applied later (as under Lambda): approved, nothing on the group yet.
    let DecisionOutcome::Decided { request: decided, .. } =
        engine.guard().unwrap().decide(&request.id, Verdict::Approve, &person("ubob"), Apply::Later).await.unwrap()
    else {
        panic!("decided")
    };
    assert_eq!(decided.status, RequestStatus::Approved);
    assert!(!r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.from_port == Some(22)));

    // The apply fails: the request says so, and why.
    r.firewall.set_region_failing(EAST, true);
    let (failed, failures) = engine.guard().unwrap().apply_by_id(&request.id).await.unwrap();
    assert_eq!((failed.status, failures.is_empty()), (RequestStatus::Failed, false));
    assert!(failed.failure.as_deref().unwrap().contains("unreachable"), "{failed:?}");
    r.firewall.set_region_failing(EAST, false);
    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert_eq!(sweep.applied, std::slice::from_ref(&request.id), "{sweep:?}");
    let applied = requests(&engine).await.into_iter().find(|x| x.id == request.id).unwrap();
    assert_eq!((applied.status, applied.failure.as_deref()), (RequestStatus::Applied, None));
    assert!(r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule == tcp(22, "203.0.113.0/24", Some("vendor"))));
    let actions: Vec<Action> = r.store.audit(None, 50).await.unwrap().into_iter().map(|e| e.action).collect();
    assert!(actions.contains(&Action::ChangeFailed) && actions.contains(&Action::ChangeApplied), "{actions:?}");
    // The sweep does not take the approved rule for drift.
    assert!(engine.guard().unwrap().sweep().await.unwrap().reverted.is_empty());
}

#[tokio::test]
async fn a_credential_for_some_environments_sees_and_decides_only_their_groups_requests() {
    let mut r = rig(&[EAST]);
    let prod = Environment::parse("prod").unwrap();
    r.settings.policies.insert(prod.clone(), Policy::default());
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let on_dev = hand(&r, GROUP, HandChange::Authorize(tcp(22, "203.0.113.0/24", None)), ALICE);
    let on_none = hand(&r, "sg-other", HandChange::Authorize(tcp(23, "203.0.113.0/24", None)), ALICE);
    engine.guard().unwrap().event(on_dev).await.unwrap();
    engine.guard().unwrap().event(on_none).await.unwrap();
    let token = |envs: &[&Environment]| Requester {
        owner: Owner::named("ubob"),
        groups: vec![],
        interface: Interface::Http,
        credential: Credential::Token { id: "t1".into(), environments: envs.iter().map(|e| (*e).clone()).collect() },
    };
    let dev = crate::dev();
    let groups = |list: Vec<portcullis_core::guard::ChangeRequest>| list.into_iter().map(|x| x.group_id).collect::<Vec<_>>();
    assert_eq!(groups(engine.guard().unwrap().requests(None, &token(&[&dev])).await.unwrap()), [GROUP]);
    assert!(engine.guard().unwrap().requests(None, &token(&[&prod])).await.unwrap().is_empty());
    assert_eq!(
        engine.guard().unwrap().requests(None, &token(&[&dev, &prod])).await.unwrap().len(),
        2,
        "every environment: every request"
    );
    let other = requests(&engine).await.into_iter().find(|x| x.group_id == "sg-other").unwrap();
    let refused = engine.guard().unwrap().decide(&other.id, Verdict::Approve, &token(&[&dev]), Apply::Now).await;
    assert!(matches!(refused, Err(portcullis_engine::GuardError::NoSuchRequest(_))), "{refused:?}");
    assert_eq!(requests(&engine).await.into_iter().find(|x| x.id == other.id).unwrap().status, RequestStatus::Pending);
}

#[tokio::test]
async fn break_glass_applies_the_requester_s_own_addition_for_a_time_and_tells_everyone() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], Some(Duration::hours(4)));
    baseline(&r, &engine).await;
    let event = hand(&r, GROUP, HandChange::Authorize(tcp(22, "203.0.113.0/24", None)), ALICE);
    let GuardOutcome::Reverted { request, .. } = engine.guard().unwrap().event(event).await.unwrap() else { panic!("filed") };
    let glass = |hours| Verdict::BreakGlass { reason: "prod is down".into(), term: Duration::hours(hours) };
    let too_long = engine.guard().unwrap().decide(&request.id, glass(5), &person("ualice"), Apply::Now).await.unwrap();
    assert!(matches!(too_long, DecisionOutcome::Refused(_)), "{too_long:?}");
    let not_theirs = engine.guard().unwrap().decide(&request.id, glass(1), &person("ubob"), Apply::Now).await.unwrap();
    assert!(matches!(not_theirs, DecisionOutcome::Refused(_)), "{not_theirs:?}");
    let long_reason = Verdict::BreakGlass { reason: "x".repeat(201), term: Duration::hours(1) };
    assert!(
        engine.guard().unwrap().decide(&request.id, long_reason, &person("ualice"), Apply::Now).await.is_err(),
        "reasons are bounded"
    );
    let DecisionOutcome::Decided { request: broken, failures } =
        engine.guard().unwrap().decide(&request.id, glass(1), &person("ualice"), Apply::Now).await.unwrap()
    else {
        panic!("break-glass")
    };
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(broken.status, RequestStatus::Applied);
    let on = r.firewall.guard_rules(EAST, GROUP).into_iter().find(|g| g.rule.from_port == Some(22)).unwrap();
    assert!(on.rule.description.as_deref().unwrap().starts_with(&format!("pc:timed/{}", request.id)), "{on:?}");
    let audit = r.store.audit(None, 50).await.unwrap();
    let glass_event = audit.iter().find(|e| e.action == Action::BreakGlass).expect("audited break-glass");
    assert!(glass_event.reason.contains("prod is down"), "{}", glass_event.reason);
    // Its events are ours (the ledger, and the store backs the rule); the sweep leaves it.
    for event in r.firewall.take_trail(PORTCULLIS_ROLE) {
        assert!(matches!(engine.guard().unwrap().event(event).await.unwrap(), GuardOutcome::Ignored { .. }));
    }
    assert!(engine.guard().unwrap().sweep().await.unwrap().reverted.is_empty());
    // An hour later it is gone.
    r.clock.advance(Duration::hours(1));
    engine.sweep().await.unwrap();
    assert!(!r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.from_port == Some(22)));
}

/// The rig's engine with guard through a [`FaultyGuard`] over the in-memory EC2.
fn guarded_through(r: &Rig, faulty: &Arc<FaultyGuard>) -> Arc<Engine> {
    r.firewall.put_group(EAST, "sg-other", &[]);
    let builder = Engine::builder(r.store.clone(), r.firewall.clone(), r.clock.clone(), r.settings.clone());
    Arc::new(builder.guard(settings(&[], None), faulty.clone()).build())
}

#[tokio::test]
async fn a_crash_between_filing_and_reverting_leaves_a_request_whose_revert_the_sweep_carries_out() {
    let r = rig(&[EAST]);
    let faulty = Arc::new(FaultyGuard::new(r.firewall.clone()));
    let engine = guarded_through(&r, &faulty);
    baseline(&r, &engine).await;
    let rdp = tcp(3389, "0.0.0.0/0", None);
    let event = hand(&r, GROUP, HandChange::Authorize(rdp.clone()), MALLORY);

    // The revoke never answers, and the process dies there: the event's handling is dropped.
    faulty.inject(GuardCall::Revoke, GuardFault::Hang, Some(1));
    let guard = engine.guard().unwrap();
    tokio::select! {
        outcome = guard.event(event.clone()) => panic!("the revoke hangs, so the event cannot finish: {outcome:?}"),
        () = faulty.hung() => {}
    }
    let filed = requests(&engine).await;
    assert_eq!(filed.len(), 1, "the request was stored before the firewall was touched");
    assert_eq!(filed[0].status, RequestStatus::Pending);
    assert!(r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.same_access(&rdp)), "not reverted yet");
    let actions: Vec<Action> = r.store.audit(None, 50).await.unwrap().into_iter().map(|e| e.action).collect();
    assert!(actions.contains(&Action::ChangeRequested) && !actions.contains(&Action::ChangeReverted), "{actions:?}");

    // A new process on the same store: its sweep finds the change, sees it filed, and reverts it.
    let builder = Engine::builder(r.store.clone(), r.firewall.clone(), r.clock.clone(), r.settings.clone());
    let restarted = Arc::new(builder.guard(settings(&[], None), r.firewall.clone()).build());
    let sweep = restarted.guard().unwrap().sweep().await.unwrap();
    assert!(sweep.reverted.is_empty() && sweep.failures.is_empty(), "no second request: {sweep:?}");
    assert!(!r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.same_access(&rdp)), "reverted by the sweep");
    assert_eq!(requests(&restarted).await.len(), 1);
    // The event, redelivered after the restart, is the request it filed.
    let again = restarted.guard().unwrap().event(event).await.unwrap();
    assert!(matches!(again, GuardOutcome::Duplicate { .. }), "{again:?}");
    assert_eq!(requests(&restarted).await.len(), 1);
}

#[tokio::test]
async fn a_revert_the_firewall_refuses_is_filed_with_a_typed_failure_and_the_sweep_retries_it() {
    let r = rig(&[EAST]);
    let faulty = Arc::new(FaultyGuard::new(r.firewall.clone()));
    let engine = guarded_through(&r, &faulty);
    baseline(&r, &engine).await;
    let ssh = tcp(22, "0.0.0.0/0", None);
    let event = hand(&r, GROUP, HandChange::Authorize(ssh.clone()), MALLORY);

    faulty.inject(GuardCall::Revoke, GuardFault::Fail(ErrorClass::Denied), None);
    let outcome = engine.guard().unwrap().event(event).await.unwrap();
    let GuardOutcome::Reverted { request, failures } = outcome else { panic!("{outcome:?}") };
    assert_eq!(failures.len(), 1, "{failures:?}");
    let failure = &failures[0];
    assert_eq!((failure.kind, failure.class), (FailureKind::Revoke, Some(ErrorClass::Denied)), "{failure:?}");
    assert_eq!(failure.target, Subject::Group(TargetId { region: EAST.into(), group_id: GROUP.into() }));
    assert_eq!(request.status, RequestStatus::Pending, "filed all the same");
    let reverted = r.store.audit(None, 50).await.unwrap().into_iter().find(|e| e.action == Action::ChangeReverted).unwrap();
    assert!(reverted.reason.contains("revert FAILED"), "{reverted:?}");

    // Still refused: the sweep says so, and files nothing new.
    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert!(sweep.failures.iter().any(|f| f.kind == FailureKind::Revoke), "{sweep:?}");
    assert!(r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.same_access(&ssh)));
    faulty.heal();
    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert!(sweep.failures.is_empty() && sweep.reverted.is_empty(), "{sweep:?}");
    assert!(!r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.same_access(&ssh)), "reverted once allowed");
    assert_eq!(requests(&engine).await.len(), 1);
    assert!(faulty.injected(GuardCall::Revoke) >= 2, "the event's revoke and the first sweep's");
}

#[tokio::test]
async fn an_approval_for_a_time_is_a_timed_rule_the_sweeper_revokes_at_its_term() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let vendor = tcp(443, "198.51.100.0/24", Some("vendor"));
    let event = hand(&r, GROUP, HandChange::Authorize(vendor.clone()), ALICE);
    let GuardOutcome::Reverted { request, .. } = engine.guard().unwrap().event(event).await.unwrap() else { panic!("filed") };
    let decided_at = portcullis_engine::Clock::now(r.clock.as_ref());
    let term = Verdict::ApproveFor(Duration::hours(2));
    let DecisionOutcome::Decided { request: approved, failures } =
        engine.guard().unwrap().decide(&request.id, term, &person("ubob"), Apply::Now).await.unwrap()
    else {
        panic!("decided")
    };
    assert!(failures.is_empty(), "{failures:?}");
    assert_eq!(approved.status, RequestStatus::Applied);
    let on = |r: &Rig| r.firewall.guard_rules(EAST, GROUP).into_iter().find(|g| g.rule.same_access(&vendor));
    let rule = on(&r).expect("the timed rule is on the group");
    assert!(rule.rule.description.unwrap().starts_with(&format!("pc:timed/{}", request.id)));
    // Neither the reconcile nor the guard sweep takes it for drift.
    engine.grants().reconcile(Scope::All, Cause::Refresh).await.unwrap();
    assert!(engine.guard().unwrap().sweep().await.unwrap().reverted.is_empty());
    assert!(on(&r).is_some());

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let sweeper = tokio::spawn({
        let engine = engine.clone();
        async move { engine.run_sweeper(stopped).await }
    });
    r.clock.advance(Duration::hours(2) - Duration::seconds(1));
    assert!(engine.sweep().await.unwrap().timed_rules.is_none(), "nothing is due a second early");
    assert!(on(&r).is_some());
    r.clock.advance(Duration::seconds(1));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while on(&r).is_some() {
        assert!(std::time::Instant::now() < deadline, "the sweeper did not revoke the timed rule");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    stop.send(true).unwrap();
    sweeper.await.unwrap();
    let audit = r.store.audit(None, 50).await.unwrap();
    let ended = audit.iter().find(|e| e.action == Action::Expired && e.request.is_some()).expect("the end is audited");
    assert_eq!(ended.at, decided_at + Duration::hours(2), "revoked exactly at the end of its term");
    let after = requests(&engine).await.into_iter().find(|x| x.id == request.id).unwrap();
    assert!(after.temporary.is_some_and(|t| t.ended_at.is_some()), "{after:?}");
}
