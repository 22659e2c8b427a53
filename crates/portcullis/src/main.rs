//! `portcullis`: time-boxed, audited network allowlisting for AWS security groups.
//!
//! `main` stays small: parse arguments, build the configuration, call into the engine, map
//! errors to exit codes (0 ok, 1 operational error, 2 usage or validation error).

mod cli;
mod config;
mod http;
mod wiring;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(1);
        }
    };
    runtime.block_on(cli::run(args))
}
