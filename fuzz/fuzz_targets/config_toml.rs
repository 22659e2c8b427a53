//! A configuration file, as `--config` or `PORTCULLIS_CONFIG` names it, with no environment.
//!
//! Beyond "never panics": a refused file says where (the origin, and a line that exists).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::config::{Config, Overrides};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Err(err) = Config::from_toml(text, "portcullis.toml", &Overrides::default(), &|_| None) else { return };
    if let Some(line) = err.key.strip_prefix("portcullis.toml line ") {
        let line: usize = line.parse().expect("a line number");
        assert!(line >= 1 && line <= text.split('\n').count(), "line {line} of a {}-line file", text.split('\n').count());
    }
});
