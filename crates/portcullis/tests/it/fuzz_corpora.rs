//! Every fuzz target's harness (`portcullis::fuzzing`) on every input of its starting corpus:
//! the seeds, the fixtures and the README's configuration, on stable Rust in CI. A crash the
//! fuzzer once found becomes a seed, and this keeps it fixed.

use std::collections::BTreeMap;

use portcullis::fuzzing::{TARGETS, corpus};

fn root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[test]
fn every_target_runs_every_input_of_its_corpus() {
    let inputs = corpus(&root()).unwrap();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for input in &inputs {
        let (_, harness) = TARGETS.iter().find(|(name, _)| *name == input.target).unwrap();
        let run = std::panic::catch_unwind(|| harness(&input.data));
        assert!(run.is_ok(), "{} crashed on {}", input.target, input.name);
        *counts.entry(input.target).or_default() += 1;
    }
    // Every target has inputs to replay: a target whose corpus is empty checks nothing here.
    for (target, _) in TARGETS {
        assert!(counts.get(target).copied().unwrap_or(0) > 0, "{target} has no input in its corpus: {counts:?}");
    }
}

#[test]
fn every_fuzz_target_is_a_wrapper_around_its_harness() {
    let manifest = std::fs::read_to_string(root().join("fuzz/Cargo.toml")).unwrap();
    let bins: Vec<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .map(|n| n.trim_end_matches('"'))
        .filter(|n| *n != "portcullis-fuzz")
        .collect();
    let mut names: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    let mut listed = bins.clone();
    names.sort();
    listed.sort();
    assert_eq!(listed, names, "fuzz/Cargo.toml's targets and portcullis::fuzzing::TARGETS differ");
    for target in bins {
        let path = root().join(format!("fuzz/fuzz_targets/{target}.rs"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let call = format!("portcullis::fuzzing::{target}(data)");
        assert!(text.contains(&call), "{}: the body is the harness's, `{call}`, so the workspace compiles it", path.display());
    }
}
