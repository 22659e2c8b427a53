//! A CloudTrail API-call event as EventBridge delivers it (fixtures `cloudtrail-*.json`), read
//! by `events::read` as `invoke`, the Lambda and `POST /v1/events` read it, then undone by
//! `core::guard::revert`.
//!
//! Beyond "never panics": a rule change names its event and group; without a baseline an undo
//! never opens anything (it may close); an undo never opens a rule carrying our marker; and a
//! change to rules the store backs is the reconcile's, undone not at all.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::events::{AwsEvent, read};
use portcullis_core::Marker;
use portcullis_core::guard::{Backing, revert};
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let Some(Ok(AwsEvent::Guard(event))) = read(&value) else { return };
    assert!(!event.event_id.is_empty() && !event.group_id.is_empty(), "{value}");
    let marker = Marker::default();
    let undo = revert(&event.changes, None, &marker, &Backing::default());
    assert!(undo.authorize.is_empty() && undo.restore.is_empty(), "no baseline, yet it opens: {value}");
    let marked = |r: &portcullis_core::guard::GuardRule| r.carries_marker(&marker);
    let backed_all = {
        let mut b = Backing::default();
        event.changes.rules().for_each(|r| b.insert(r));
        b
    };
    let with_baseline = revert(&event.changes, Some(&[]), &marker, &Backing::default());
    assert!(!with_baseline.authorize.iter().any(marked), "an undo opened a marked rule: {value}");
    if event.changes.only_ours(&marker, &backed_all) {
        assert!(revert(&event.changes, None, &marker, &backed_all).is_empty(), "the reconcile's rules: {value}");
    }
});
