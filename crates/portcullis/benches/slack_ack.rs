//! Slack acknowledgement latency (`scripts/bench`): 200 concurrent signed `/infra whitelist add`
//! commands against a running `portcullis serve` (SQLite store, dry-run firewall), each timed
//! from send to Slack's HTTP answer; then how long until every final answer reached its
//! `response_url` (a loopback receiver). Prints figures; asserts nothing about time.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use portcullis_slack::SigningSecret;

#[path = "common/figures.rs"]
mod figures;
use figures::{ms, percentile};

const SECRET: &str = "bench-signing-secret";
const COMMANDS: usize = 200;

#[tokio::main]
async fn main() {
    // The response_url receiver.
    let answered = Arc::new(AtomicUsize::new(0));
    let counter = answered.clone();
    let receiver = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let receiver_base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, receiver).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("portcullis.toml");
    std::fs::write(&config, format!("[slack]\nresponse_url_prefixes = [\"{receiver_base}/\"]\n")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("PORTCULLIS_CONFIG", &config)
        .env("PORTCULLIS_STORE", format!("sqlite:{}", dir.path().join("p.db").display()))
        .env("SLACK_SIGNING_SECRET", SECRET)
        .env("LOG_LEVEL", "error")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let base = loop {
        let line = lines.next().expect("serve exited").unwrap();
        if let Some(addr) = line.strip_prefix("portcullis listening on ") {
            break addr.trim().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));

    let secret = SigningSecret::new(SECRET);
    let client = reqwest::Client::new();
    let url = format!("{base}/slack/commands");
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now();
    for i in 0..COMMANDS {
        let body = serde_urlencoded::to_string([
            ("command", "/infra".to_string()),
            ("text", format!("whitelist add 198.51.{}.{} --ttl=1h --description='bench {i}'", i / 250, i % 250 + 1)),
            ("user_id", format!("U{i:08}")),
            ("user_name", format!("user{i}")),
            ("response_url", format!("{receiver_base}/respond/{i}")),
        ])
        .unwrap();
        let ts = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs().to_string();
        let sig = secret.sign(&ts, body.as_bytes());
        let (client, url) = (client.clone(), url.clone());
        tasks.spawn(async move {
            let sent = Instant::now();
            let resp = client
                .post(&url)
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-slack-request-timestamp", ts)
                .header("x-slack-signature", sig)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            let text = resp.text().await.unwrap();
            assert!(text.contains("Adding"), "{text}");
            sent.elapsed()
        });
    }
    let mut latencies = Vec::with_capacity(COMMANDS);
    while let Some(t) = tasks.join_next().await {
        latencies.push(t.unwrap());
    }
    let acked = start.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    while answered.load(Ordering::SeqCst) < COMMANDS && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let finished = start.elapsed();
    latencies.sort();
    println!("Slack acknowledgement latency, {COMMANDS} concurrent signed `add` commands (dry-run firewall, SQLite):");
    println!(
        "  p50 {}  p99 {}  max {}  (all acknowledged after {})",
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
        ms(acked)
    );
    println!("  final answers on response_url: {}/{COMMANDS} after {}", answered.load(Ordering::SeqCst), ms(finished));
    let _ = child.kill();
    let _ = child.wait();
}
