//! `/connection` refresh throughput (`scripts/bench`): 50 concurrent clients, each with its own
//! token and address (sent through a trusted proxy's `X-Forwarded-For`), open once and then
//! POST again and again over loopback against the real router (SQLite store, EC2 on moto).
//! Prints requests per second, latency percentiles, and the EC2 calls the refreshes cost
//! (target: none for an unchanged grant). Asserts nothing about time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::{Credentials, Region};
use portcullis::config::{Config, Overrides};
use portcullis::app::App;
use portcullis::routes::router;
use portcullis::wiring;
use portcullis_aws::Ec2Firewall;
use portcullis_core::{Interface, Role, Timestamp};
use portcullis_engine::SystemClock;
use portcullis_store::{Actor, SqliteStore, Store};

#[path = "common/figures.rs"]
mod figures;
use figures::{ms, percentile};

const CLIENTS: usize = 50;
const REFRESHES_PER_CLIENT: usize = 40;
const REGION: &str = "us-east-1";

#[tokio::main]
async fn main() {
    let Ok(moto) = std::env::var("PORTCULLIS_TEST_MOTO") else {
        println!("/connection on moto: skipped (PORTCULLIS_TEST_MOTO is not set; run scripts/bench)");
        return;
    };
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&moto)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .load()
        .await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let group = ec2
        .create_security_group()
        .group_name(format!("pc-bench-connection-{}", std::process::id()))
        .description("bench")
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        format!(
            "[connection]\ntrusted_proxies = [\"127.0.0.1/32\"]\nrate_limit_per_minute = 100000\n\
             [environments.dev]\n[[environments.dev.targets]]\nregion = \"{REGION}\"\ngroup_ids = [\"{group}\"]\nports = \"tcp:443\"\n"
        ),
    )
    .unwrap();
    let config = Config::load(&Overrides { config_file: Some(path), ..Overrides::default() }, &|_| None).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("p.db")).unwrap());
    let firewall = Arc::new(Ec2Firewall::new(&sdk));
    let clock = Arc::new(SystemClock);
    let engine = Arc::new(wiring::engine_with(&config, store.clone(), firewall.clone(), clock, wiring::notifier(&config)));
    let app = Arc::new(App::new(engine, &config, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router(app).into_make_service_with_connect_info::<SocketAddr>()).await.unwrap() });

    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        let (secret, token) =
            portcullis::auth::issue(&format!("client{i}"), Role::SelfService, Default::default(), Timestamp::now_utc(), None, "bench").unwrap();
        store.create_token(token, &Actor { name: "bench".into(), interface: Interface::Cli }).await.unwrap();
        tokens.push(secret);
    }

    let http = reqwest::Client::new();
    let url = format!("{base}/connection");
    let post = |i: usize| {
        http.post(&url).header("authorization", format!("Bearer {}", tokens[i])).header("x-forwarded-for", format!("198.51.100.{}", i + 1))
    };
    // Open: each client's first POST adds its grant (and costs EC2 calls).
    let start = Instant::now();
    let mut opens = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let request = post(i);
        opens.spawn(async move { request.send().await.unwrap().status().as_u16() });
    }
    let opened = opens.join_all().await;
    assert!(opened.iter().all(|s| *s == 201), "{opened:?}");
    println!("/connection: {CLIENTS} clients open (201) in {:.2?}; EC2 calls {:?}", start.elapsed(), firewall.calls().snapshot());

    // Refresh: every client POSTs again and again.
    let before = firewall.calls().total();
    let start = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let requests: Vec<_> = (0..REFRESHES_PER_CLIENT).map(|_| post(i)).collect();
        clients.spawn(async move {
            let mut latencies = Vec::new();
            for request in requests {
                let sent = Instant::now();
                let status = request.send().await.unwrap().status().as_u16();
                assert_eq!(status, 200, "a refresh answers 200");
                latencies.push(sent.elapsed());
            }
            latencies
        });
    }
    let mut latencies: Vec<Duration> = clients.join_all().await.into_iter().flatten().collect();
    let took = start.elapsed();
    latencies.sort();
    let n = latencies.len();
    println!(
        "/connection refresh: {n} POSTs from {CLIENTS} concurrent clients in {took:.2?}: {:.0} requests/s; latency p50 {}, p99 {}, max {}",
        n as f64 / took.as_secs_f64(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.99)),
        ms(*latencies.last().unwrap()),
    );
    println!("  EC2 calls for those refreshes: {} (target: 0 for an unchanged grant)", firewall.calls().total() - before);
}
