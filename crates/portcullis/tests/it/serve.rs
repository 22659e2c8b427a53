//! `portcullis serve` as a process: HTTP over loopback, real expiry, SIGTERM and SIGKILL.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{World, eventually, text};

/// A running `portcullis serve`, killed when dropped.
pub struct Server {
    pub child: Child,
    pub base: String,
    /// Where its `/metrics` listens, when `PORTCULLIS_METRICS_LISTEN` gave it one.
    pub metrics: Option<String>,
}

impl Server {
    pub fn start(w: &World, extra_env: &[(&str, &str)]) -> Server {
        let mut cmd = w.command(&["serve", "--listen", "127.0.0.1:0"]);
        cmd.envs(extra_env.iter().copied()).stderr(Stdio::piped()).stdout(Stdio::null());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut metrics = None;
        let base = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = rx.recv_timeout(left).expect("serve did not say where it listens");
            if let Some(url) = line.strip_prefix("portcullis metrics on ") {
                metrics = Some(url.trim().to_string());
            }
            if let Some(addr) = line.strip_prefix("portcullis listening on ") {
                break addr.trim().to_string();
            }
        };
        Server { child, base, metrics }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// One sample of its `/metrics` (see [`crate::support::sample`]).
    pub async fn sample(&self, name: &str) -> f64 {
        let url = self.metrics.as_deref().expect("started with PORTCULLIS_METRICS_LISTEN");
        let text = reqwest::get(url).await.unwrap().text().await.unwrap();
        crate::support::sample(&text, name)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Creates a token with the CLI (in the store `extra_env` names, if any) and returns it.
pub fn token(w: &World, extra_env: &[(&str, &str)], args: &[&str]) -> String {
    let mut cmd = w.command(&[&["token", "create"], args].concat());
    cmd.envs(extra_env.iter().copied());
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let token = String::from_utf8(out.stdout).unwrap();
    assert_eq!(token.lines().count(), 1, "the token alone on stdout");
    token.trim().to_string()
}

/// An HTTP client that sends `token` with every request.
pub fn client_with(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    reqwest::Client::builder().default_headers(headers).build().unwrap()
}

/// A client with a new admin token.
pub fn admin(w: &World, extra_env: &[(&str, &str)]) -> reqwest::Client {
    client_with(&token(w, extra_env, &["--user", "admin", "--role", "admin"]))
}

pub fn signal(child: &Child, sig: &str) {
    let status = std::process::Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

#[tokio::test]
async fn http_api_round_trip_with_json_errors_and_graceful_shutdown() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let mut server = Server::start(&w, &[]);
    let http = admin(&w, &[]);

    assert_eq!(reqwest::get(server.url("/healthz")).await.unwrap().status(), 200);
    // /v1 is for admin tokens only.
    assert_eq!(reqwest::get(server.url("/v1/grants")).await.unwrap().status(), 401);
    let self_service = client_with(&token(&w, &[], &["--user", "ci"]));
    assert_eq!(self_service.get(server.url("/v1/grants")).send().await.unwrap().status(), 403);
    assert_eq!(client_with("pct_forged").get(server.url("/v1/grants")).send().await.unwrap().status(), 401);
    let body = json!({"cidr": "198.51.100.7", "ttl": "1h", "description": "Home office"});
    let created = http.post(server.url("/v1/grants")).json(&body).send().await.unwrap();
    assert_eq!(created.status(), 201);
    let refreshed = http.post(server.url("/v1/grants")).json(&body).send().await.unwrap();
    assert_eq!(refreshed.status(), 200);
    assert_eq!(w.keys(&group).await.len(), 2);

    let listed: Value = http.get(server.url("/v1/grants")).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed[0]["cidr"], "198.51.100.7/32");
    assert_eq!(listed[0]["owner"]["id"], "admin", "the token's user acts");
    let status: Value = http.get(server.url("/v1/status")).send().await.unwrap().json().await.unwrap();
    assert!(status["next_expiry"].is_string(), "{status}");

    let errors = [
        (http.post(server.url("/v1/grants")).json(&json!({"cidr": "0.0.0.0/0"})), 400),
        (http.post(server.url("/v1/grants")).json(&json!({"cidr": "198.51.100.8", "env": "nope"})), 404),
        (http.post(server.url("/v1/grants")).header("content-type", "application/json").body("{"), 400),
        (http.post(server.url("/v1/grants")).header("content-type", "application/json").body(vec![b' '; 70 * 1024]), 413),
        (http.delete(server.url("/v1/grants/dev/203.0.113.9")), 404),
        (http.get(server.url("/v1/nothing")), 404),
    ];
    for (request, expected) in errors {
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), expected);
        let body: Value = response.json().await.unwrap();
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{body}");
    }

    let removed = http.delete(server.url("/v1/grants/dev/198.51.100.7%2F32")).send().await.unwrap();
    assert_eq!(removed.status(), 200);
    assert!(w.keys(&group).await.is_empty());
    let audit: Value = http.get(server.url("/v1/audit?env=dev")).send().await.unwrap().json().await.unwrap();
    assert_eq!(audit[0]["action"], "removed");

    stops_cleanly_on(&mut server, "-TERM").await;
}

