//! The CLI against moto: what a user of `portcullis add/remove/refresh` sees.

use serde_json::Value;

use crate::support::{World, text};

const HOME: &str = "pc:dev tester: Home office";

fn ok(out: &std::process::Output) {
    assert!(out.status.success(), "{}", text(out));
}

#[tokio::test]
async fn add_refresh_remove_on_every_managed_group_leaving_others_alone() {
    let w = World::new().await;
    let alb = w.group(true, &[]).await;
    let nlb = w.group(true, &[("WhitelistPorts", "nlb")]).await;
    let untagged = w.group(false, &[]).await;
    let ssh = w.group(true, &[("WhitelistPorts", "tcp:22")]).await;
    let prod = w.group(true, &[("WhitelistEnvironment", "prod")]).await;
    w.hand_rule(&alb, "192.0.2.10/32", 80, "office VPN").await;
    w.hand_rule(&untagged, "192.0.2.11/32", 443, "2020-01-01").await;
    let untagged_before = w.rules(&untagged).await;

    ok(&w.cli(&["add", "198.51.100.7", "--ttl", "1h", "--description", "Home office"]));
    assert_eq!(
        w.rules(&alb).await,
        vec![
            ("192.0.2.10/32".into(), 80, Some("office VPN".into())),
            ("198.51.100.7/32".into(), 80, Some(HOME.into())),
            ("198.51.100.7/32".into(), 443, Some(HOME.into())),
        ]
    );
    assert_eq!(w.rules(&nlb).await, vec![("198.51.100.7/32".into(), 7233, Some(HOME.into()))]);
    assert_eq!(w.rules(&untagged).await, untagged_before);
    // Port tags are untrusted, and a dev grant never opens a prod group.
    assert!(w.rules(&ssh).await.is_empty() && w.rules(&prod).await.is_empty());
    let report: Value = serde_json::from_slice(&w.cli(&["refresh", "--json"]).stdout).unwrap();
    let skipped: Vec<&str> =
        report["skipped"].as_array().unwrap().iter().map(|s| s["id"]["group_id"].as_str().unwrap()).collect();
    assert!(skipped.contains(&ssh.as_str()) && skipped.contains(&prod.as_str()), "{report}");

    // Adding again refreshes: no duplicate, no error, the description follows.
    let out = w.cli(&["add", "198.51.100.7/32", "--ttl=2h", "--description", "Train", "--as", "bob"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("refreshed"), "{}", text(&out));
    let rules = w.rules(&alb).await;
    assert_eq!(rules.len(), 3);
    assert!(rules.contains(&("198.51.100.7/32".into(), 443, Some("pc:dev tester: Train".into()))), "{rules:?}");
    let grants = w.grants();
    assert_eq!(grants.as_array().unwrap().len(), 1);
    assert_eq!(grants[0]["owner"]["name"], "tester");

    // IPv6 goes to Ipv6Ranges.
    ok(&w.cli(&["add", "2001:db8:1::1", "--ttl", "1h"]));
    let keys = w.keys(&nlb).await;
    assert!(keys.contains(&("2001:db8:1::1/128".into(), 7233)), "{keys:?}");

    ok(&w.cli(&["remove", "198.51.100.7"]));
    assert_eq!(
        w.keys(&alb).await,
        [("192.0.2.10/32".to_string(), 80), ("2001:db8:1::1/128".into(), 80), ("2001:db8:1::1/128".into(), 443)].into()
    );
    assert_eq!(w.rules(&untagged).await, untagged_before);
    let again = w.cli(&["remove", "198.51.100.7"]);
    assert_eq!(again.status.code(), Some(2), "{}", text(&again));

    let audit: Value = serde_json::from_slice(&w.cli(&["audit", "--json"]).stdout).unwrap();
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["removed", "added", "refreshed", "added"]);
}

