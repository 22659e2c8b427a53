//! Guard's settings that change what it does: `max_event_age` and `approver_groups`.

use std::collections::BTreeSet;
use std::sync::Arc;

use portcullis_core::Interface;
use portcullis_core::guard::{RequestStatus, Verdict};
use portcullis_engine::{Apply, DecisionOutcome, Engine, GuardOutcome, HandChange, Requester};
use time::Duration;

use crate::guard::{ALICE, EAST, GROUP, baseline, hand, settings, tcp};
use crate::{Rig, rig};

fn engine_with(r: &Rig, change: impl FnOnce(&mut portcullis_engine::GuardSettings)) -> Arc<Engine> {
    r.firewall.put_group(EAST, "sg-other", &[]);
    let mut s = settings(&[], None);
    change(&mut s);
    let builder = Engine::builder(r.store.clone(), r.firewall.clone(), r.clock.clone(), r.settings.clone());
    Arc::new(builder.guard(s, r.firewall.clone()).build())
}

#[tokio::test]
async fn an_event_older_than_max_event_age_is_left_to_the_sweep() {
    let r = rig(&[EAST]);
    let engine = engine_with(&r, |s| s.max_event_age = Duration::minutes(15));
    baseline(&r, &engine).await;
    let event = hand(&r, GROUP, HandChange::Authorize(tcp(22, "203.0.113.0/24", None)), ALICE);
    let on = |r: &Rig| r.firewall.guard_rules(EAST, GROUP).iter().any(|g| g.rule.from_port == Some(22));

    // Delivered 16 minutes late: not acted on from the event (it may no longer describe the group)...
    r.clock.advance(Duration::minutes(16));
    let outcome = engine.guard().unwrap().event(event.clone()).await.unwrap();
    let GuardOutcome::Ignored { reason } = &outcome else { panic!("an old event is ignored: {outcome:?}") };
    assert!(reason.contains("older than max_event_age"), "{reason}");
    assert!(on(&r), "an ignored event changed the group");
    // ...but the sweep compares the group with its baseline and reverts it all the same.
    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert_eq!(sweep.reverted.len(), 1, "{sweep:?}");
    assert!(!on(&r));

    // One just inside the age is acted on at once.
    let fresh = hand(&r, GROUP, HandChange::Authorize(tcp(23, "203.0.113.0/24", None)), ALICE);
    r.clock.advance(Duration::minutes(14));
    let outcome = engine.guard().unwrap().event(fresh).await.unwrap();
    assert!(matches!(outcome, GuardOutcome::Reverted { .. }), "{outcome:?}");
}

#[tokio::test]
async fn a_member_of_an_approver_group_may_approve_and_no_one_else() {
    let r = rig(&[EAST]);
    let engine = engine_with(&r, |s| s.approvers.groups = BTreeSet::from(["S0SECOPS".to_string()]));
    baseline(&r, &engine).await;
    let file = |port: i32| {
        let event = hand(&r, GROUP, HandChange::Authorize(tcp(port, "203.0.113.0/24", None)), ALICE);
        let engine = engine.clone();
        async move {
            let GuardOutcome::Reverted { request, .. } = engine.guard().unwrap().event(event).await.unwrap() else {
                panic!("filed")
            };
            request.id
        }
    };
    let in_group = |name: &str, groups: &[&str]| Requester {
        groups: groups.iter().map(|g| g.to_string()).collect(),
        ..Requester::named(name, Interface::Slack)
    };

    // udave is no listed approver, but is in the approver group: the approval lands.
    let first = file(22).await;
    let outcome = engine.guard().unwrap().decide(&first, Verdict::Approve, &in_group("udave", &["S0SECOPS"]), Apply::Now).await;
    let Ok(DecisionOutcome::Decided { request, .. }) = outcome else { panic!("{outcome:?}") };
    assert_eq!(request.status, RequestStatus::Applied);

    // ueve is in neither the list nor the group: refused, and the request waits.
    let second = file(23).await;
    let outcome = engine.guard().unwrap().decide(&second, Verdict::Approve, &in_group("ueve", &["S0OTHER"]), Apply::Now).await;
    assert!(matches!(outcome, Ok(DecisionOutcome::Refused(_))), "{outcome:?}");
    let outcome = engine.guard().unwrap().decide(&second, Verdict::Approve, &in_group("ueve", &[]), Apply::Now).await;
    assert!(matches!(outcome, Ok(DecisionOutcome::Refused(_))), "{outcome:?}");
    let pending = engine.guard().unwrap().requests(Some(RequestStatus::Pending), &in_group("ops", &[])).await.unwrap();
    assert_eq!(pending.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(), [second.as_str()]);
}
