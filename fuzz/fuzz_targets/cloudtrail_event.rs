//! A CloudTrail API-call event as EventBridge delivers it (fixtures `cloudtrail-*.json`), read
//! by `events::read` as `invoke`, the Lambda and `POST /v1/events` read it, then undone by
//! `core::guard::revert`.
//!
//! Beyond "never panics": a rule change names its event and group; an undo never touches a
//! rule with our marker, and undoes nothing of a change that touched only ours.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::events::{AwsEvent, read};
use portcullis_core::Marker;
use portcullis_core::guard::revert;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let Some(Ok(AwsEvent::Guard(event))) = read(&value) else { return };
    assert!(!event.event_id.is_empty() && !event.group_id.is_empty(), "{value}");
    let marker = Marker::default();
    let undo = revert(&event.changes, None, &marker);
    if event.changes.only_ours(&marker) {
        assert!(undo.is_empty(), "our own rules are the reconcile's: {value}");
    }
    let ours = |r: &portcullis_core::guard::GuardRule| r.is_ours(&marker);
    assert!(!undo.revoke.iter().any(ours) && !undo.authorize.iter().any(ours), "an undo touched our rule: {value}");
});
