//! A slash command's form body as Slack posts it, then the `/infra whitelist …` text it carries.
//!
//! The harness is `portcullis::fuzzing::slack_command`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::slack_command(data));
