//! A configuration file, as `--config` or `PORTCULLIS_CONFIG` names it.
//!
//! The harness is `portcullis::fuzzing::config_toml`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::config_toml(data));
