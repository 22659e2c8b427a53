//! `POST|DELETE /connection` over real HTTP on loopback: EC2 in two regions and STS from moto,
//! tokens in SQLite, time on a manual clock.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_ec2::config::Region;
use portcullis::app::App;
use portcullis::auth::iam_header;
use portcullis::config::{Config, Overrides};
use portcullis::routes::router;
use portcullis::wiring;
use portcullis_aws::Ec2Firewall;
use portcullis_aws::iam::{IamLogin, sign_with};
use portcullis_core::{Environment, Interface, Role, Timestamp};
use portcullis_engine::{Clock, Engine, ManualClock};
use portcullis_store::{Actor, SqliteStore, Store};
use serde_json::Value;
use tokio::sync::watch;

use crate::serve::{Server, signal, token};
use crate::support::{REGION, World, eventually, sdk_config, text, unique};

pub const WEST: &str = "us-west-2";
const SERVER_ID: &str = "portcullis.test";

async fn ec2_in(region: &str) -> aws_sdk_ec2::Client {
    let config = aws_sdk_ec2::config::Builder::from(&sdk_config().await).region(Region::new(region.to_string())).build();
    aws_sdk_ec2::Client::from_conf(config)
}

/// A security group in `region`.
pub async fn group_in(region: &str) -> String {
    let ec2 = ec2_in(region).await;
    ec2.create_security_group().group_name(unique("sg")).description("portcullis test").send().await.unwrap().group_id.unwrap()
}

/// Rules of a group in `region`, as (cidr, port).
pub async fn keys_in(region: &str, group: &str) -> Vec<(String, i32)> {
    let ec2 = ec2_in(region).await;
    let out = ec2.describe_security_groups().group_ids(group).send().await.unwrap();
    let mut keys = Vec::new();
    for sg in out.security_groups() {
        for p in sg.ip_permissions() {
            for r in p.ip_ranges() {
                keys.push((r.cidr_ip().unwrap().to_string(), p.from_port().unwrap()));
            }
        }
    }
    keys.sort();
    keys
}

/// An in-process `serve`: the real router with connect info, on a manual clock.
pub struct Conn {
    pub base: String,
    pub engine: Arc<Engine>,
    pub clock: Arc<ManualClock>,
    pub store: Arc<dyn Store>,
    pub app: Arc<App>,
    pub config: Config,
    pub firewall: Arc<Ec2Firewall>,
    _dir: tempfile::TempDir,
}

