//! Tidy tests, as rust-analyzer's `tidy.rs`: each checks one claim ARCHITECTURE.md makes about
//! the repository itself, and fails, naming the file, when the code stops making it true.
//! Code is read through `lex`: comments and literals never hide a use, nor count as one.

mod lex;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use lex::{code_of, use_paths};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..").canonicalize().expect("the workspace root")
}

/// Every file under `dir` whose name ends with one of `extensions`, as (path relative to the
/// root, text).
fn files(dir: &Path, extensions: &[&str]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| extensions.iter().any(|x| e == *x)) {
                let text = std::fs::read_to_string(&path).expect("a text file");
                let relative = path.strip_prefix(root()).expect("under the root").display().to_string();
                out.push((relative, text));
            }
        }
    }
    out.sort();
    out
}

fn rust_files(dir: &Path) -> Vec<(String, String)> {
    files(dir, &["rs"])
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

/// A Rust file, read once: its text, its code (`lex::code_of`) and the paths its `use`
/// declarations bring in.
struct Source {
    path: String,
    text: String,
    code: String,
    imports: Vec<(usize, String)>,
}

fn read(files: Vec<(String, String)>) -> Vec<Source> {
    files
        .into_iter()
        .map(|(path, text)| {
            let code = code_of(&text);
            let imports = use_paths(&code);
            Source { path, text, code, imports }
        })
        .collect()
}

/// Source lines that use `needle`, as `path:line`: in code (comments and literals do not
/// count) or in a path a `use` brings in (groups expanded, so `use std::{fs, io}` uses
/// `std::fs`).
fn uses(files: &[Source], needle: &str, allowed: impl Fn(&str) -> bool) -> Vec<String> {
    let mut out = Vec::new();
    for file in files.iter().filter(|f| !allowed(&f.path)) {
        for (i, line) in file.code.lines().enumerate() {
            let in_use = file.imports.iter().any(|(at, p)| *at == i + 1 && p.contains(needle));
            if line.contains(needle) || in_use {
                out.push(format!("{}:{}: {}", file.path, i + 1, file.text.lines().nth(i).unwrap_or_default().trim()));
            }
        }
    }
    out
}

fn sources() -> Vec<Source> {
    read(crates().keys().flat_map(|c| rust_files(&root().join("crates").join(c).join("src"))).collect())
}

/// Every package's normal (not dev, not build) dependencies, transitively, from `cargo metadata`:
/// package name → the names of everything it depends on.
fn dependency_closure() -> BTreeMap<String, BTreeSet<String>> {
    // This platform's graph only: what the build downloaded, and what ships.
    let rustc = std::process::Command::new("rustc").arg("-vV").output().expect("rustc -vV");
    let host = String::from_utf8_lossy(&rustc.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc names its host");
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host])
        .current_dir(root())
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "cargo metadata: {}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    let names: BTreeMap<&str, &str> = meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .map(|p| (p["id"].as_str().expect("an id"), p["name"].as_str().expect("a name")))
        .collect();
    let mut direct: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for node in meta["resolve"]["nodes"].as_array().expect("a resolve graph") {
        let normal = node["deps"]
            .as_array()
            .expect("deps")
            .iter()
            .filter(|d| d["dep_kinds"].as_array().is_some_and(|kinds| kinds.iter().any(|k| k["kind"].is_null())));
        direct.insert(node["id"].as_str().expect("an id"), normal.map(|d| d["pkg"].as_str().expect("a pkg")).collect());
    }
    let mut out = BTreeMap::new();
    for (id, name) in &names {
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack = direct.get(id).cloned().unwrap_or_default();
        while let Some(dep) = stack.pop() {
            if seen.insert(dep) {
                stack.extend(direct.get(dep).cloned().unwrap_or_default());
            }
        }
        out.insert(name.to_string(), seen.into_iter().map(|d| names[d].to_string()).collect());
    }
    out
}

/// A crate directory's package name (`core` → `portcullis-core`).
fn package_of(dir: &str) -> String {
    crates()[dir]["package"]["name"].as_str().expect("a package name").to_string()
}

