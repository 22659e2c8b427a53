//! A Slack interaction's form body (`payload=<block_actions JSON>`).
//!
//! The harness is `portcullis::fuzzing::slack_interaction`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::slack_interaction(data));
