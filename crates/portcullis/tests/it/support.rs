use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::{Credentials, Region};
use aws_sdk_ec2::types::{Filter, IpPermission, IpRange, Ipv6Range, Tag};

pub const REGION: &str = "us-east-1";

/// moto's endpoint; the suite runs through `scripts/test`, which starts moto.
pub fn moto() -> String {
    std::env::var("PORTCULLIS_TEST_MOTO")
        .expect("PORTCULLIS_TEST_MOTO is not set: run the suite with scripts/test, which starts moto_server")
}

/// A name no other test (or earlier run against the same moto) uses.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos();
    format!("{prefix}-{}-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_000)
}

pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(moto())
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("test", "test", None, None, "tests"))
        .load()
        .await
}

pub async fn ec2() -> Client {
    Client::new(&sdk_config().await)
}

/// One test's world: a discovery tag of its own, a store file, and helpers on moto.
pub struct World {
    pub ec2: Client,
    pub tag_key: String,
    pub dir: tempfile::TempDir,
}

/// A rule as moto reports it: (cidr, from port, description).
pub type Rule = (String, i32, Option<String>);

impl World {
    pub async fn new() -> World {
        World { ec2: ec2().await, tag_key: unique("pc-test"), dir: tempfile::tempdir().unwrap() }
    }

    pub fn store_path(&self) -> PathBuf {
        self.dir.path().join("portcullis.db")
    }

    /// A new group, tagged for this world's discovery when `managed`.
    pub async fn group(&self, managed: bool, extra_tags: &[(&str, &str)]) -> String {
        let id = self
            .ec2
            .create_security_group()
            .group_name(unique("sg"))
            .description("portcullis test")
            .send()
            .await
            .unwrap()
            .group_id
            .unwrap();
        let mut tags: Vec<(&str, &str)> = extra_tags.to_vec();
        if managed {
            tags.push((&self.tag_key, "true"));
        }
        self.tag(&id, &tags).await;
        id
    }

    pub async fn tag(&self, id: &str, tags: &[(&str, &str)]) {
        if tags.is_empty() {
            return;
        }
        let mut req = self.ec2.create_tags().resources(id);
        for (k, v) in tags {
            req = req.tags(Tag::builder().key(*k).value(*v).build());
        }
        req.send().await.unwrap();
    }