impl Conn {
    pub async fn start(config_toml: &str) -> Conn {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("portcullis.toml");
        std::fs::write(&path, config_toml).unwrap();
        let overrides = Overrides { config_file: Some(path), ..Overrides::default() };
        let config = Config::load(&overrides, &|_| None).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("portcullis.db")).unwrap());
        let clock = Arc::new(ManualClock::new(Timestamp::now_utc()));
        let firewall = Arc::new(Ec2Firewall::new(&sdk_config().await));
        let mut builder = wiring::builder(&config, store.clone(), firewall.clone(), clock.clone(), wiring::notifier(&config));
        if let Some(settings) = wiring::guard_settings(&config) {
            builder = builder.guard(settings, firewall.clone());
        }
        let engine = Arc::new(builder.build());
        let app = Arc::new(App::new(engine.clone(), &config, None));
        let config = config.clone();
        let served = app.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router(served).into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
        });
        Conn { base, engine, clock, store, app, config, firewall, _dir: dir }
    }

    /// Stores a token and returns its secret.
    pub async fn token(&self, user: &str, role: Role, envs: &[&str], expires_in: Option<time::Duration>) -> (String, String) {
        let now = self.clock.now();
        let envs = envs.iter().map(|e| Environment::parse(e).unwrap()).collect();
        let (secret, token) = portcullis::auth::issue(user, role, envs, now, expires_in.map(|d| now + d), "test").unwrap();
        self.store.create_token(token.clone(), &Actor { name: "test".into(), interface: Interface::Cli }).await.unwrap();
        (secret, token.id)
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        query: &str,
        auth: Option<String>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut request = reqwest::Client::new().request(method, format!("{}/connection{query}", self.base));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// A `/v1` request with a bearer token and an optional JSON body.
    pub async fn v1(&self, method: reqwest::Method, path: &str, secret: &str, body: Option<Value>) -> (u16, Value) {
        let mut request =
            reqwest::Client::new().request(method, format!("{}/v1{path}", self.base)).header("authorization", bearer(secret));
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    pub async fn post(&self, auth: &str) -> (u16, Value) {
        self.call(reqwest::Method::POST, "", Some(auth.to_string()), &[]).await
    }

    pub async fn delete(&self, auth: &str) -> (u16, Value) {
        self.call(reqwest::Method::DELETE, "", Some(auth.to_string()), &[]).await
    }
}

pub fn bearer(secret: &str) -> String {
    format!("Bearer {secret}")
}

/// Two regions, explicit groups with their own ports, a 2-minute time_to_expire.
fn two_regions(east: &str, west: &str, extra: &str) -> String {
    format!(
        r#"
        {extra}
        [environments.dev]
        time_to_expire = 120
        principals = ["arn:aws:iam::123456789012:user/alice"]
        [[environments.dev.targets]]
        region = "{REGION}"
        group_ids = ["{east}"]
        ports = "alb"
        [[environments.dev.targets]]
        region = "{WEST}"
        group_ids = ["{west}"]
        ports = "nlb"
        [environments.prod]
        "#
    )
}

#[tokio::test]
async fn open_refresh_close_across_two_regions_and_expiry_on_virtual_time() {
    let (east, west) = (group_in(REGION).await, group_in(WEST).await);
    let c = Conn::start(&format!("default_environment = \"dev\"\n{}", two_regions(&east, &west, ""))).await;
    let (secret, _) = c.token("ci", Role::SelfService, &["dev"], None).await;
    let me = "127.0.0.1/32".to_string();

    let (status, body) = c.post(&bearer(&secret)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["result"], "added");
    assert_eq!(body["address"], me);
    assert_eq!(body["expires_in_seconds"], 120);
    let outcomes: Vec<(&str, &str, &str)> = body["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["region"].as_str().unwrap(), t["ports"].as_str().unwrap(), t["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(outcomes, [(REGION, "tcp:80,tcp:443", "authorized"), (WEST, "tcp:7233", "authorized")], "{body}");
    assert_eq!(keys_in(REGION, &east).await, [(me.clone(), 80), (me.clone(), 443)]);
    assert_eq!(keys_in(WEST, &west).await, [(me.clone(), 7233)]);

    // A second POST a minute later renews: 200, expiry two minutes from now.
    c.clock.advance(time::Duration::seconds(60));
    let (status, body) = c.post(&bearer(&secret)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "refreshed");
    assert_eq!(body["expires_in_seconds"], 120, "renewed by each POST");
    assert!(body["targets"].as_array().unwrap().iter().all(|t| t["outcome"] == "unchanged"), "{body}");

    let (status, body) = c.delete(&bearer(&secret)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"], "removed");
    assert!(keys_in(REGION, &east).await.is_empty() && keys_in(WEST, &west).await.is_empty());
    let (status, body) = c.delete(&bearer(&secret)).await;
    assert_eq!(status, 404, "{body}");

    // Open again, and let the sweeper take it away when time_to_expire passes.
    let (stop, rx) = watch::channel(false);
    let sweeper = tokio::spawn({
        let engine = c.engine.clone();
        async move { engine.run_sweeper(rx).await }
    });
    let (status, _) = c.post(&bearer(&secret)).await;
    assert_eq!(status, 201);
    c.clock.advance(time::Duration::seconds(121));
    eventually(Duration::from_secs(30), "the sweeper to revoke the expired access", || async {
        keys_in(REGION, &east).await.is_empty() && keys_in(WEST, &west).await.is_empty()
    })
    .await;
    let audit = c.store.audit(None, 50).await.unwrap();
    assert_eq!(audit.iter().find(|e| e.cidr_label() == "127.0.0.1/32").unwrap().action.as_str(), "expired");
    let _ = stop.send(true);
    let _ = sweeper.await;
}

#[tokio::test]
async fn tokens_are_checked_on_every_request() {
    let (east, west) = (group_in(REGION).await, group_in(WEST).await);
    let c = Conn::start(&format!(
        "default_environment = \"dev\"\n{}",
        two_regions(&east, &west, "[connection]\nrate_limit_per_minute = 4\n")
    ))
    .await;
    let (good, good_id) = c.token("ci", Role::SelfService, &[], None).await;
    let (short, _) = c.token("ci-short", Role::SelfService, &[], Some(time::Duration::minutes(5))).await;
    let (prod_only, _) = c.token("ci-prod", Role::SelfService, &["prod"], None).await;

    let (status, body) = c.call(reqwest::Method::POST, "", None, &[]).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("unauthenticated")), "{body}");
    assert_eq!(c.post(&bearer("pct_unknown")).await.0, 401);
    assert_eq!(c.post("Basic dXNlcjpwYXNz").await.0, 401);
    assert_eq!(c.post(&bearer(&prod_only)).await.0, 403, "a token for prod may not open dev");
    let refused = c.store.audit(None, 10).await.unwrap();
    assert!(refused.iter().any(|e| e.action.as_str() == "refused" && e.actor.as_str().contains("ci-prod")), "{refused:?}");

    assert_eq!(c.post(&bearer(&short)).await.0, 201);
    c.clock.advance(time::Duration::minutes(6));
    let (status, body) = c.post(&bearer(&short)).await;
    assert_eq!(status, 401, "expired: {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("expired"));

    // Revocation takes effect at once in the running server.
    assert_eq!(c.post(&bearer(&good)).await.0, 201);
    c.store.revoke_token(&good_id, &Actor { name: "test".into(), interface: Interface::Cli }, c.clock.now()).await.unwrap();
    let (status, body) = c.post(&bearer(&good)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("revoked"));

    // The environment from the query or the body; both must agree; unknown ones are refused.
    let (other, _) = c.token("ci-any", Role::SelfService, &[], None).await;
    let auth = Some(bearer(&other));
    assert_eq!(c.call(reqwest::Method::POST, "?env=nope", auth.clone(), &[]).await.0, 404);
    let (status, _) = c.call(reqwest::Method::POST, "?env=prod", auth.clone(), &[]).await;
    assert_eq!(status, 201, "prod has no targets, the grant is stored");
    let mismatch = reqwest::Client::new()
        .post(format!("{}/connection?env=dev", c.base))
        .header("authorization", bearer(&other))
        .body(r#"{"env": "prod"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(mismatch.status(), 400);
    let from_body = reqwest::Client::new()
        .delete(format!("{}/connection", c.base))
        .header("authorization", bearer(&other))
        .body(r#"{"env": "prod"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(from_body.status(), 200, "removed from prod, named in the body");

    // Mutating requests are rate-limited per principal: 4 changes a minute here. The 404 and
    // the 400 above were refusals, which do not count: two changes so far, two to go.
    assert_eq!(c.call(reqwest::Method::POST, "?env=prod", auth.clone(), &[]).await.0, 201);
    assert_eq!(c.call(reqwest::Method::DELETE, "?env=prod", auth.clone(), &[]).await.0, 200);
    let limited = reqwest::Client::new()
        .post(format!("{}/connection", c.base))
        .header("authorization", bearer(&other))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().get("retry-after").is_some());
}

fn iam_users() -> Vec<(String, String, String)> {
    std::env::var("PORTCULLIS_TEST_IAM_USERS")
        .expect("PORTCULLIS_TEST_IAM_USERS is not set: run the suite with scripts/test")
        .split(',')
        .map(|u| {
            let mut parts = u.splitn(3, ':');
            (parts.next().unwrap().into(), parts.next().unwrap().into(), parts.next().unwrap().into())
        })
        .collect()
}

fn sign(user: &str, sts: &str, server_id: &str, at: SystemTime) -> IamLogin {
    let (_, key, secret) = iam_users().into_iter().find(|(name, _, _)| name == user).unwrap();
    let credentials = aws_credential_types::Credentials::new(key, secret, None, None, "test");
    sign_with(credentials, "us-east-1", sts, server_id, at).unwrap()
}

#[tokio::test]
async fn iam_logins_are_verified_by_sts_and_bound_to_this_server() {
    let sts = std::env::var("PORTCULLIS_TEST_MOTO_AUTH")
        .expect("PORTCULLIS_TEST_MOTO_AUTH is not set: run the suite with scripts/test");
    let (east, west) = (group_in(REGION).await, group_in(WEST).await);
    let iam = format!("[auth.iam]\nserver_id = \"{SERVER_ID}\"\nsts_endpoint = \"{sts}\"\n");
    let c = Conn::start(&format!("default_environment = \"dev\"\n{}", two_regions(&east, &west, &iam))).await;
    let now = SystemTime::now();

    let (status, body) = c.post(&iam_header(&sign("alice", &sts, SERVER_ID, now))).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["principal"], "arn:aws:iam::123456789012:user/alice");
    let grants = c.store.grants(None).await.unwrap();
    assert_eq!(grants[0].owner.id, "arn:aws:iam::123456789012:user/alice");
    assert_eq!(grants[0].owner.name, "alice");

    // The same signed request again: a replay.
    let login = sign("alice", &sts, SERVER_ID, now + Duration::from_secs(1));
    assert_eq!(c.post(&iam_header(&login)).await.0, 200);
    assert_eq!(c.post(&iam_header(&login)).await.0, 401, "a used login is refused");
    // By another replica too (its own process-local cache has never seen it): the claim is in
    // the store they share.
    let other_replica = Arc::new(App::new(c.engine.clone(), &c.config, None));
    let fresh = sign("alice", &sts, SERVER_ID, now + Duration::from_secs(3));
    assert_eq!(c.post(&iam_header(&fresh)).await.0, 200);
    let replayed = axum::http::Request::post("/connection")
        .header("authorization", iam_header(&fresh))
        .extension(axum::extract::ConnectInfo(std::net::SocketAddr::from(([127, 0, 0, 1], 9))))
        .body(axum::body::Body::empty())
        .unwrap();
    let answer = tower::ServiceExt::oneshot(router(other_replica), replayed).await.unwrap();
    assert_eq!(answer.status(), 401, "a login used at one replica is refused at another");

    // Tampered: a signed header changed after signing; STS refuses the signature.
    let mut tampered = sign("alice", &sts, SERVER_ID, now + Duration::from_secs(2));
    tampered.headers.insert("content-type".into(), "application/x-www-form-urlencoded".into());
    let (status, body) = c.post(&iam_header(&tampered)).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("SignatureDoesNotMatch"), "{body}");
    // Stale: signed ten minutes ago.
    let (status, body) = c.post(&iam_header(&sign("alice", &sts, SERVER_ID, now - Duration::from_secs(600)))).await;
    assert_eq!(status, 401, "{body}");
    // Foreign: bound to another server.
    let (status, body) = c.post(&iam_header(&sign("alice", &sts, "other.example", now))).await;
    assert_eq!(status, 401, "{body}");
    // Another action entirely.
    let mut other = sign("alice", &sts, SERVER_ID, now + Duration::from_secs(3));
    other.body = "Action=GetSessionToken&Version=2011-06-15".into();
    assert_eq!(c.post(&iam_header(&other)).await.0, 401);
    // Valid, but not listed for dev.
    let (status, body) = c.post(&iam_header(&sign("mallory", &sts, SERVER_ID, now))).await;
    assert_eq!(status, 403, "{body}");
    // IAM principals are self-service: no /v1.
    let v1 = reqwest::Client::new()
        .get(format!("{}/v1/grants", c.base))
        .header("authorization", iam_header(&sign("alice", &sts, SERVER_ID, now + Duration::from_secs(4))))
        .send()
        .await
        .unwrap();
    assert_eq!(v1.status(), 403);
}

#[tokio::test]
async fn forwarded_addresses_count_only_from_trusted_proxies_and_a_dead_region_is_reported() {
    let east = group_in(REGION).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = |proxies: &str| {
        format!(
            r#"
            default_environment = "dev"
            [connection]
            trusted_proxies = [{proxies}]
            [environments.dev]
            [[environments.dev.targets]]
            region = "{REGION}"
            group_ids = ["{east}"]
            ports = "tcp:443"
            [[environments.dev.targets]]
            region = "eu-west-1"
            group_ids = ["sg-0123456789abcdef0"]
            endpoint_url = "http://{closed}"
            "#
        )
    };
    let forged = [("x-forwarded-for", "203.0.113.99")];

    let untrusted = Conn::start(&config("")).await;
    let (secret, _) = untrusted.token("ci", Role::SelfService, &[], None).await;
    let (status, body) = untrusted.call(reqwest::Method::POST, "", Some(bearer(&secret)), &forged).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["address"], "127.0.0.1/32", "a forged X-Forwarded-For is ignored");
    // One region unreachable: the other is still updated, the failure named.
    let targets = body["targets"].as_array().unwrap();
    assert!(targets.iter().any(|t| t["region"] == "eu-west-1" && t["outcome"] == "failed"), "{body}");
    assert!(targets.iter().any(|t| t["region"] == REGION && t["outcome"] == "authorized"), "{body}");
    assert!(keys_in(REGION, &east).await.contains(&("127.0.0.1/32".into(), 443)));

    let trusted = Conn::start(&config(r#""127.0.0.1/32""#)).await;
    let (secret, _) = trusted.token("ci", Role::SelfService, &[], None).await;
    let (status, body) = trusted.call(reqwest::Method::POST, "", Some(bearer(&secret)), &forged).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["address"], "203.0.113.99/32", "a trusted proxy's X-Forwarded-For is used");
    assert!(keys_in(REGION, &east).await.contains(&("203.0.113.99/32".into(), 443)));

    // Every target failing is a 502 (the grant stays for the reconcile to retry).
    let dead = Conn::start(&format!(
        "default_environment = \"dev\"\n[environments.dev]\n[[environments.dev.targets]]\nregion = \"eu-west-1\"\ngroup_ids = [\"sg-0123456789abcdef0\"]\nendpoint_url = \"http://{closed}\"\n"
    ))
    .await;
    let (secret, _) = dead.token("ci", Role::SelfService, &[], None).await;
    let (status, body) = dead.post(&bearer(&secret)).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(dead.store.grants(None).await.unwrap().len(), 1);
}

#[tokio::test]
async fn portcullis_open_opens_renews_and_closes() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let server = Server::start(&w, &[]);
    let secret = token(&w, &[], &["--user", "laptop"]);
    let mut open = w.command(&["open", "--server", &server.base, "--renew-every", "1"]);
    open.env("PORTCULLIS_TOKEN", &secret).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let child = open.spawn().unwrap();

    eventually(Duration::from_secs(60), "open to add the rule", || async {
        w.keys(&group).await.contains(&("127.0.0.1/32".into(), 443))
    })
    .await;
    eventually(Duration::from_secs(60), "open to renew", || async {
        let out = w.cli(&["audit", "--json"]);
        let audit: Value = serde_json::from_slice(&out.stdout).unwrap();
        audit.as_array().unwrap().iter().any(|e| e["action"] == "refreshed" && e["actor"] == "laptop")
    })
    .await;
    signal(&child, "-TERM");
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("added 127.0.0.1/32 in dev") && stdout.contains("renewed") && stdout.contains("closed"), "{stdout}");
    assert!(w.keys(&group).await.is_empty(), "closed on SIGTERM");
    assert_eq!(w.grants(), serde_json::json!([]));

    // Clear messages for refusals and an unreachable server.
    let out = w.command(&["open", "--server", &server.base, "--once"]).env("PORTCULLIS_TOKEN", "pct_wrong").output().unwrap();
    assert_eq!(out.status.code(), Some(3), "a refusal: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not authenticated"), "{}", text(&out));
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let out = w
        .command(&["open", "--server", &format!("http://{closed}"), "--once"])
        .env("PORTCULLIS_TOKEN", &secret)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"), "{}", text(&out));
}