/// ARCHITECTURE.md's "never depends on" table: crate directory → what it never depends on
/// (`aws-sdk-*` stands for every name starting `aws-sdk-`).
fn never_depends_on() -> Vec<(String, Vec<String>)> {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let mut rows = Vec::new();
    for line in architecture.lines().filter(|l| l.contains("never depends on") || l.starts_with("| `crates/")) {
        if line.starts_with("| crate ") {
            continue;
        }
        let cells: Vec<&str> = line.split('|').map(str::trim).filter(|c| !c.is_empty()).collect();
        let row = match cells.as_slice() {
            [krate, never] if krate.starts_with("`crates/") => Some((krate, never)),
            _ => None,
        };
        let Some((krate, never)) = row else {
            panic!("ARCHITECTURE.md says \"never depends on\" outside its table, where no test checks it: {line}")
        };
        let dir = krate.trim_matches('`').trim_start_matches("crates/").to_string();
        let names = never.split(',').map(|n| n.trim().trim_matches('`').to_string()).filter(|n| !n.is_empty()).collect();
        rows.push((dir, names));
    }
    assert!(!rows.is_empty(), "ARCHITECTURE.md has no \"never depends on\" table");
    rows
}

#[test]
fn every_never_depends_on_line_of_the_architecture_holds_transitively() {
    let closure = dependency_closure();
    for (dir, never) in never_depends_on() {
        let package = package_of(&dir);
        let deps = &closure[&package];
        for name in &never {
            let bad: Vec<&String> = match name.strip_suffix('*') {
                Some(prefix) => deps.iter().filter(|d| d.starts_with(prefix)).collect(),
                None => deps.iter().filter(|d| *d == name).collect(),
            };
            assert!(bad.is_empty(), "ARCHITECTURE.md says crates/{dir} never depends on {name}, but it does: {bad:?}");
        }
    }
}

#[test]
fn core_does_no_io() {
    let files = read(rust_files(&root().join("crates/core/src")));
    // std::net's address types are values; its sockets are I/O.
    let io = [
        "std::fs",
        "std::io",
        "std::net::Tcp",
        "std::net::Udp",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "std::process",
        "std::env",
        "std::thread",
        "tokio",
        "async fn",
        "println!",
        "print!",
        "eprintln!",
        "eprint!",
        "dbg!",
    ];
    for needle in io {
        let found = uses(&files, needle, |_| false);
        assert!(found.is_empty(), "core does no I/O, but uses {needle}:\n{}", found.join("\n"));
    }
}

#[test]
fn only_the_aws_crate_uses_the_aws_sdk() {
    let files = sources();
    for needle in ["aws_sdk_", "aws_config", "aws_smithy_", "aws_sigv4", "aws_credential_types", "aws_types"] {
        let found = uses(&files, needle, |p| p.starts_with("crates/aws/"));
        assert!(found.is_empty(), "only crates/aws uses the AWS SDK:\n{}", found.join("\n"));
    }
}

#[test]
fn no_rusqlite_outside_the_sqlite_code() {
    let found = uses(&sources(), "rusqlite", |p| p.starts_with("crates/store/src/sqlite/"));
    assert!(found.is_empty(), "rusqlite types stay in crates/store/src/sqlite/:\n{}", found.join("\n"));
}

#[test]
fn no_wall_clock_reads_outside_the_clock() {
    let files = sources();
    let reads = [
        "SystemTime::now",
        "UNIX_EPOCH.elapsed",
        "SystemTime::elapsed",
        "now_utc()",
        "now_local()",
        "OffsetDateTime::now",
        "UtcDateTime::now",
        "Utc::now",
        "Local::now",
    ];
    for needle in reads {
        let found = uses(&files, needle, |p| p == "crates/engine/src/clock.rs");
        assert!(found.is_empty(), "time comes from engine::Clock, but {needle} is read:\n{}", found.join("\n"));
    }
    // A wall-clock type renamed on import would hide its reads from the needles above.
    for file in &files {
        for (line, used) in &file.imports {
            let renamed = file.text.lines().nth(line - 1).is_some_and(|l| l.contains(" as "));
            let clock = ["SystemTime", "OffsetDateTime", "UtcDateTime", "UNIX_EPOCH"].iter().any(|t| used.ends_with(t));
            let path = &file.path;
            assert!(!(renamed && clock) || path == "crates/engine/src/clock.rs", "{path}:{line}: a clock type renamed on import");
        }
    }
}

