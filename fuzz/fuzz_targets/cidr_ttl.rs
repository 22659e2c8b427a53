//! Addresses and durations as users type them (`1.2.3.4`, `2001:db8::/64`, `7d`, `90`).
//!
//! The harness is `portcullis::fuzzing::cidr_ttl`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::cidr_ttl(data));