/// An API Gateway HTTP API (payload 2.0) request, as Lambda delivers it.
fn api_gateway(method: &str, token: &str, source_ip: &str) -> aws_lambda_events::apigw::ApiGatewayV2httpRequest {
    serde_json::from_value(serde_json::json!({
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": "/connection",
        "rawQueryString": "env=dev",
        "headers": {"authorization": format!("Bearer {token}"), "x-forwarded-for": "192.0.2.1"},
        "requestContext": {
            "accountId": "123456789012", "apiId": "api", "domainName": "x.execute-api.us-east-1.amazonaws.com",
            "domainPrefix": "x", "requestId": "r1", "routeKey": "$default", "stage": "$default",
            "time": "23/Nov/2026:12:00:00 +0000", "timeEpoch": 1795435200000u64,
            "http": {"method": method, "path": "/connection", "protocol": "HTTP/1.1", "sourceIp": source_ip, "userAgent": "test"}
        },
        "isBase64Encoded": false
    }))
    .unwrap()
}

#[tokio::test]
async fn lambda_mode_takes_the_address_from_the_request_context() {
    let east = group_in(REGION).await;
    let c = Conn::start(&format!(
        "default_environment = \"dev\"\n[environments.dev]\n[[environments.dev.targets]]\nregion = \"{REGION}\"\ngroup_ids = [\"{east}\"]\nports = \"tcp:443\"\n"
    ))
    .await;
    let (secret, _) = c.token("ci", Role::SelfService, &[], None).await;
    let answer = portcullis::lambda::handle_http(&router(c.app.clone()), api_gateway("POST", &secret, "203.0.113.77")).await;
    assert_eq!(answer.status_code, 201, "{:?}", answer.body);
    assert_eq!(keys_in(REGION, &east).await, [("203.0.113.77/32".to_string(), 443)], "sourceIp, not X-Forwarded-For");
    let answer = portcullis::lambda::handle_http(&router(c.app.clone()), api_gateway("DELETE", &secret, "203.0.113.77")).await;
    assert_eq!(answer.status_code, 200, "{:?}", answer.body);
    assert!(keys_in(REGION, &east).await.is_empty());
    let answer = portcullis::lambda::handle_http(&router(c.app.clone()), api_gateway("POST", "pct_wrong", "203.0.113.77")).await;
    assert_eq!(answer.status_code, 401);
    // A body flagged as base64 that is not base64 is refused, not read as empty.
    let mut bad = api_gateway("POST", &secret, "203.0.113.77");
    bad.is_base64_encoded = true;
    bad.body = Some("not base64!".into());
    let answer = portcullis::lambda::handle_http(&router(c.app.clone()), bad).await;
    assert_eq!(answer.status_code, 400, "{:?}", answer.body);
    assert!(keys_in(REGION, &east).await.is_empty(), "nothing was opened");
}

