//! Integration tests: the real binary, SQLite on disk, HTTP over loopback, and EC2 from moto's
//! server (started by `scripts/test`, which sets `PORTCULLIS_TEST_MOTO`).

mod support;

mod access;
mod aws_proxy;
mod cli;
mod concurrency;
mod connection;
mod dynamo;
mod dynamo_cost;
mod engine;
mod fuzz_corpora;
mod guard;
mod guard_safety;
mod guard_slack;
mod lambda;
mod members;
mod operators;
mod prefix_lists;
mod serve;
mod slack;
mod store_contract;
mod tidy;
mod trail;
