//! The IAM login a client sends in `Authorization: PortcullisIAM …`, and the SigV4 header inside it.
//!
//! The harness is `portcullis::fuzzing::iam_header`, in the workspace, where CI compiles it and
//! replays its corpus (`tests/it/fuzz_corpora.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzzing::iam_header(data));
