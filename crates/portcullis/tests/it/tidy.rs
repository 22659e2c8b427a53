//! Tidy tests, as rust-analyzer's `tidy.rs`: each checks one claim ARCHITECTURE.md makes about
//! the repository itself, and fails, naming the file, when the code stops making it true.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

/// Every `.rs` file under `dir`, as (path relative to the root, text).
fn rust_files(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).expect("a source file");
                let relative = path.strip_prefix(root()).expect("under the root").display().to_string();
                out.push((relative, text));
            }
        }
    }
    out.sort();
    out
}

/// The crates of the workspace: directory name → its manifest.
fn crates() -> BTreeMap<String, toml::Table> {
    let mut out = BTreeMap::new();
    for entry in std::fs::read_dir(root().join("crates")).expect("crates/") {
        let dir = entry.expect("a directory entry").path();
        let text = std::fs::read_to_string(dir.join("Cargo.toml")).expect("a manifest");
        let name = dir.file_name().expect("a name").to_string_lossy().into_owned();
        out.insert(name, text.parse::<toml::Table>().expect("a valid manifest"));
    }
    out
}

/// A crate's normal (not dev) dependencies.
fn dependencies(manifest: &toml::Table) -> Vec<String> {
    manifest.get("dependencies").and_then(|d| d.as_table()).map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

/// Source lines (comments excluded) that contain `needle`, as `path:line`.
fn uses(files: &[(String, String)], needle: &str, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for (path, text) in files {
        if allowed(path) {
            continue;
        }
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            if code.contains(needle) {
                out.push(format!("{path}:{}: {}", i + 1, line.trim()));
            }
        }
    }
    out
}

fn sources() -> Vec<(String, String)> {
    crates().keys().flat_map(|c| rust_files(&root().join("crates").join(c).join("src"))).collect()
}

#[test]
fn core_depends_on_no_io_crate() {
    let manifests = crates();
    let io = ["tokio", "rusqlite", "reqwest", "axum", "hyper", "async-trait", "lambda_runtime", "tracing-subscriber"];
    let bad: Vec<String> =
        dependencies(&manifests["core"]).into_iter().filter(|d| io.contains(&d.as_str()) || d.starts_with("aws")).collect();
    assert!(bad.is_empty(), "crates/core must stay pure, but depends on {bad:?}");
    let files = rust_files(&root().join("crates/core/src"));
    // std::net's address types are values; its sockets are I/O.
    for needle in ["std::fs", "TcpStream", "TcpListener", "UdpSocket", "std::process", "std::env", "tokio::", "async fn"] {
        let found = uses(&files, needle, |_| false);
        assert!(found.is_empty(), "core does no I/O, but uses {needle}:\n{}", found.join("\n"));
    }
}

#[test]
fn only_the_aws_crate_depends_on_the_aws_sdk() {
    // The SDK's crates; `aws_lambda_events` is only the shape of Lambda's events.
    let sdk = |d: &str| d.starts_with("aws-") || d.starts_with("aws_sdk") || d.starts_with("aws_config");
    for (name, manifest) in crates() {
        if name == "aws" {
            continue;
        }
        let bad: Vec<String> = dependencies(&manifest).into_iter().filter(|d| sdk(d)).collect();
        assert!(bad.is_empty(), "crates/{name} depends on the AWS SDK ({bad:?}); AWS code belongs in crates/aws");
    }
    let files = sources();
    for needle in ["aws_sdk_", "aws_config::", "aws_smithy_", "aws_sigv4"] {
        let found = uses(&files, needle, |p| p.starts_with("crates/aws/"));
        assert!(found.is_empty(), "only crates/aws uses the AWS SDK:\n{}", found.join("\n"));
    }
}

#[test]
fn no_rusqlite_outside_the_sqlite_code() {
    for (name, manifest) in crates() {
        if name != "store" {
            assert!(!dependencies(&manifest).contains(&"rusqlite".to_string()), "crates/{name} depends on rusqlite");
        }
    }
    let found = uses(&sources(), "rusqlite", |p| p.starts_with("crates/store/src/sqlite/"));
    assert!(found.is_empty(), "rusqlite types stay in crates/store/src/sqlite/:\n{}", found.join("\n"));
}

#[test]
fn no_wall_clock_reads_outside_the_clock() {
    let files = sources();
    for needle in ["SystemTime::now", "now_utc()", "now_local()", "OffsetDateTime::now"] {
        let found = uses(&files, needle, |p| p == "crates/engine/src/clock.rs");
        assert!(found.is_empty(), "time comes from engine::Clock, but {needle} is read:\n{}", found.join("\n"));
    }
}

#[test]
fn no_interface_module_reaches_the_store() {
    // `wiring` builds the adapters, the store among them; every other module of the binary is
    // an interface, and asks the engine.
    let files = rust_files(&root().join("crates/portcullis/src"));
    for needle in [".store()", "dyn Store", "portcullis_store::Store", "SqliteStore", "DynamoStore"] {
        let found = uses(&files, needle, |p| p.ends_with("/wiring.rs"));
        assert!(found.is_empty(), "interfaces go through the engine, but reach the store ({needle}):\n{}", found.join("\n"));
    }
}

#[test]
fn the_binary_modules_import_only_lower_layers() {
    // Each module of crates/portcullis may import only modules of a lower layer, so there is
    // no cycle and `app` (state and errors) imports no handler.
    let layer: BTreeMap<&str, u8> = BTreeMap::from([
        ("config", 0),
        ("ratelimit", 0),
        ("auth", 0),
        ("replica", 0),
        ("cloudtrail", 0),
        ("headers", 0),
        ("events", 1),
        ("slack", 1),
        ("metrics", 1),
        ("app", 2),
        ("wiring", 2),
        ("routes", 3),
        ("lambda", 4),
        ("serve", 4),
        ("open", 5),
        ("output", 0),
        ("cli", 6),
    ]);
    let src = root().join("crates/portcullis/src");
    for (path, text) in rust_files(&src) {
        let relative = path.trim_start_matches("crates/portcullis/src/");
        let module = relative.split(['/', '.']).next().unwrap_or_default();
        if matches!(module, "lib" | "main") {
            continue;
        }
        let own = *layer.get(module).unwrap_or_else(|| panic!("{path}: add the module `{module}` to this test's layers"));
        for (i, line) in text.lines().enumerate() {
            for part in line.split("crate::").skip(1) {
                let imported: String = part.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let Some(&theirs) = layer.get(imported.as_str()) else { continue };
                assert!(
                    imported == module || theirs < own,
                    "{path}:{}: `{module}` (layer {own}) imports `{imported}` (layer {theirs}); only lower layers may be imported",
                    i + 1
                );
            }
        }
    }
}

#[test]
fn long_files_say_why() {
    // A file over this many lines carries a `tidy: long file` note saying why it is one.
    const LIMIT: usize = 600;
    let mut long = Vec::new();
    for c in crates().keys() {
        for (path, text) in rust_files(&root().join("crates").join(c)) {
            if text.lines().count() > LIMIT && !text.contains("tidy: long file") {
                long.push(format!("{path}: {} lines", text.lines().count()));
            }
        }
    }
    assert!(long.is_empty(), "split these, or note why each is long (`tidy: long file — …`):\n{}", long.join("\n"));
}

#[test]
fn the_architecture_names_every_crate() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    for name in crates().keys() {
        assert!(architecture.contains(&format!("crates/{name}")), "ARCHITECTURE.md's code map does not describe crates/{name}");
    }
}