/// EC2 in another account: credentials from assuming `role` (moto files resources under the
/// role's account).
pub async fn ec2_as(role: &str, region: &str) -> aws_sdk_ec2::Client {
    let base = sdk_config().await;
    let provider = aws_config::sts::AssumeRoleProvider::builder(role).session_name("test").configure(&base).build().await;
    let config =
        aws_sdk_ec2::config::Builder::from(&base).region(Region::new(region.to_string())).credentials_provider(provider).build();
    aws_sdk_ec2::Client::from_conf(config)
}

#[tokio::test]
async fn a_target_in_another_account_is_reached_through_its_role() {
    let role = "arn:aws:iam::210987654321:role/portcullis";
    let other = ec2_as(role, WEST).await;
    let group = other
        .create_security_group()
        .group_name(unique("sg"))
        .description("other account")
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    let c = Conn::start(&format!(
        "default_environment = \"dev\"\n[environments.dev]\n[[environments.dev.targets]]\nregion = \"{WEST}\"\ngroup_ids = [\"{group}\"]\nports = \"tcp:443\"\nrole_arn = \"{role}\"\n"
    ))
    .await;
    let (secret, _) = c.token("ci", Role::SelfService, &[], None).await;
    let (status, body) = c.post(&bearer(&secret)).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["targets"][0]["outcome"], "authorized", "{body}");
    let out = other.describe_security_groups().group_ids(&group).send().await.unwrap();
    let cidrs: Vec<&str> =
        out.security_groups()[0].ip_permissions().iter().flat_map(|p| p.ip_ranges()).filter_map(|r| r.cidr_ip()).collect();
    assert_eq!(cidrs, ["127.0.0.1/32"]);
    // Without the role the group is not even visible: the rule went through the assumed role.
    assert!(ec2_in(WEST).await.describe_security_groups().group_ids(&group).send().await.is_err());
}

