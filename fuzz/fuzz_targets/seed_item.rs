//! A grants-table item in DynamoDB JSON, as the IP Whitelist Manager may have written it.
//!
//! The harness is `portcullis::fuzzing::seed_item`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::seed_item(data));
