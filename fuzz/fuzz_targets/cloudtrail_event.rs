//! A CloudTrail API-call event as EventBridge delivers it, then undone by guard.
//!
//! The harness is `portcullis::fuzzing::cloudtrail_event`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::cloudtrail_event(data));