#[tokio::test]
async fn bad_input_exits_2_and_changes_nothing() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    w.hand_rule(&group, "192.0.2.10/32", 80, "office VPN").await;
    let full = w.group(true, &[("WhitelistPorts", "alb")]).await;
    for i in 0..59 {
        w.hand_rule(&full, &format!("192.0.2.{i}/32"), 443, "hand").await;
    }
    let before = (w.rules(&group).await, w.rules(&full).await);

    let long = "x".repeat(201);
    // Bad input is a usage error (2); what an environment's policy refuses is a refusal (3).
    let cases: Vec<(Vec<&str>, &str, i32)> = vec![
        (vec!["add", "1.2.3"], "invalid address", 2),
        (vec!["add", "198.51.100.300"], "invalid address", 2),
        (vec!["add", "1.2.3.4/33"], "at most 32", 2),
        (vec!["add", "0.0.0.0/0"], "whole internet", 3),
        (vec!["add", "::/0"], "whole internet", 3),
        (vec!["add", "10.0.0.0/8"], "too wide", 3),
        (vec!["add", "2001:db8::/32"], "too wide", 3),
        (vec!["add", "198.51.100.7", "--ttl", "0m"], "invalid TTL", 2),
        (vec!["add", "198.51.100.7", "--ttl", "1441m"], "invalid TTL", 2),
        (vec!["add", "198.51.100.7", "--ttl", "366d"], "invalid TTL", 2),
        (vec!["add", "198.51.100.7", "--ttl=7x"], "invalid TTL", 2),
        (vec!["add", "198.51.100.7", "--env", "nope"], "unknown environment", 2),
        (vec!["add", "198.51.100.7", "--env", "bad name!"], "invalid environment name", 2),
        (vec!["add", "198.51.100.7", "--description", &long], "201 characters", 2),
        (vec!["add", "198.51.100.7", "--description", "bell\u{7}"], "control character", 2),
        (vec!["list", "--env", "nope"], "unknown environment", 2),
        (vec!["refresh", "--env", "nope"], "unknown environment", 2),
        (vec!["remove", "198.51.100.7", "--env", "nope"], "unknown environment", 2),
        (vec!["add"], "IP|CIDR", 2),
        (vec!["frobnicate"], "unrecognized subcommand", 2),
    ];
    for (args, expected, code) in &cases {
        let out = w.cli(args);
        assert_eq!(out.status.code(), Some(*code), "{args:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expected), "{args:?}: expected {expected:?} in {stderr}");
    }
    // A full group refuses the grant before any call, naming the group: a refusal, exit 3.
    let out = w.cli(&["add", "198.51.100.7"]);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&full) && stderr.contains("full"), "{stderr}");

    assert_eq!(w.grants(), serde_json::json!([]));
    assert_eq!((w.rules(&group).await, w.rules(&full).await), before);
}

#[tokio::test]
async fn drift_is_repaired_and_a_second_refresh_changes_nothing() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    ok(&w.cli(&["add", "198.51.100.7", "--ttl", "1h", "--description", "Home office"]));
    w.delete_rule(&group, "198.51.100.7/32", 443).await;
    w.hand_rule(&group, "203.0.113.99/32", 80, "pc:dev ghost: no grant").await;
    w.hand_rule(&group, "192.0.2.10/32", 80, "hand made").await;

    let out = w.cli(&["refresh", "--json"]);
    ok(&out);
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["authorized"].as_u64(), report["revoked"].as_u64()), (Some(1), Some(1)), "{report}");
    assert_eq!(report["unowned_left_alone"], 1);
    assert_eq!(
        w.rules(&group).await,
        vec![
            ("192.0.2.10/32".into(), 80, Some("hand made".into())),
            ("198.51.100.7/32".into(), 80, Some(HOME.into())),
            ("198.51.100.7/32".into(), 443, Some(HOME.into())),
        ]
    );
    let again: Value = serde_json::from_slice(&w.cli(&["refresh", "--json"]).stdout).unwrap();
    assert_eq!(
        (again["authorized"].as_u64(), again["revoked"].as_u64(), again["updated"].as_u64()),
        (Some(0), Some(0), Some(0)),
        "{again}"
    );
    let audit: Value = serde_json::from_slice(&w.cli(&["audit", "--json"]).stdout).unwrap();
    assert_eq!(audit[0]["action"], "drift-repaired", "{audit}");
}

#[tokio::test]
async fn a_store_without_history_revokes_no_owned_rule() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    w.hand_rule(&group, "198.51.100.7/32", 80, "pc:dev alice: from another store").await;
    let out = w.cli(&["refresh"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("left in place"), "{}", text(&out));
    assert_eq!(w.keys(&group).await, [("198.51.100.7/32".to_string(), 80)].into());
}