    /// Adds a rule as a person would by hand.
    pub async fn hand_rule(&self, group: &str, cidr: &str, port: i32, description: &str) {
        let mut perm = IpPermission::builder().ip_protocol("tcp").from_port(port).to_port(port);
        if cidr.contains(':') {
            perm = perm.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(cidr).description(description).build());
        } else {
            perm = perm.ip_ranges(IpRange::builder().cidr_ip(cidr).description(description).build());
        }
        self.ec2.authorize_security_group_ingress().group_id(group).ip_permissions(perm.build()).send().await.unwrap();
    }

    pub async fn delete_rule(&self, group: &str, cidr: &str, port: i32) {
        let mut perm = IpPermission::builder().ip_protocol("tcp").from_port(port).to_port(port);
        if cidr.contains(':') {
            perm = perm.ipv6_ranges(Ipv6Range::builder().cidr_ipv6(cidr).build());
        } else {
            perm = perm.ip_ranges(IpRange::builder().cidr_ip(cidr).build());
        }
        self.ec2.revoke_security_group_ingress().group_id(group).ip_permissions(perm.build()).send().await.unwrap();
    }

    /// Every inbound CIDR rule of a group, sorted.
    pub async fn rules(&self, group: &str) -> Vec<Rule> {
        rules_of(&self.ec2, group).await
    }

    /// The (cidr, port) pairs of a group's rules.
    pub async fn keys(&self, group: &str) -> BTreeSet<(String, i32)> {
        self.rules(group).await.into_iter().map(|(c, p, _)| (c, p)).collect()
    }

    /// The environment a child process runs with: nothing from ours but PATH.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("PATH", std::env::var("PATH").unwrap_or_default()),
            ("HOME", self.dir.path().display().to_string()),
            ("USER", "tester".into()),
            ("AWS_ENDPOINT_URL", moto()),
            ("AWS_ACCESS_KEY_ID", "test".into()),
            ("AWS_SECRET_ACCESS_KEY", "test".into()),
            ("AWS_REGION", REGION.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
            ("PORTCULLIS_FIREWALL", "aws".into()),
            ("PORTCULLIS_STORE", format!("sqlite:{}", self.store_path().display())),
            ("ENABLE_SG_DISCOVERY", "true".into()),
            ("SG_DISCOVERY_TAG_KEY", self.tag_key.clone()),
            ("ENVIRONMENT", "dev".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
        cmd.env_clear().envs(self.env()).args(args).current_dir(self.dir.path());
        cmd
    }

    /// Runs the CLI to completion on a pseudo-terminal (util-linux's `script`), as a person at
    /// a terminal would, with `extra_env` besides the world's; returns what the terminal showed
    /// (stdout and stderr together).
    pub fn on_terminal(&self, args: &[&str], extra_env: &[(&str, &str)]) -> String {
        let command = std::iter::once(env!("CARGO_BIN_EXE_portcullis"))
            .chain(args.iter().copied())
            .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
            .collect::<Vec<_>>()
            .join(" ");
        let out = Command::new("script")
            .env_clear()
            .envs(self.env())
            .envs(extra_env.iter().copied())
            .args(["--quiet", "--return", "--command", &command, "/dev/null"])
            .current_dir(self.dir.path())
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "on a terminal: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Grants as `list --all --json` shows them.
    pub fn grants(&self) -> serde_json::Value {
        let out = self.cli(&["list", "--all", "--json"]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

pub fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Polls until `check` holds, failing after `limit`.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !check().await {
        assert!(start.elapsed() < limit, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One request a [`Receiver`] got, and what it answered.
#[derive(Debug, Clone)]
pub struct Received {
    pub path: String,
    pub body: String,
    pub status: u16,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// A canned answer: status, headers, body.
#[derive(Debug, Clone)]
pub struct Canned(pub u16, pub Vec<(&'static str, String)>, pub String);

#[derive(Default)]
struct ReceiverState {
    requests: std::sync::Mutex<Vec<Received>>,
    /// One-shot answers per path prefix, used before the standing ones.
    once: std::sync::Mutex<Vec<(String, Canned)>>,
    standing: std::sync::Mutex<Vec<(String, Canned)>>,
}

/// A loopback HTTP server standing in for Slack (webhook, response_url, Web API): it records
/// every request and answers as the test scripts it (200 "ok" by default).
pub struct Receiver {
    pub base: String,
    state: std::sync::Arc<ReceiverState>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        use axum::extract::{Request, State};
        use axum::response::IntoResponse;
        let state = std::sync::Arc::new(ReceiverState::default());
        async fn answer(State(state): State<std::sync::Arc<ReceiverState>>, req: Request) -> axum::response::Response {
            let path = req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default();
            let body = axum::body::to_bytes(req.into_body(), 1 << 20).await.unwrap();
            let pick = |list: &mut Vec<(String, Canned)>, remove: bool| {
                let i = list.iter().position(|(prefix, _)| path.starts_with(prefix.as_str()))?;
                Some(if remove { list.remove(i).1 } else { list[i].1.clone() })
            };
            let canned = pick(&mut state.once.lock().unwrap(), true)
                .or_else(|| pick(&mut state.standing.lock().unwrap(), false))
                .unwrap_or(Canned(200, vec![], "ok".into()));
            state.requests.lock().unwrap().push(Received {
                path: path.clone(),
                body: String::from_utf8_lossy(&body).into_owned(),
                status: canned.0,
            });
            let mut response = (axum::http::StatusCode::from_u16(canned.0).unwrap(), canned.2).into_response();
            for (k, v) in canned.1 {
                response.headers_mut().insert(k, v.parse().unwrap());
            }
            response
        }
        let app = axum::Router::new().fallback(answer).with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { base, state }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Answers the next request under `prefix` so.
    pub fn once(&self, prefix: &str, canned: Canned) {
        self.state.once.lock().unwrap().push((prefix.into(), canned));
    }

    /// Answers every request under `prefix` so (until changed).
    pub fn always(&self, prefix: &str, canned: Canned) {
        let mut standing = self.state.standing.lock().unwrap();
        standing.retain(|(p, _)| p != prefix);
        standing.push((prefix.into(), canned));
    }

    pub fn requests(&self, prefix: &str) -> Vec<Received> {
        self.state.requests.lock().unwrap().iter().filter(|r| r.path.starts_with(prefix)).cloned().collect()
    }

    /// Waits until at least `n` requests under `prefix` have arrived, and returns them all.
    pub async fn wait_for(&self, prefix: &str, n: usize) -> Vec<Received> {
        eventually(Duration::from_secs(30), &format!("{n} requests to {prefix}"), || async { self.requests(prefix).len() >= n })
            .await;
        self.requests(prefix)
    }
}

/// A slash command's form body, as Slack posts it.
pub fn slash_command(user: (&str, &str), text: &str, response_url: &str) -> String {
    serde_urlencoded::to_string([
        ("token", "unused"),
        ("team_id", "T1"),
        ("channel_id", "C1"),
        ("user_id", user.0),
        ("user_name", user.1),
        ("command", "/infra"),
        ("text", text),
        ("response_url", response_url),
        ("trigger_id", "1.2.3"),
    ])
    .unwrap()
}

/// Posts a form body to `/slack/commands` signed with `secret` at Unix time `at`.
pub async fn post_signed(base: &str, secret: &str, at: i64, body: &str) -> (u16, String) {
    post_signed_to(&format!("{base}/slack/commands"), secret, at, body).await
}

/// Posts a form body to `url` signed as Slack signs its requests.
pub async fn post_signed_to(url: &str, secret: &str, at: i64, body: &str) -> (u16, String) {
    let ts = at.to_string();
    let sig = portcullis_slack::SigningSecret::new(secret).sign(&ts, body.as_bytes());
    let resp = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-slack-request-timestamp", ts)
        .header("x-slack-signature", sig)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// Every inbound CIDR rule (IPv4 and IPv6) of a group, through any region's client, sorted.
pub async fn rules_of(ec2: &aws_sdk_ec2::Client, group: &str) -> Vec<Rule> {
    let out =
        ec2.describe_security_groups().filters(Filter::builder().name("group-id").values(group).build()).send().await.unwrap();
    let mut rules = Vec::new();
    for sg in out.security_groups() {
        for p in sg.ip_permissions() {
            let port = p.from_port().unwrap_or(-1);
            for r in p.ip_ranges() {
                rules.push((r.cidr_ip().unwrap().to_string(), port, r.description().map(str::to_string)));
            }
            for r in p.ipv6_ranges() {
                rules.push((r.cidr_ipv6().unwrap().to_string(), port, r.description().map(str::to_string)));
            }
        }
    }
    rules.sort();
    rules
}

/// A wire-format sample from `fixtures/`.
pub fn fixture(name: &str) -> serde_json::Value {
    let path = format!("{}/../../fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Runs a test with a two-minute limit.
pub async fn within<F: std::future::Future<Output = ()>>(test: F) {
    tokio::time::timeout(Duration::from_secs(120), test).await.expect("the test timed out");
}

/// The value of one sample in Prometheus text: `name` is the metric's name with any labels as
/// written there (`portcullis_reconcile_duration_seconds_count{cause="sweep",outcome="ok"}`), or
/// a name alone, whose samples with any labels are summed. A metric that is not there at all is
/// a failure, never a zero: a renamed metric must not pass as "nothing counted".
pub fn sample(text: &str, name: &str) -> f64 {
    let (bare, labels) = match name.split_once('{') {
        Some((bare, rest)) => (bare, Some(rest.trim_end_matches('}'))),
        None => (name, None),
    };
    let family = bare.trim_end_matches("_count").trim_end_matches("_sum").trim_end_matches("_total");
    assert!(
        text.lines().any(|l| l.starts_with(&format!("# TYPE {family} ")) || l.starts_with(&format!("# TYPE {bare} "))),
        "no metric {bare} in:\n{text}"
    );
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(key, _)| {
            let (key_name, key_labels) = match key.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (*key, ""),
            };
            key_name == bare
                && labels.is_none_or(|want| want.split(',').all(|pair| key_labels.split(',').any(|have| have == pair)))
        })
        .map(|(_, value)| value.parse::<f64>().expect("a sample's value is a number"))
        .sum()
}