/// `portcullis open --aws`: the machine's own AWS credentials sign the login, the server asks
/// STS who that is, and the grant is the IAM user's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn portcullis_open_with_aws_credentials_opens_as_the_iam_user() {
    let sts = std::env::var("PORTCULLIS_TEST_MOTO_AUTH")
        .expect("PORTCULLIS_TEST_MOTO_AUTH is not set: run the suite with scripts/test");
    let w = World::new().await;
    let (east, west) = (group_in(REGION).await, group_in(WEST).await);
    let config = w.dir.path().join("portcullis.toml");
    let iam = format!("[auth.iam]\nserver_id = \"{SERVER_ID}\"\nsts_endpoint = \"{sts}\"\n");
    std::fs::write(&config, format!("default_environment = \"dev\"\n{}", two_regions(&east, &west, &iam))).unwrap();
    let config = config.display().to_string();
    let server = Server::start(&w, &[("PORTCULLIS_CONFIG", &config)]);
    let login = |user: &str| {
        let (_, key, secret) = iam_users().into_iter().find(|(name, _, _)| name == user).unwrap();
        let mut cmd = w.command(&["open", "--aws", "--once", "--json", "--server", &server.base, "--server-id", SERVER_ID]);
        cmd.args(["--sts-endpoint", &sts]).env("AWS_ACCESS_KEY_ID", key).env("AWS_SECRET_ACCESS_KEY", secret);
        cmd.output().unwrap()
    };
    let out = login("alice");
    assert!(out.status.success(), "{}", text(&out));
    let answer: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["principal"], "arn:aws:iam::123456789012:user/alice", "{answer}");
    assert!(keys_in(REGION, &east).await.contains(&("127.0.0.1/32".into(), 443)));
    let grants = w.grants();
    assert_eq!(grants[0]["owner"]["id"], "arn:aws:iam::123456789012:user/alice", "{grants}");
    // Another IAM user, not among the environment's principals: refused, exit 3.
    let other = iam_users().into_iter().map(|(name, _, _)| name).find(|name| name != "alice").expect("a second IAM user");
    let out = login(&other);
    assert_eq!(out.status.code(), Some(3), "{}", text(&out));
}