#[tokio::test]
async fn dry_run_is_the_default_and_changes_nothing() {
    let w = World::new().await;
    let group = w.group(false, &[]).await;
    let mut cmd = w.command(&["add", "198.51.100.7", "--ttl", "5m"]);
    cmd.env_remove("PORTCULLIS_FIREWALL")
        .env_remove("ENABLE_SG_DISCOVERY")
        .env("MANAGED_SECURITY_GROUP_IDS", format!("[\"{group}\"]"));
    let out = cmd.output().unwrap();
    ok(&out);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("DRY RUN - nothing is changed"), "{stdout}");
    assert!(stdout.contains(&"AuthorizeSecurityGroupIngress tcp:443 198.51.100.7/32 \"pc:dev tester:\"".to_string()), "{stdout}");
    assert!(w.rules(&group).await.is_empty());
}

#[tokio::test]
async fn init_is_idempotent_and_private_and_bad_config_names_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new().await;
    ok(&w.cli(&["init"]));
    ok(&w.cli(&["init"]));
    assert_eq!(std::fs::metadata(w.store_path()).unwrap().permissions().mode() & 0o777, 0o600);
    let config = w.dir.path().join("bad.toml");
    std::fs::write(&config, "[environments.dev]\nmax_ttl = \"2y\"\n").unwrap();
    let out = w.cli(&["--config", config.to_str().unwrap(), "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("environments.dev.max_ttl"), "{}", text(&out));
}

#[tokio::test]
async fn a_store_others_can_read_is_named_and_init_makes_it_private() {
    use std::os::unix::fs::PermissionsExt;
    let w = World::new().await;
    ok(&w.cli(&["init"]));
    for suffix in ["", "-wal", "-shm"] {
        let path = format!("{}{suffix}", w.store_path().display());
        if std::path::Path::new(&path).exists() {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
    }
    let out = w.cli(&["list"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("readable by others"), "{}", text(&out));
    let out = w.cli(&["init"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("it is now 0600"), "{}", text(&out));
    assert_eq!(std::fs::metadata(w.store_path()).unwrap().permissions().mode() & 0o777, 0o600);
    let out = w.cli(&["list"]);
    assert!(!String::from_utf8_lossy(&out.stderr).contains("readable by others"), "{}", text(&out));
}

#[tokio::test]
async fn an_endless_config_file_is_refused_without_reading_it_all() {
    let w = World::new().await;
    let big = w.dir.path().join("big.toml");
    std::fs::write(&big, format!("# {}\n", "x".repeat(2 * 1024 * 1024))).unwrap();
    // A FIFO nobody writes to: opening it for reading would wait for a writer forever.
    let fifo = w.dir.path().join("fifo.toml");
    assert!(std::process::Command::new("mkfifo").arg(&fifo).status().unwrap().success());
    let cases = [
        ("/dev/zero".to_string(), "is not a regular file"),
        (fifo.display().to_string(), "is not a regular file"),
        (big.display().to_string(), "larger than 1024 KiB"),
    ];
    for (path, says) in cases {
        let mut cmd = w.command(&["--config", &path, "list"]);
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(60), tokio::task::spawn_blocking(move || cmd.output().unwrap()))
                .await
                .expect("refused at once")
                .unwrap();
        assert_eq!(out.status.code(), Some(2), "{path}: {}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains(says), "{path}: {}", text(&out));
    }
}

#[tokio::test]
async fn without_user_the_os_account_acts_and_help_names_no_seed() {
    let w = World::new().await;
    let mut cmd = w.command(&["add", "198.51.100.61", "--ttl", "5m"]);
    cmd.env_remove("USER").env_remove("LOGNAME");
    ok(&cmd.output().unwrap());
    let account = std::process::Command::new("id").arg("-un").output().unwrap();
    let account = String::from_utf8_lossy(&account.stdout).trim().to_string();
    assert_eq!(w.grants()[0]["owner"]["name"], account.as_str(), "the OS account, not \"unknown\"");
    for args in [&["--help"][..], &["adopt", "--help"], &["invoke", "--help"], &["guard", "--help"], &["approve", "--help"]] {
        let help = String::from_utf8_lossy(&w.cli(args).stdout).to_string();
        assert!(!help.to_lowercase().contains("seed 0"), "{args:?} speaks of our seed numbering:\n{help}");
    }
}

#[tokio::test]
async fn an_empty_as_is_refused_not_replaced_by_the_os_user() {
    let w = World::new().await;
    let out = w.cli(&["add", "198.51.100.60", "--as", ""]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--as needs a user name"), "{}", text(&out));
    let out = w.cli(&["add", "198.51.100.60", "--as", "ev\u{202E}il"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invisible formatting"), "{}", text(&out));
    assert!(w.grants().as_array().unwrap().is_empty(), "nothing was added");
}

#[tokio::test]
async fn refresh_shows_progress_on_a_terminal_and_nothing_extra_otherwise() {
    let w = World::new().await;
    let groups = [w.group(true, &[]).await, w.group(true, &[]).await, w.group(true, &[]).await];
    ok(&w.cli(&["add", "198.51.100.62", "--ttl", "1h"]));
    let drift = || async {
        for g in &groups {
            w.delete_rule(g, "198.51.100.62/32", 443).await;
        }
    };
    const PROGRESS: &str = "security groups changed: 3/3";

    // At a terminal: the repair of three groups is counted on one line, then cleared.
    drift().await;
    let shown = w.on_terminal(&["refresh"], &[]);
    assert!(shown.contains(PROGRESS), "{shown}");
    assert!(shown.contains("3 groups: authorized 3"), "{shown}");

    // --json at a terminal, and text without one: nothing but the answer.
    drift().await;
    let shown = w.on_terminal(&["--json", "refresh"], &[]);
    assert!(!shown.contains("security groups changed"), "{shown}");
    assert!(shown.contains("\"authorized\": 3"), "{shown}");
    drift().await;
    let out = w.cli(&["refresh"]);
    ok(&out);
    assert_eq!(String::from_utf8_lossy(&out.stderr), "", "no terminal, no progress");
    assert!(String::from_utf8_lossy(&out.stdout).contains("authorized 3"), "{}", text(&out));
}

#[tokio::test]
async fn a_closed_stdout_ends_the_output_not_the_program() {
    // `portcullis audit | head -2`: the reader goes away. Here it is gone before the first
    // write, so every command below meets the closed pipe, whatever the timing.
    let w = World::new().await;
    let group = w.group(false, &[]).await;
    ok(&w.cli(&["add", "198.51.100.7", "--ttl", "5m"]));
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    for args in [&["audit"][..], &["audit", "--json"], &["list"], &["list", "--all", "--json"]] {
        let out = w.command(args).stdout(closed()).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{args:?}: {stderr}");
    }
    // The dry-run firewall's printout ends too; the grant is stored all the same.
    let mut cmd = w.command(&["add", "198.51.100.8", "--ttl", "5m"]);
    cmd.env_remove("PORTCULLIS_FIREWALL")
        .env_remove("ENABLE_SG_DISCOVERY")
        .env("MANAGED_SECURITY_GROUP_IDS", format!("[\"{group}\"]"));
    let out = cmd.stdout(closed()).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let grants = w.grants();
    assert_eq!(grants.as_array().unwrap().len(), 2, "{grants}");
}

/// `refresh --dry-run`, `sweep`, `audit --before` and a `marker_prefix` of one's own, as a user
/// meets them: a marker of one's own is what is written and the only one taken as ours; a dry
/// run shows the repair and changes nothing; `sweep` revokes and records what expired; audit
/// pages join up without gaps or repeats.
#[tokio::test]
async fn dry_run_refresh_sweep_audit_pages_and_a_marker_of_our_own() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let config = w.dir.path().join("portcullis.toml");
    std::fs::write(&config, "marker_prefix = \"acme\"\n").unwrap();
    let config = config.display().to_string();
    let cli = |args: &[&str]| w.command(args).env("PORTCULLIS_CONFIG", &config).output().unwrap();
    ok(&cli(&["add", "198.51.100.7", "--ttl", "1h", "--description", "Home office"]));
    ok(&cli(&["add", "198.51.100.8", "--ttl", "1h", "--description", "Train"]));
    // Ours under the default prefix is someone else's here, and is left alone.
    w.hand_rule(&group, "203.0.113.9/32", 80, "pc:dev ghost: another deployment").await;
    let ours = "acme:dev tester: Home office".to_string();
    assert!(w.rules(&group).await.contains(&("198.51.100.7/32".into(), 80, Some(ours.clone()))), "{:?}", w.rules(&group).await);

    // Drift, then a dry run: it says what it would repair, and repairs nothing.
    w.delete_rule(&group, "198.51.100.7/32", 443).await;
    let before = w.rules(&group).await;
    let out = cli(&["refresh", "--dry-run"]);
    ok(&out);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("AuthorizeSecurityGroupIngress tcp:443 198.51.100.7/32"), "{said}");
    assert_eq!(w.rules(&group).await, before, "a dry run changed the group");

    // .8 expired an hour early (the store says so): sweep revokes it and records it.
    let db = rusqlite::Connection::open(w.store_path()).unwrap();
    let past = (time::OffsetDateTime::now_utc() - time::Duration::minutes(1)).unix_timestamp() * 1000;
    assert_eq!(db.execute("UPDATE grants SET expires_at_ms = ?1 WHERE cidr = '198.51.100.8/32'", [past]).unwrap(), 1);
    let out = cli(&["sweep", "--json"]);
    ok(&out);
    let swept: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(swept.to_string().contains("198.51.100.8/32"), "{swept}");
    assert!(!w.keys(&group).await.iter().any(|(c, _)| c == "198.51.100.8/32"), "the expired grant's rules stayed");
    assert_eq!(w.grants().as_array().unwrap().len(), 1);
    ok(&cli(&["refresh"]));
    assert_eq!(
        w.rules(&group).await,
        vec![
            ("198.51.100.7/32".into(), 80, Some(ours.clone())),
            ("198.51.100.7/32".into(), 443, Some(ours.clone())),
            ("203.0.113.9/32".into(), 80, Some("pc:dev ghost: another deployment".into())),
        ]
    );

    // The audit in pages of two: each page starts where the last ended, and together they are the whole log.
    let all: Value = serde_json::from_slice(&cli(&["audit", "--json"]).stdout).unwrap();
    let all = all.as_array().unwrap().clone();
    assert!(all.len() >= 3 && all.iter().any(|e| e["action"] == "expired"), "{all:?}");
    let (mut paged, mut before_id) = (Vec::new(), None::<String>);
    for _ in 0..all.len() + 1 {
        let mut args = vec!["audit", "--json", "--limit", "2"];
        if let Some(id) = &before_id {
            args.extend(["--before", id.as_str()]);
        }
        let out = cli(&args);
        ok(&out);
        let page: Vec<Value> = serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone();
        let Some(last) = page.last() else { break };
        before_id = Some(last["id"].to_string().trim_matches('"').to_string());
        assert!(page.len() <= 2);
        paged.extend(page);
    }
    assert_eq!(paged, all, "the pages are the log");
}

/// A first run, tried as a new user would: no target configured, no region. It says so, once
/// each, with what would configure them, and none of the SDK's own diagnostics.
#[tokio::test]
async fn a_first_run_with_nothing_configured_says_what_would_configure_it() {
    let w = World::new().await;
    let mut cmd = w.command(&["add", "203.0.113.7", "--firewall", "aws"]);
    for var in
        ["ENABLE_SG_DISCOVERY", "MANAGED_SECURITY_GROUP_IDS", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED"]
    {
        cmd.env_remove(var);
    }
    // The SDK looks for a region in the instance metadata service, as on a laptop: here one on
    // loopback that refuses the connection.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    cmd.env("AWS_EC2_METADATA_SERVICE_ENDPOINT", format!("http://{closed}"));
    let out = cmd.output().unwrap();
    ok(&out);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("no target:") && stdout.contains("[[environments.<env>.targets]]"), "{stdout}");
    assert!(!stdout.contains("0 groups"), "{stdout}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one line about the region, nothing else: {stderr}");
    assert!(lines[0].contains("no AWS region is configured: set AWS_REGION"), "{stderr}");
    assert!(!stderr.contains("IMDS") && !stderr.contains("FailedToLoadToken"), "{stderr}");
}

/// The authenticating security group tool's rules say when they expire (`expired at …`):
/// `adopt` makes each a grant that expires then, marks the rule, and the sweep revokes one
/// already past its time. A dry run lists them and changes nothing.
#[tokio::test]
async fn adopt_takes_the_connection_tools_rules_as_grants_that_expire_when_they_said() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    // The environment's policy holds grants to a day: a rule claiming three is refused.
    let config = w.dir.path().join("portcullis.toml");
    std::fs::write(&config, "[environments.dev]\nmax_ttl = \"1d\"\n").unwrap();
    let config = config.display().to_string();
    let w_cli = |args: &[&str]| w.command(args).env("PORTCULLIS_CONFIG", &config).output().unwrap();
    let later = time::OffsetDateTime::now_utc() + time::Duration::hours(2);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:6]+0000");
    let said = |at: time::OffsetDateTime| format!("expired at {}", at.format(&format).unwrap());
    w.hand_rule(&group, "198.51.100.20/32", 443, &said(later)).await;
    w.hand_rule(&group, "198.51.100.21/32", 443, &said(time::OffsetDateTime::now_utc() - time::Duration::hours(1))).await;
    w.hand_rule(&group, "198.51.100.22/32", 443, "expired at some point").await;
    w.hand_rule(&group, "198.51.100.23/32", 22, &said(later)).await; // not a managed port
    let too_late = said(time::OffsetDateTime::now_utc() + time::Duration::days(3));
    w.hand_rule(&group, "198.51.100.24/32", 443, &too_late).await;
    let before = w.rules(&group).await;

    let out = w_cli(&["adopt", "--dry-run"]);
    ok(&out);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(shown.contains("198.51.100.20/32 in dev") && shown.contains("198.51.100.21/32 in dev"), "{shown}");
    assert!(shown.contains("expired; the next sweep revokes it"), "{shown}");
    assert!(!shown.contains("198.51.100.22") && !shown.contains("198.51.100.23"), "{shown}");
    assert!(shown.contains("left as it is: 198.51.100.24/32 in dev"), "a time past max_ttl is refused: {shown}");
    assert_eq!(w.rules(&group).await, before, "a dry run changes nothing");
    assert_eq!(w.grants(), serde_json::json!([]));

    ok(&w_cli(&["adopt"]));
    let grants = w.grants();
    let live: Vec<(&str, &str)> =
        grants.as_array().unwrap().iter().map(|g| (g["cidr"].as_str().unwrap(), g["owner"]["name"].as_str().unwrap())).collect();
    assert_eq!(live, [("198.51.100.20/32", "adopted")], "{grants}");
    let expires: time::OffsetDateTime =
        time::OffsetDateTime::parse(grants[0]["expires_at"].as_str().unwrap(), &time::format_description::well_known::Rfc3339)
            .unwrap();
    assert!((expires - later).abs() < time::Duration::milliseconds(1), "expires when its rule said: {expires} vs {later}");
    let rules = w.rules(&group).await;
    assert!(rules.contains(&("198.51.100.20/32".into(), 443, Some("pc:dev adopted:".into()))), "{rules:?}");
    assert!(rules.contains(&("198.51.100.22/32".into(), 443, Some("expired at some point".into()))), "{rules:?}");
    assert!(rules.contains(&("198.51.100.23/32".into(), 22, Some(said(later)))), "{rules:?}");
    assert!(rules.contains(&("198.51.100.24/32".into(), 443, Some(too_late.clone()))), "refused, left unowned: {rules:?}");

    // The one already past its time: the sweep revokes it and records it expired.
    ok(&w_cli(&["sweep"]));
    assert!(!w.keys(&group).await.iter().any(|(c, _)| c == "198.51.100.21/32"), "{:?}", w.rules(&group).await);
    let audit: Value = serde_json::from_slice(&w.cli(&["audit", "--json"]).stdout).unwrap();
    let about = |cidr: &str| -> Vec<String> {
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["cidr"] == cidr)
            .map(|e| e["action"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(about("198.51.100.21/32"), ["expired", "adopted", "added"], "{audit}");
    assert_eq!(about("198.51.100.20/32"), ["adopted", "added"], "{audit}");
}