#[test]
fn no_interface_module_reaches_the_store() {
    // `wiring` builds the adapters, the store among them; every other module of the binary is
    // an interface, and asks the engine.
    let files = read(rust_files(&root().join("crates/portcullis/src")));
    for needle in [".store()", "dyn Store", "portcullis_store::Store", "SqliteStore", "DynamoStore"] {
        let found = uses(&files, needle, |p| p.ends_with("/wiring.rs"));
        assert!(found.is_empty(), "interfaces go through the engine, but reach the store ({needle}):\n{}", found.join("\n"));
    }
}

/// The binary's modules by layer: each may import only lower layers (so there is no cycle, and
/// `app`, state and errors, imports no handler).
const LAYERS: [(&str, u8); 18] = [
    ("config", 0),
    ("ratelimit", 0),
    ("auth", 0),
    ("replica", 0),
    ("cloudtrail", 0),
    ("headers", 0),
    ("output", 0),
    ("events", 1),
    ("slack", 1),
    ("metrics", 1),
    ("app", 2),
    ("wiring", 2),
    ("routes", 3),
    ("lambda", 4),
    ("serve", 4),
    ("open", 5),
    ("cli", 6),
    // The fuzz harnesses may call anything: nothing in the binary imports them.
    ("fuzzing", 7),
];

/// The top-level modules a file imports: `crate::x` anywhere in code, `use crate::{x, y}`, and
/// `super::` paths that climb out of the file's own top-level module.
fn imported_modules(relative: &str, text: &str) -> Vec<(usize, String)> {
    // The file's module path: `cli/grants.rs` is cli::grants; `lambda/mod.rs` is lambda.
    let mut module: Vec<&str> = relative.trim_end_matches(".rs").split('/').collect();
    if module.last() == Some(&"mod") {
        module.pop();
    }
    let code = code_of(text);
    let mut out = Vec::new();
    let ident = |s: &str| -> String { s.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut paths: Vec<(usize, String)> = use_paths(&code);
    for (i, line) in code.lines().enumerate() {
        for (at, _) in line.match_indices("crate::").chain(line.match_indices("super::")) {
            let whole = &line[at..];
            let before = line[..at].chars().last();
            if before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$' || c == ':') {
                continue;
            }
            paths.push((i + 1, whole.to_string()));
        }
    }
    for (line, path) in paths {
        if let Some(rest) = path.strip_prefix("crate::") {
            // `crate::{a, b}` in code is a group `use_paths` expanded already.
            if !rest.starts_with('{') {
                out.push((line, ident(rest)));
            }
            continue;
        }
        let mut rest = path.as_str();
        let mut up = 0;
        while let Some(r) = rest.strip_prefix("super::") {
            rest = r;
            up += 1;
        }
        if up == 0 {
            continue;
        }
        // A file's own module is `module`; `super` is its parent.
        let parent = module.len().saturating_sub(up);
        out.push((line, if parent == 0 { ident(rest) } else { module[0].to_string() }));
    }
    // A `use` line is read both as a declaration and as code: each import once.
    let mut seen = BTreeSet::new();
    out.retain(|import| !import.1.is_empty() && seen.insert(import.clone()));
    out
}

#[test]
fn the_binary_modules_import_only_lower_layers() {
    let layer: BTreeMap<&str, u8> = LAYERS.into_iter().collect();
    for (path, text) in rust_files(&root().join("crates/portcullis/src")) {
        let relative = path.trim_start_matches("crates/portcullis/src/");
        let module = relative.split(['/', '.']).next().unwrap_or_default();
        if matches!(module, "lib" | "main") {
            continue;
        }
        let own = *layer.get(module).unwrap_or_else(|| panic!("{path}: add the module `{module}` to this test's layers"));
        for (line, imported) in imported_modules(relative, &text) {
            let Some(&theirs) = layer.get(imported.as_str()) else { continue };
            assert!(
                imported == module || theirs < own,
                "{path}:{line}: `{module}` (layer {own}) imports `{imported}` (layer {theirs}); only lower layers may be imported"
            );
        }
    }
}

