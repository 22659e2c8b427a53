//! One DynamoDB Stream record (or a whole batch) as the Lambda receives it.
//!
//! The harness is `portcullis::fuzzing::stream_record`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::stream_record(data));
