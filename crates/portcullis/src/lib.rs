//! `portcullis`: time-boxed, audited network allowlisting for AWS security groups.
//!
//! The binary's parts as a library, so the integration tests and benchmarks drive the same
//! router, wiring and CLI the binary runs. `main.rs` stays small: parse arguments, run, map
//! errors to exit codes (0 ok, 1 operational error, 2 usage or validation error).
//!
//! Layers, each importing only those below it: `cli` → `serve`, `lambda` → `routes` → `app`
//! → `auth`, `slack`, `metrics`, `ratelimit`, `config`; `wiring` builds the adapters from
//! `config`.

pub mod app;
pub mod auth;
pub mod cli;
pub mod cloudtrail;
pub mod config;
pub mod events;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod headers;
pub mod lambda;
pub mod metrics;
pub mod open;
pub mod output;
pub mod ratelimit;
pub mod replica;
pub mod routes;
pub mod serve;
pub mod slack;
pub mod wiring;