#[test]
fn the_layer_check_sees_grouped_and_climbing_imports() {
    let found =
        |relative: &str, text: &str| -> Vec<String> { imported_modules(relative, text).into_iter().map(|(_, m)| m).collect() };
    assert_eq!(found("app.rs", "use crate::{routes, config::Config};"), ["routes", "config"]);
    assert_eq!(found("cli/grants.rs", "use super::super::routes::x;"), ["routes"]);
    assert_eq!(found("cli/grants.rs", "use super::print;"), ["cli"]);
    assert_eq!(found("lambda/mod.rs", "fn f() { super::wiring::x() }"), ["wiring"]);
    assert!(found("app.rs", "let s = \"crate::routes\"; // crate::routes").is_empty());
}

#[test]
fn no_source_file_is_over_600_lines() {
    // Tests may be longer, with a `tidy: long file` note saying why.
    const LIMIT: usize = 600;
    let mut long = Vec::new();
    for c in crates().keys() {
        for (path, text) in rust_files(&root().join("crates").join(c)) {
            let lines = text.lines().count();
            let in_src = path.contains("/src/");
            if lines > LIMIT && (in_src || !text.contains("tidy: long file")) {
                long.push(format!("{path}: {lines} lines"));
            }
        }
    }
    assert!(long.is_empty(), "split these (a test may instead note why it is long: `tidy: long file — …`):\n{}", long.join("\n"));
}

#[test]
fn no_file_under_crates_names_a_seed_by_number() {
    // The seed tools are named for what they are (the IP Whitelist Manager, the lifecycle
    // hook); the README keeps the numbers for people migrating.
    let all = files(&root().join("crates"), &["rs", "toml", "js", "html", "css", "md", "json", "sql"]);
    let needle = ["seed", " 00"].concat();
    let bad: Vec<&String> = all.iter().filter(|(_, text)| text.to_lowercase().contains(&needle)).map(|(p, _)| p).collect();
    assert!(bad.is_empty(), "these say \"{needle}…\": {bad:?}");
}

#[test]
fn the_binary_prints_through_outln() {
    // `println!` panics on a closed pipe; `outln!` ends the output quietly (`output`).
    let files = read(rust_files(&root().join("crates/portcullis/src")));
    let found: Vec<String> = ["println!", "print!("]
        .iter()
        .flat_map(|needle| uses(&files, needle, |p| p.ends_with("/output.rs")))
        .filter(|l| !l.contains("eprint"))
        .collect();
    assert!(found.is_empty(), "print with outln!:\n{}", found.join("\n"));
}

#[test]
fn test_doubles_exist_only_with_test_support() {
    // The engine's doubles are compiled in only for tests: their modules and re-exports sit
    // behind the `test-support` feature.
    let lib = std::fs::read_to_string(root().join("crates/engine/src/lib.rs")).expect("the engine's lib.rs");
    let doubles = [
        "mod faults",
        "mod faulty_guard",
        "mod memory",
        "mod memory_guard",
        "ManualClock",
        "TokioClock",
        "MemoryFirewall",
        "FaultyFirewall",
        "FaultyGuard",
        "MemoryMembership",
    ];
    let lines: Vec<&str> = lib.lines().collect();
    for double in doubles {
        let at: Vec<usize> = lines.iter().enumerate().filter(|(_, l)| l.contains(double)).map(|(i, _)| i).collect();
        assert!(!at.is_empty(), "crates/engine/src/lib.rs no longer has {double}: update this test");
        for i in at {
            let gated = i > 0 && lines[i - 1].trim() == "#[cfg(feature = \"test-support\")]";
            assert!(gated, "crates/engine/src/lib.rs:{}: {double} is there without test-support", i + 1);
        }
    }
}

#[test]
fn the_architecture_names_every_crate_and_console_file() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    for name in crates().keys() {
        assert!(architecture.contains(&format!("crates/{name}")), "ARCHITECTURE.md's code map does not describe crates/{name}");
    }
    for entry in std::fs::read_dir(root().join("crates/portcullis/console")).expect("the console") {
        let name = entry.expect("an entry").file_name().to_string_lossy().into_owned();
        assert!(architecture.contains(&format!("`{name}`")), "ARCHITECTURE.md does not name the console's {name}");
    }
}

#[test]
fn the_architecture_is_a_ten_minute_read() {
    let architecture = std::fs::read_to_string(root().join("ARCHITECTURE.md")).expect("ARCHITECTURE.md");
    let words = architecture.split_whitespace().count();
    assert!(words <= 2_500, "ARCHITECTURE.md has {words} words; keep it at most 2,500");
}
