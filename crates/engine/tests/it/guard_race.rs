//! Guard's decision race, forced: two deciders both read a pending request before either
//! writes its decision.

use std::collections::BTreeSet;
use std::sync::Arc;

use portcullis_core::guard::{GroupRule, RequestStatus, Verdict};
use portcullis_core::{Action, TargetId};
use portcullis_engine::{Apply, DecisionOutcome, Engine, GuardOutcome, HandChange};

use crate::guard::{ALICE, EAST, GROUP, baseline, guarded, hand, person, settings, tcp};
use crate::rig;

/// Guard's part of the store, with every request read parked until `readers` reads have been
/// made: deciders that race are made to both read the request before either writes.
struct ParkedReads {
    inner: Arc<dyn portcullis_store::Store>,
    barrier: tokio::sync::Barrier,
    parked: std::sync::atomic::AtomicUsize,
    readers: usize,
    /// Conditional writes that found another write first.
    lost: std::sync::atomic::AtomicUsize,
}

#[async_trait::async_trait]
impl portcullis_store::GuardStore for ParkedReads {
    async fn file_request(
        &self,
        request: &portcullis_core::guard::ChangeRequest,
        events: Vec<portcullis_core::AuditEvent>,
    ) -> Result<bool, portcullis_store::StoreError> {
        self.inner.file_request(request, events).await
    }

    async fn request(&self, id: &str) -> Result<Option<portcullis_core::guard::ChangeRequest>, portcullis_store::StoreError> {
        let read = self.inner.request(id).await;
        if self.parked.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < self.readers {
            self.barrier.wait().await;
        }
        read
    }

    async fn requests(
        &self,
        status: Option<RequestStatus>,
    ) -> Result<Vec<portcullis_core::guard::ChangeRequest>, portcullis_store::StoreError> {
        self.inner.requests(status).await
    }

    async fn update_request(
        &self,
        request: &portcullis_core::guard::ChangeRequest,
        events: Vec<portcullis_core::AuditEvent>,
    ) -> Result<bool, portcullis_store::StoreError> {
        let written = self.inner.update_request(request, events).await;
        if matches!(written, Ok(false)) {
            self.lost.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        written
    }

    async fn baseline(&self, group: &TargetId) -> Result<Option<Vec<GroupRule>>, portcullis_store::StoreError> {
        self.inner.baseline(group).await
    }

    async fn set_baseline(
        &self,
        group: &TargetId,
        rules: &[GroupRule],
        events: Vec<portcullis_core::AuditEvent>,
    ) -> Result<(), portcullis_store::StoreError> {
        self.inner.set_baseline(group, rules, events).await
    }

    async fn note_own_changes(
        &self,
        keys: &[String],
        until: portcullis_core::Timestamp,
    ) -> Result<(), portcullis_store::StoreError> {
        self.inner.note_own_changes(keys, until).await
    }

    async fn noted_own_changes(
        &self,
        keys: &[String],
        now: portcullis_core::Timestamp,
    ) -> Result<BTreeSet<String>, portcullis_store::StoreError> {
        self.inner.noted_own_changes(keys, now).await
    }
}

#[tokio::test]
async fn two_deciders_who_both_read_the_request_first_apply_it_once() {
    let r = rig(&[EAST]);
    let engine = guarded(&r, &[], None);
    baseline(&r, &engine).await;
    let event = hand(&r, GROUP, HandChange::Authorize(tcp(22, "203.0.113.0/24", Some("vendor"))), ALICE);
    let GuardOutcome::Reverted { request, .. } = engine.guard().unwrap().event(event).await.unwrap() else { panic!("filed") };

    // The same store, through a guard part that holds each of the next two reads until both
    // are made: both deciders see the request pending, and both try to write their decision.
    let parked = Arc::new(ParkedReads {
        inner: r.store.clone(),
        barrier: tokio::sync::Barrier::new(2),
        parked: 0.into(),
        readers: 2,
        lost: 0.into(),
    });
    r.firewall.put_group(EAST, "sg-other", &[]);
    let builder = Engine::builder(r.store.clone(), r.firewall.clone(), r.clock.clone(), r.settings.clone());
    let racing = builder.guard(settings(&[], None), r.firewall.clone()).guard_store(parked.clone()).build();
    let guard = racing.guard().unwrap();
    let (bob, carol) = (person("ubob"), person("ucarol"));
    let decide = |who| guard.decide(&request.id, Verdict::Approve, who, Apply::Now);
    let run = async { tokio::join!(decide(&bob), decide(&carol)) };
    let (a, b) = tokio::time::timeout(std::time::Duration::from_secs(30), run).await.expect("the deciders are stuck");

    assert_eq!(
        parked.lost.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "both deciders wrote on the same version: the race was run"
    );
    let outcomes = [a.unwrap(), b.unwrap()];
    let decided = outcomes.iter().filter(|o| matches!(o, DecisionOutcome::Decided { .. })).count();
    let refused = outcomes.iter().filter(|o| matches!(o, DecisionOutcome::Refused(_))).count();
    assert_eq!((decided, refused), (1, 1), "exactly one decision lands, the other is told: {outcomes:?}");
    let actions: Vec<Action> = r.store.audit(None, 50).await.unwrap().into_iter().map(|e| e.action).collect();
    assert_eq!(actions.iter().filter(|a| **a == Action::ChangeApproved).count(), 1, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| **a == Action::ChangeApplied).count(), 1, "{actions:?}");
    let on: Vec<_> = r.firewall.guard_rules(EAST, GROUP).into_iter().filter(|g| g.rule.from_port == Some(22)).collect();
    assert_eq!(on.len(), 1, "the change applied once: {on:?}");
}
