//! `/connection` under load (`scripts/bench`): 50 concurrent clients, each with its own token
//! and address (sent through a trusted proxy's `X-Forwarded-For`), open at the same moment on
//! three groups (tcp 7233, so fifty addresses fit the 60-rule quota), then POST again and again
//! over loopback against the real router (SQLite store, EC2 on moto). Prints the opens' latency
//! and EC2 calls beside the figures measured before applies were coalesced, then refresh
//! throughput and what the refreshes cost (target: no EC2 call). Asserts nothing about time.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::{Credentials, Region};
use portcullis::app::App;
use portcullis::config::{Config, Overrides};
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
const GROUPS: usize = 3;

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
    let mut groups = Vec::new();
    for g in 0..GROUPS {
        let name = format!("pc-bench-connection-{}-{g}", std::process::id());
        groups.push(ec2.create_security_group().group_name(name).description("bench").send().await.unwrap().group_id.unwrap());
    }
    let ids = groups.iter().map(|g| format!("\"{g}\"")).collect::<Vec<_>>().join(", ");

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        format!(
            "[connection]\ntrusted_proxies = [\"127.0.0.1/32\"]\nrate_limit_per_minute = 100000\n\
             [environments.dev]\nmax_grants_per_user = 100\n[[environments.dev.targets]]\nregion = \"{REGION}\"\ngroup_ids = [{ids}]\nports = \"tcp:7233\"\n"
        ),
    )
    .unwrap();
    let config = Config::load(&Overrides { config_file: Some(path), ..Overrides::default() }, &|_| None).unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("p.db")).unwrap());
    let firewall = Arc::new(Ec2Firewall::new(&sdk));
    let clock = Arc::new(SystemClock);
    let engine = Arc::new(wiring::builder(&config, store.clone(), firewall.clone(), clock, wiring::notifier(&config)).build());
    let app = Arc::new(App::new(engine, &config, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        async move { axum::serve(listener, router(app).into_make_service_with_connect_info::<SocketAddr>()).await.unwrap() },
    );

    let mut tokens = Vec::new();
    for i in 0..CLIENTS {
        let (secret, token) = portcullis::auth::issue(
            &format!("client{i}"),
            Role::SelfService,
            Default::default(),
            Timestamp::now_utc(),
            None,
            "bench",
        )
        .unwrap();
        store.create_token(token, &Actor { name: "bench".into(), interface: Interface::Cli }).await.unwrap();
        tokens.push(secret);
    }

    let http = reqwest::Client::new();
    let url = format!("{base}/connection");
    let post = |i: usize| {
        http.post(&url)
            .header("authorization", format!("Bearer {}", tokens[i]))
            .header("x-forwarded-for", format!("198.51.100.{}", i + 1))
    };
    // Open: each client's first POST adds its grant, all at the same moment.
    let start = Instant::now();
    let mut opens = tokio::task::JoinSet::new();
    for i in 0..CLIENTS {
        let request = post(i);
        opens.spawn(async move {
            let sent = Instant::now();
            let status = request.send().await.unwrap().status().as_u16();
            (status, sent.elapsed())
        });
    }
    let opened = opens.join_all().await;
    let took = start.elapsed();
    let answered_201 = opened.iter().filter(|(s, _)| *s == 201).count();
    let mut open_latencies: Vec<Duration> = opened.iter().map(|(_, l)| *l).collect();
    open_latencies.sort();
    let calls = firewall.calls();
    println!("/connection: {CLIENTS} concurrent first opens on {GROUPS} groups, in {took:.2?}");
    println!("  {:<26} {:>22} {:>26}", "", "before (issue 15)", "now");
    println!("  {:<26} {:>22} {:>26}", "answered 201", "44-47 of 50", format!("{answered_201} of {CLIENTS}"));
    println!(
        "  {:<26} {:>22} {:>26}",
        "latency p50 / p99 / max",
        "11.7-16 s / - / 14-24 s",
        format!(
            "{} / {} / {}",
            ms(percentile(&open_latencies, 0.5)),
            ms(percentile(&open_latencies, 0.99)),
            ms(*open_latencies.last().unwrap())
        )
    );
    println!(
        "  {:<26} {:>22} {:>26}",
        "AuthorizeSecurityGroupIngress",
        "1,600-2,700",
        calls.get("AuthorizeSecurityGroupIngress")
    );
    println!("  {:<26} {:>22} {:>26}", "DescribeSecurityGroups", "50", calls.get("DescribeSecurityGroups"));
    assert_eq!(answered_201, CLIENTS, "{opened:?}");

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