/// Sends `sig` and waits (up to 30 s) for the server to exit successfully.
async fn stops_cleanly_on(server: &mut Server, sig: &str) {
    signal(&server.child, sig);
    let start = Instant::now();
    loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            assert!(status.success(), "{status:?}");
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "serve did not stop on {sig}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn serve_refuses_a_malformed_listen_address() {
    let w = World::new().await;
    let out = w.cli(&["serve", "--listen", "localhost"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("listen"));
}

#[tokio::test]
async fn a_grant_added_by_the_cli_expires_on_a_running_server() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let _server = Server::start(&w, &[]);
    let out = w.cli(&["add", "198.51.100.7", "--ttl", "1m"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(w.keys(&group).await.len(), 2, "the rule exists when add exits 0");
    let added = Instant::now();
    eventually(Duration::from_secs(120), "the server to revoke the expired grant", || async { w.keys(&group).await.is_empty() })
        .await;
    assert!(added.elapsed() >= Duration::from_secs(55), "revoked before it expired");
    let audit: Value = serde_json::from_slice(&w.cli(&["audit", "--json"]).stdout).unwrap();
    assert_eq!(audit[0]["action"], "expired", "{audit}");
    assert_eq!(w.grants(), json!([]));
}

#[tokio::test]
async fn serve_killed_mid_work_converges_after_restart() {
    let w = World::new().await;
    let group = w.group(true, &[("WhitelistPorts", "nlb")]).await;
    // One admin adds all 40: lift the per-user and rate limits.
    let config = w.dir.path().join("portcullis.toml");
    std::fs::write(&config, "[connection]\nrate_limit_per_minute = 1000\n[environments.dev]\nmax_grants_per_user = 100\n")
        .unwrap();
    let config = config.display().to_string();
    // EC2 through the proxy, so that the second half's applies can be held at the kill.
    let proxy = crate::aws_proxy::start_proxy().await;
    let env = [("PORTCULLIS_CONFIG", config.as_str()), ("AWS_ENDPOINT_URL", proxy.url.as_str())];
    let server = Server::start(&w, &env);
    let http = admin(&w, &env);
    let send = |i: usize| {
        let (http, url) = (http.clone(), server.url("/v1/grants"));
        tokio::spawn(async move {
            let body = json!({"cidr": format!("203.0.113.{i}"), "ttl": "1h"});
            http.post(url).json(&body).send().await.map(|r| r.status().as_u16()).ok()
        })
    };
    let first: Vec<_> = (0..20).map(send).collect();
    let mut acknowledged = BTreeSet::new();
    for (i, task) in first.into_iter().enumerate() {
        assert_eq!(task.await.unwrap(), Some(201), "before the kill, 203.0.113.{i} is added");
        acknowledged.insert(format!("203.0.113.{i}/32"));
    }
    // The second half is stored, and its rules are on their way to EC2 when the process dies.
    proxy.delay_action(Some(("AuthorizeSecurityGroupIngress", Duration::from_secs(120))));
    let second: Vec<_> = (20..40).map(send).collect();
    eventually(Duration::from_secs(60), "all 40 grants to be stored", || async { w.grants().as_array().unwrap().len() == 40 })
        .await;
    let mut server = server;
    signal(&server.child, "-KILL");
    let _ = server.child.wait();
    let mut in_flight = 0;
    for (i, task) in second.into_iter().enumerate() {
        match task.await.unwrap() {
            Some(201) => {
                acknowledged.insert(format!("203.0.113.{}/32", i + 20));
            }
            Some(status) => panic!("203.0.113.{} was answered {status}", i + 20),
            None => in_flight += 1,
        }
    }
    assert!(in_flight > 0, "no request was in flight at the kill: this was a clean restart");
    proxy.delay_action(None);

    let _restarted = Server::start(&w, &env);
    let stored: BTreeSet<String> =
        w.grants().as_array().unwrap().iter().map(|g| g["cidr"].as_str().unwrap().to_string()).collect();
    assert!(acknowledged.is_subset(&stored), "an acknowledged grant was lost");
    let want: BTreeSet<(String, i32)> = stored.iter().map(|c| (c.clone(), 7233)).collect();
    eventually(Duration::from_secs(60), "the restarted server to converge", || async { w.keys(&group).await == want }).await;
    // Every stored grant was recorded once, in the transaction that stored it: the kill neither
    // lost an audit record nor made the restart record a grant again.
    let audit: Value = serde_json::from_slice(&w.cli(&["audit", "--json", "--limit", "1000"]).stdout).unwrap();
    let mut added: Vec<String> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["action"] == "added")
        .map(|e| e["cidr"].as_str().unwrap().to_string())
        .collect();
    added.sort();
    assert_eq!(added, stored.iter().cloned().collect::<Vec<_>>(), "one `added` record per stored grant: {audit}");
}

// Multi-threaded: the receiver must answer the server while this thread waits on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_reads_its_slack_secrets_from_secrets_manager() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let receiver = crate::support::Receiver::start().await;
    let secrets = aws_sdk_secretsmanager::Client::new(&crate::support::sdk_config().await);
    let create = |name: String, value: String| {
        let secrets = secrets.clone();
        async move { secrets.create_secret().name(name).secret_string(value).send().await.unwrap().arn.unwrap() }
    };
    let signing =
        create(crate::support::unique("slack-signing"), format!(r#"{{"signing_secret": "{}"}}"#, crate::slack::SECRET)).await;
    let webhook =
        create(crate::support::unique("slack-webhook"), format!(r#"{{"webhook_url": "{}"}}"#, receiver.url("/webhook"))).await;
    let config = w.dir.path().join("portcullis.toml");
    std::fs::write(&config, format!("[slack]\nresponse_url_prefixes = [\"{}/\"]\n", receiver.base)).unwrap();
    let config = config.display().to_string();
    let mut server = Server::start(
        &w,
        &[("SLACK_SIGNING_SECRET_ARN", &signing), ("SLACK_WEBHOOK_SECRET_ARN", &webhook), ("PORTCULLIS_CONFIG", &config)],
    );

    let body =
        crate::support::slash_command(("U0ALICE", "alice"), "whitelist add 198.51.100.44 --ttl=5m", &receiver.url("/respond"));
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let (status, ack) = crate::support::post_signed(&server.base, crate::slack::SECRET, now, &body).await;
    assert_eq!(status, 200, "{ack}");
    assert!(ack.contains("Adding"), "{ack}");
    let answer = receiver.wait_for("/respond", 1).await;
    assert!(answer[0].body.contains("added to `dev`"), "{:?}", answer[0]);
    let hook = receiver.wait_for("/webhook", 1).await;
    assert!(hook[0].body.contains("IP `198.51.100.44/32` added to `dev` whitelist."), "{:?}", hook[0]);
    assert!(w.keys(&group).await.contains(&("198.51.100.44/32".into(), 443)));
    let http = admin(&w, &[("PORTCULLIS_CONFIG", &config)]);
    let status: Value = http.get(server.url("/v1/status")).send().await.unwrap().json().await.unwrap();
    assert!(status["outbox_pending"].is_u64(), "{status}");

    // The signing secret is rotated: the first request signed with the new one makes the server
    // read the secret again and is accepted; the old secret and a wrong one are refused.
    let rotated = "0123456789abcdef0123456789abcdef";
    secrets
        .put_secret_value()
        .secret_id(&signing)
        .secret_string(format!(r#"{{"signing_secret": "{rotated}"}}"#))
        .send()
        .await
        .unwrap();
    let list = crate::support::slash_command(("U0ALICE", "alice"), "whitelist list", &receiver.url("/respond"));
    let (status, answer) = crate::support::post_signed(&server.base, rotated, now, &list).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("198.51.100.44/32"), "{answer}");
    for old in [crate::slack::SECRET, "a wrong secret"] {
        let (status, _) = crate::support::post_signed(&server.base, old, now, &list).await;
        assert_eq!(status, 401);
    }

    signal(&server.child, "-TERM");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// Counts the announcements starting with `prefix` that a receiver got.
fn announced(receiver: &crate::support::Receiver, prefix: &str) -> usize {
    receiver.requests("/webhook").iter().filter(|r| r.json()["text"].as_str().unwrap_or_default().starts_with(prefix)).count()
}

async fn leads(http: &reqwest::Client, server: &Server) -> bool {
    match http.get(server.url("/v1/status")).send().await {
        Ok(r) => r.json::<Value>().await.map(|s| s["sweeper_lease"] == true).unwrap_or(false),
        Err(_) => false,
    }
}

// Two real `serve` processes on one DynamoDB table: one sweeper, each change once, hand-over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_serve_replicas_on_one_table_sweep_once_and_hand_over() {
    let d = crate::dynamo::DynamoWorld::new().await;
    let group = d.w.group(true, &[]).await;
    d.init();
    let store = format!("dynamodb:{}", d.template);
    let webhook = d.receiver.url("/webhook");
    // Both replicas reach AWS through the proxy, which applies DynamoDB's calls one at a time as
    // DynamoDB does (moto's own server does not lock its transactions).
    let proxy = crate::aws_proxy::start_proxy().await;
    let env: [(&str, &str); 4] = [
        ("PORTCULLIS_STORE", &store),
        ("SLACK_WEBHOOK_URL", &webhook),
        ("AWS_ENDPOINT_URL", &proxy.url),
        ("PORTCULLIS_METRICS_LISTEN", "127.0.0.1:0"),
    ];
    let a = Server::start(&d.w, &env);
    let b = Server::start(&d.w, &env);
    let http = admin(&d.w, &env);
    eventually(Duration::from_secs(60), "one replica to hold the sweeper lease", || async {
        leads(&http, &a).await || leads(&http, &b).await
    })
    .await;
    let (a_leads, b_leads) = (leads(&http, &a).await, leads(&http, &b).await);
    assert!(a_leads != b_leads, "exactly one replica sweeps");
    let (leader, follower) = if a_leads { (a, b) } else { (b, a) };

    let add = |ip: &'static str| {
        let (http, url) = (http.clone(), follower.url("/v1/grants"));
        async move {
            let resp = http.post(url).json(&serde_json::json!({"cidr": ip, "ttl": "1m"})).send().await.unwrap();
            assert_eq!(resp.status().as_u16(), 201, "{}", resp.text().await.unwrap());
        }
    };
    add("203.0.113.50").await;
    let rules = w_rules(&d, &group).await;
    assert_eq!(rules, [("203.0.113.50/32".to_string(), 80), ("203.0.113.50/32".to_string(), 443)], "on the groups once");

    eventually(Duration::from_secs(120), "the expiry to be revoked and announced", || async {
        announced(&d.receiver, ":hourglass:") >= 1 && d.w.rules(&group).await.is_empty()
    })
    .await;

    // Only the leader swept: the follower has expired nothing and run no sweep. (The announcement
    // counts below would be the same if both had: `expire` is exactly-once by contract.)
    assert!(leader.sample(EXPIRIES).await >= 1.0, "the leader's expiry is counted where the check can see it");
    assert_eq!(follower.sample(EXPIRIES).await, 0.0, "the follower expired a grant");
    assert_eq!(follower.sample(SWEEPS).await, 0.0, "the follower swept");

    // The leader dies without letting go: the follower takes over once the lease lapses.
    signal(&leader.child, "-KILL");
    eventually(Duration::from_secs(60), "the lease to be handed over", || async { leads(&http, &follower).await }).await;
    add("203.0.113.51").await;
    eventually(Duration::from_secs(120), "the new leader's expiry", || async {
        announced(&d.receiver, ":hourglass:") >= 2 && d.w.rules(&group).await.is_empty()
    })
    .await;
    // Count once the stream is read past the second expiry's REMOVE (see `stream_barrier`).
    d.stream_barrier("198.51.100.99/32").await;
    eventually(Duration::from_secs(60), "the barrier's removal announced", || async {
        crate::dynamo::passed_barrier(&d.announced(), "198.51.100.99/32")
    })
    .await;
    assert_eq!(announced(&d.receiver, ":hourglass:"), 2, "each expiry announced once");
    assert_eq!(announced(&d.receiver, ":white_check_mark:"), 2, "each add announced once");
    assert_eq!(d.announced().len(), 5, "two adds, two expiries and the barrier: {:?}", d.announced());
    drop(leader);
}

/// Expired grants whose lag was measured, and the sweeper's applies.
const EXPIRIES: &str = "portcullis_expiry_lag_seconds_count";
const SWEEPS: &str = "portcullis_reconcile_duration_seconds_count{cause=\"sweep\"}";

async fn w_rules(d: &crate::dynamo::DynamoWorld, group: &str) -> Vec<(String, i32)> {
    d.w.rules(group).await.into_iter().map(|(c, p, _)| (c, p)).collect()
}

/// Sends raw bytes and reads what comes back until the server closes or answers, within 10 s.
async fn raw_exchange(addr: &str, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                        break;
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read).await.expect("the server answers or closes; it does not wait forever");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_or_oversized_requests_are_cut_off_and_every_error_is_json() {
    let w = World::new().await;
    let config = w.dir.path().join("http.toml");
    std::fs::write(&config, "[http]\nheader_read_timeout_secs = 1\nbody_read_timeout_secs = 1\n").unwrap();
    let server = Server::start(&w, &[("PORTCULLIS_CONFIG", config.to_str().unwrap())]);
    let addr = server.base.trim_start_matches("http://").to_string();

    // Headers that never end: the connection is closed after the header timeout.
    let answer = raw_exchange(&addr, b"POST /connection HTTP/1.1\r\nHost: x\r\n").await;
    assert!(!answer.contains("HTTP/1.1 2"), "{answer}");
    // A 10 GB Content-Length with a 2-byte body: 413 at once, nothing read.
    let answer = raw_exchange(&addr, b"POST /connection HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000000\r\n\r\n{}").await;
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains(r#""code":"body_too_large""#), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "the unread connection is not offered for reuse: {answer}"
    );
    // A body that stalls: 408 after the body timeout.
    let answer = raw_exchange(&addr, b"POST /connection HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{}").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains(r#""code":"request_timeout""#), "{answer}");

    // Every error has the one JSON shape, whoever made it.
    let http = admin(&w, &[("PORTCULLIS_CONFIG", config.to_str().unwrap())]);
    let big = "x".repeat(70 * 1024);
    for (what, response, status) in [
        ("405", reqwest::Client::new().put(server.url("/connection")).send().await.unwrap(), 405),
        ("bad query", http.get(server.url("/v1/grants?all=maybe")).send().await.unwrap(), 400),
        ("duplicate query key", http.get(server.url("/v1/grants?env=dev&env=dev")).send().await.unwrap(), 400),
        (
            "413 on /connection",
            reqwest::Client::new().post(server.url("/connection")).body(big.clone()).send().await.unwrap(),
            413,
        ),
        (
            "413 on /slack/commands",
            reqwest::Client::new().post(server.url("/slack/commands")).body(big.clone()).send().await.unwrap(),
            413,
        ),
        ("slack off", reqwest::Client::new().post(server.url("/slack/commands")).body("x").send().await.unwrap(), 503),
    ] {
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(body["error"]["code"].is_string() && body["error"]["message"].is_string(), "{what}: {body}");
    }
}

/// Finding 10: every answer, on both listeners, says `nosniff`; both listeners refuse a request
/// whose headers are larger than 64 KiB before any handler sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answer_says_nosniff_and_both_listeners_bound_header_size() {
    let w = World::new().await;
    let server = Server::start(&w, &[("PORTCULLIS_METRICS_LISTEN", "127.0.0.1:0")]);
    let metrics = server.metrics.clone().expect("the metrics listener");
    let http = reqwest::Client::new();
    let answers = [
        server.url("/healthz"),
        server.url("/v1/status"),
        server.url("/openapi.json"),
        server.url("/"),
        server.url("/console/console.js"),
        server.url("/no/such/thing"),
        server.url("/connection"),
        metrics.clone(),
        metrics.replace("/metrics", "/other"),
    ];
    for url in answers {
        let response = http.get(&url).send().await.unwrap();
        let sniff = response.headers().get("x-content-type-options").map(|v| v.to_str().unwrap().to_string());
        assert_eq!(sniff.as_deref(), Some("nosniff"), "{url} ({})", response.status());
    }
    let big = "x".repeat(200 * 1024);
    for url in [server.url("/healthz"), metrics] {
        let answered = http.get(&url).header("x-big", &big).send().await;
        let status = answered.as_ref().map(|r| r.status().as_u16()).ok();
        assert!(status.is_none() || status == Some(431), "{url}: a 200 KB header was answered {status:?}");
    }
}

/// A running `serve` repairs drift on its own, every `reconcile_interval_secs`, with no request
/// to prompt it; and Ctrl-C (SIGINT) stops it cleanly, as SIGTERM does.
#[tokio::test]
async fn serve_repairs_drift_on_its_own_interval_and_stops_on_sigint() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let config = w.dir.path().join("portcullis.toml");
    std::fs::write(&config, "reconcile_interval_secs = 1\n").unwrap();
    let config = config.display().to_string();
    let env = [("PORTCULLIS_CONFIG", config.as_str()), ("PORTCULLIS_METRICS_LISTEN", "127.0.0.1:0")];
    let out = w.command(&["add", "198.51.100.7", "--ttl", "1h"]).env("PORTCULLIS_CONFIG", &config).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let mut server = Server::start(&w, &env);
    eventually(Duration::from_secs(30), "the sweeper lease (periodic reconciles run under it)", || async {
        server.sample("portcullis_sweeper_lease_held").await == 1.0
    })
    .await;
    w.delete_rule(&group, "198.51.100.7/32", 443).await;
    eventually(Duration::from_secs(30), "the periodic reconcile to put the rule back", || async {
        w.keys(&group).await.contains(&("198.51.100.7/32".to_string(), 443))
    })
    .await;
    assert!(server.sample("portcullis_reconcile_duration_seconds_count{cause=\"periodic\"}").await >= 1.0);
    let audit: Value = serde_json::from_slice(&w.cli(&["audit", "--json"]).stdout).unwrap();
    assert_eq!(audit[0]["action"], "drift-repaired", "{audit}");

    stops_cleanly_on(&mut server, "-INT").await;
}
