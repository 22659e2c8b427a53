//! Any payload the Lambda function (or `portcullis invoke`) may be handed, through the real handler.
//!
//! The harness is `portcullis::fuzzing::lambda_event`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::lambda_event(data));
