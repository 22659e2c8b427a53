//! `/slack/commands` and announcements over real HTTP on loopback: signed form posts in,
//! Block Kit answers and webhook JSON out to a loopback receiver standing in for Slack.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use portcullis::app::App;
use portcullis::config::{Config, Overrides};
use portcullis::routes::router;
use portcullis::wiring;
use portcullis::wiring::slack_endpoint;
use portcullis_aws::Ec2Firewall;
use portcullis_core::{Action, Cidr, Description, Environment, Interface, Source, Ttl};
use portcullis_engine::{
    AddRequest, Clock, Engine, Firewall, HeldFirewall, ManualClock, MemoryFirewall, Notifier, Requester, SystemClock,
};
use portcullis_slack::{SigningSecret, Webhook};
use portcullis_store::{SqliteStore, Store};
use serde_json::Value;
use tokio::sync::watch;

use crate::support::{Canned, Receiver, World, eventually, post_signed, sdk_config, slash_command, text};

pub const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";

/// An in-process `serve`: the real router on a loopback socket, over the given adapters.
struct SlackServer {
    base: String,
    engine: Arc<Engine>,
    clock: Arc<dyn Clock>,
    http: reqwest::Client,
    _stop: watch::Sender<bool>,
}

/// The configuration a test server runs with: `toml` as the config file, `vars` as the environment.
fn config(w: &World, toml: &str, vars: &[(&str, &str)]) -> Config {
    let path = w.dir.path().join("portcullis.toml");
    std::fs::write(&path, toml).unwrap();
    let mut vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    vars.insert("SLACK_SIGNING_SECRET".into(), SECRET.into());
    let overrides = Overrides {
        config_file: Some(path),
        store: Some(format!("sqlite:{}", w.store_path().display())),
        ..Overrides::default()
    };
    Config::load(&overrides, &|k| vars.get(k).cloned()).unwrap()
}

/// The config file for a world whose dev environment discovers its tagged groups on moto.
fn dev_targets(w: &World, receiver: &Receiver, extra: &str) -> String {
    format!(
        "discovery_tag_key = \"{}\"\n[slack]\nresponse_url_prefixes = [\"{}/\"]\napi_url = \"{}/api\"\n{extra}\n\
         [environments.dev]\n[[environments.dev.targets]]\nregion = \"us-east-1\"\ndiscovery = true\n",
        w.tag_key, receiver.base, receiver.base
    )
}

impl SlackServer {
    async fn start(
        config: &Config,
        firewall: Arc<dyn Firewall>,
        clock: Arc<dyn Clock>,
        notifier: Arc<dyn Notifier>,
    ) -> SlackServer {
        let store = wiring::open_store(config).await.unwrap();
        let engine = Arc::new(wiring::builder(config, store, firewall, clock.clone(), notifier).build());
        let slack = slack_endpoint(config).await.unwrap().map(Arc::new);
        let app = Arc::new(App::new(engine.clone(), config, slack));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(app)).await.unwrap() });
        let (stop, rx) = watch::channel(false);
        let outbox = engine.outbox().unwrap().clone();
        tokio::spawn(async move { outbox.run(rx).await });
        SlackServer { base, engine, clock, http: reqwest::Client::new(), _stop: stop }
    }

    async fn post(&self, body: &str, headers: &[(&str, String)]) -> (u16, String) {
        let mut req = self.http.post(format!("{}/slack/commands", self.base)).body(body.to_string());
        req = req.header("content-type", "application/x-www-form-urlencoded");
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Posts a slash command as Slack would, signed at the server's clock time.
    async fn command(&self, user: (&str, &str), text: &str, response_url: &str) -> Value {
        let body = slash_command(user, text, response_url);
        let (status, answer) = post_signed(&self.base, SECRET, self.clock.now().unix_timestamp(), &body).await;
        assert_eq!(status, 200, "{answer}");
        serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer}"))
    }
}

/// Every text in a reply's blocks, joined.
pub fn said(reply: &Value) -> String {
    let mut out = reply["text"].as_str().unwrap_or_default().to_string();
    for b in reply["blocks"].as_array().into_iter().flatten() {
        out.push('\n');
        out.push_str(b["text"]["text"].as_str().or(b["elements"][0]["text"].as_str()).unwrap_or_default());
    }
    out
}

const ALICE: (&str, &str) = ("U0ALICE", "alice");

#[tokio::test]
async fn signatures_are_checked_before_anything_else() {
    let w = World::new().await;
    let receiver = Receiver::start().await;
    let cfg = config(&w, &dev_targets(&w, &receiver, ""), &[]);
    // The fixture's clock: Slack's published example must verify as it is.
    let fixture: Value = serde_json::from_str(include_str!("../../../../fixtures/slack-signature.json")).unwrap();
    let at = fixture["timestamp"].as_str().unwrap().parse::<i64>().unwrap();
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::from_unix_timestamp(at + 30).unwrap()));
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    let s = SlackServer::start(&cfg, firewall, clock.clone(), Arc::new(portcullis_engine::LogNotifier)).await;
    assert_eq!(fixture["signing_secret"].as_str().unwrap(), SECRET);
    let body = fixture["body"].as_str().unwrap();
    let good = fixture["expected_signature"].as_str().unwrap().to_string();
    let ts = fixture["timestamp"].as_str().unwrap().to_string();

    let (status, answer) = s.post(body, &[("x-slack-request-timestamp", ts.clone()), ("x-slack-signature", good.clone())]).await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("this app answers /infra"), "verified, then told it is the wrong command: {answer}");

    let tampered = body.replace("roadrunner", "coyote");
    let wrong = SigningSecret::new("not the secret").sign(&ts, body.as_bytes());
    type Headers = Vec<(&'static str, String)>;
    let cases: Vec<(&str, String, Headers)> = vec![
        ("tampered body", tampered, vec![("x-slack-request-timestamp", ts.clone()), ("x-slack-signature", good.clone())]),
        ("wrong secret", body.into(), vec![("x-slack-request-timestamp", ts.clone()), ("x-slack-signature", wrong)]),
        ("missing signature", body.into(), vec![("x-slack-request-timestamp", ts.clone())]),
        ("missing timestamp", body.into(), vec![("x-slack-signature", good.clone())]),
        ("no headers", body.into(), vec![]),
    ];
    for (what, body, headers) in cases {
        let (status, answer) = s.post(&body, &headers).await;
        assert_eq!(status, 401, "{what}: {answer}");
        let error: Value = serde_json::from_str(&answer).unwrap_or(Value::Null);
        assert_eq!(error["error"]["code"], "unauthenticated", "{what}: errors have the one JSON shape: {answer}");
    }
    // Stale and future: correctly signed, but too far from now.
    for skew in [-301i64, 301] {
        let ts = (clock.now().unix_timestamp() + skew).to_string();
        let body = body.replace("text=", "text=whitelist+add+198.51.100.7");
        let sig = SigningSecret::new(SECRET).sign(&ts, body.as_bytes());
        let (status, answer) = s.post(&body, &[("x-slack-request-timestamp", ts), ("x-slack-signature", sig)]).await;
        assert_eq!(status, 401, "skew {skew}: {answer}");
    }
    assert!(s.engine.grants().live_grants(&portcullis_engine::Scope::All, &admin()).await.unwrap().is_empty());
    assert!(
        s.engine.grants().audit(&portcullis_engine::AuditQuery::newest(None, 10), &admin()).await.unwrap().is_empty(),
        "nothing recorded for unsigned requests"
    );
    assert!(receiver.requests("/").is_empty());

    // Slack's ssl_check, signed, is answered with an empty 200.
    let body = "ssl_check=1&token=x";
    let ts = clock.now().unix_timestamp().to_string();
    let sig = SigningSecret::new(SECRET).sign(&ts, body.as_bytes());
    let (status, answer) = s.post(body, &[("x-slack-request-timestamp", ts), ("x-slack-signature", sig)]).await;
    assert_eq!((status, answer.as_str()), (200, ""));
}

#[tokio::test]
async fn add_list_remove_refresh_over_slack_on_moto_with_announcements() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let receiver = Receiver::start().await;
    let cfg = config(&w, &dev_targets(&w, &receiver, ""), &[("SLACK_WEBHOOK_URL", &receiver.url("/webhook"))]);
    let firewall = Arc::new(Ec2Firewall::new(&sdk_config().await));
    let notifier = wiring::notifier(&cfg);
    let s = SlackServer::start(&cfg, firewall, Arc::new(SystemClock), notifier).await;
    let respond = receiver.url("/respond/1");

    let ack = s.command(ALICE, "whitelist add 198.51.100.7 --ttl=5m --description='Home office'", &respond).await;
    assert!(said(&ack).contains("Adding `198.51.100.7/32` to `dev`"), "{ack}");
    assert_eq!(ack["response_type"], "ephemeral");
    let answer = receiver.wait_for("/respond/1", 1).await;
    assert!(said(&answer[0].json()).contains(":white_check_mark: `198.51.100.7/32` added to `dev`"), "{:?}", answer[0]);
    let keys = w.keys(&group).await;
    assert!(keys.contains(&("198.51.100.7/32".into(), 80)) && keys.contains(&("198.51.100.7/32".into(), 443)), "{keys:?}");
    let rules = w.rules(&group).await;
    assert!(rules.iter().all(|(_, _, d)| d.as_deref().unwrap().starts_with("pc:dev alice: Home office")), "{rules:?}");

    let hooks = receiver.wait_for("/webhook", 1).await;
    let announced = hooks[0].json()["text"].as_str().unwrap().to_string();
    assert!(announced.starts_with(":white_check_mark: IP Whitelist Update\nIP `198.51.100.7/32` added to `dev` whitelist.\nAdded by: @alice\nDescription: Home office\nExpires at: "), "{announced}");

    let list = said(&s.command(ALICE, "whitelist list dev", &respond).await);
    assert!(list.contains("`198.51.100.7/32`") && list.contains("@alice") && list.contains("Home office"), "{list}");
    assert!(list.contains("expires in 4m") || list.contains("expires in 5m"), "{list}");

    let help = said(&s.command(ALICE, "whitelist help", &respond).await);
    assert!(help.contains("/infra whitelist add &lt;ip|cidr&gt;"), "mrkdwn-escaped: {help}");

    // Each mistake: HTTP 200, the reason and the usage, nothing changed.
    let audit_before = s.engine.grants().audit(&portcullis_engine::AuditQuery::newest(None, 100), &admin()).await.unwrap().len();
    for (text, reason) in [
        ("whitelist add", "add needs an IP address"),
        ("whitelist add 198.51.100.300", "invalid address"),
        ("whitelist add 198.51.100.8 --ttl=2y", "invalid TTL"),
        ("whitelist add 198.51.100.8 --description='unclosed", "unterminated quote"),
        ("whitelist add 198.51.100.8 --env staging", "unknown environment"),
        ("whitelist frobnicate", "unknown command"),
        ("whitelist list prod", "unknown environment"),
    ] {
        let reply = said(&s.command(ALICE, text, &respond).await);
        assert!(reply.contains(reason), "{text}: {reply}");
        assert!(reply.contains("/infra whitelist add"), "{text} answers with the usage: {reply}");
    }
    // A policy refusal comes back on response_url, audited.
    s.command(ALICE, "whitelist add 198.51.0.0/16", &receiver.url("/respond/2")).await;
    let refused = receiver.wait_for("/respond/2", 1).await;
    assert!(said(&refused[0].json()).contains("too wide"), "{:?}", refused[0]);
    let audit = s.engine.grants().audit(&portcullis_engine::AuditQuery::newest(None, 100), &admin()).await.unwrap();
    assert_eq!(audit.len(), audit_before + 1);
    assert_eq!(audit[0].action, Action::Refused);
    assert_eq!(w.keys(&group).await.len(), 2);

    // Drift: a rule deleted by hand comes back on refresh.
    w.delete_rule(&group, "198.51.100.7/32", 443).await;
    s.command(ALICE, "whitelist refresh dev", &receiver.url("/respond/3")).await;
    let refreshed = said(&receiver.wait_for("/respond/3", 1).await[0].json());
    assert!(refreshed.contains("`dev` refreshed") && refreshed.contains("1 rules authorized"), "{refreshed}");
    assert!(w.keys(&group).await.contains(&("198.51.100.7/32".into(), 443)));

    s.command(("U0BOB", "bob"), "allowlist remove 198.51.100.7", &receiver.url("/respond/4")).await;
    let removed = said(&receiver.wait_for("/respond/4", 1).await[0].json());
    assert!(removed.contains(":wastebasket: `198.51.100.7/32` removed from `dev`"), "{removed}");
    assert!(w.keys(&group).await.is_empty());
    let hooks = receiver.wait_for("/webhook", 3).await;
    let texts: Vec<String> = hooks.iter().map(|h| h.json()["text"].as_str().unwrap().to_string()).collect();
    assert!(texts[1].starts_with(":wrench: IP Whitelist Update"), "{texts:?}");
    assert!(texts[2].starts_with(":wastebasket: IP Whitelist Update\nIP `198.51.100.7/32` removed from `dev` whitelist.\nRemoved by: @bob\nAdded by: @alice"), "{texts:?}");
    let list = said(&s.command(ALICE, "whitelist list", &respond).await);
    assert!(list.contains("No live entries in `dev`"), "{list}");
    eventually(Duration::from_secs(10), "the outbox to empty", || async {
        s.engine.status(&admin()).await.unwrap().outbox_pending == 0
    })
    .await;
    assert_eq!(receiver.requests("/webhook").len(), 3, "each change announced once");
}

#[tokio::test]
async fn the_acknowledgement_comes_while_the_firewall_is_held_and_the_answer_after() {
    let w = World::new().await;
    let receiver = Receiver::start().await;
    let cfg = config(&w, &dev_targets(&w, &receiver, ""), &[]);
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let memory = Arc::new(MemoryFirewall::new(clock.clone()));
    memory.put_group("us-east-1", "sg-held", &[(w.tag_key.as_str(), "true")]);
    let held = Arc::new(HeldFirewall::new(memory.clone()));
    let (observed, release) = held.hold_next_observe();
    let s = SlackServer::start(&cfg, held, clock, Arc::new(portcullis_engine::LogNotifier)).await;

    let ack = s.command(ALICE, "whitelist add 203.0.113.9 --ttl 1h", &receiver.url("/respond/held")).await;
    assert!(said(&ack).contains("Adding `203.0.113.9/32`"), "{ack}");
    observed.await.unwrap();
    assert!(receiver.requests("/respond/held").is_empty(), "no answer while the firewall is held");
    assert!(memory.rules("us-east-1", "sg-held").is_empty());
    release.send(()).unwrap();
    let answer = receiver.wait_for("/respond/held", 1).await;
    assert!(said(&answer[0].json()).contains(":white_check_mark: `203.0.113.9/32` added to `dev`"), "{:?}", answer[0]);
    assert_eq!(memory.rules("us-east-1", "sg-held").len(), 2);
}

#[tokio::test]
async fn only_listed_users_and_group_members_act_in_prod_and_changes_are_rate_limited() {
    let w = World::new().await;
    let receiver = Receiver::start().await;
    receiver.always("/api/usergroups.users.list", Canned(200, vec![], r#"{"ok": true, "users": ["U0BOB"]}"#.into()));
    let prod = "[environments.prod]\nusers = [\"U0ALICE\"]\nuser_groups = [\"S0SRE\"]\n";
    let toml = dev_targets(&w, &receiver, "rate_limit_per_minute = 2\n") + prod;
    let cfg = config(&w, &toml, &[("SLACK_BOT_TOKEN", "xoxb-test")]);
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    let s = SlackServer::start(&cfg, firewall, clock.clone(), Arc::new(portcullis_engine::LogNotifier)).await;
    let respond = receiver.url("/respond/p");

    let mallory = said(&s.command(("U0MALLORY", "alice"), "whitelist add 198.51.100.1 --env prod", &respond).await);
    assert!(mallory.contains("may not change grants in environment prod"), "a name is not an identity: {mallory}");
    let refusals = s.engine.grants().audit(&portcullis_engine::AuditQuery::newest(None, 10), &admin()).await.unwrap();
    assert_eq!(
        (refusals[0].action, refusals[0].interface, refusals[0].actor.as_str()),
        (Action::Refused, Interface::Slack, "alice (U0MALLORY)")
    );
    let peek = said(&s.command(("U0MALLORY", "mallory"), "whitelist list prod", &respond).await);
    assert!(peek.contains("may not change grants"), "{peek}");

    let alice = said(&s.command(ALICE, "whitelist add 198.51.100.1 --env prod", &respond).await);
    assert!(alice.contains("Adding"), "listed by id: {alice}");
    let bob = said(&s.command(("U0BOB", "bob"), "whitelist add 198.51.100.2 --env prod", &respond).await);
    assert!(bob.contains("Adding"), "member of S0SRE: {bob}");
    let lookup = receiver.requests("/api/usergroups.users.list");
    assert!(lookup[0].path.contains("usergroup=S0SRE"), "{lookup:?}");

    // Two changes a minute for alice: the third is refused, reads are not limited.
    let again = said(&s.command(ALICE, "whitelist remove 198.51.100.1 --env prod", &respond).await);
    assert!(again.contains("Removing"), "{again}");
    let limited = said(&s.command(ALICE, "whitelist add 198.51.100.3 --env prod", &respond).await);
    assert!(limited.contains("changes in the last minute") && limited.contains("try again in"), "{limited}");
    assert!(said(&s.command(ALICE, "whitelist list prod", &respond).await).contains("prod"));
    clock.advance(time::Duration::seconds(61));
    let later = said(&s.command(ALICE, "whitelist add 198.51.100.3 --env prod", &respond).await);
    assert!(later.contains("Adding"), "{later}");
}

fn grant_request(cidr: &str) -> AddRequest {
    AddRequest {
        cidr: Cidr::parse(cidr).unwrap(),
        environment: Environment::parse("dev").unwrap(),
        ttl: Some(Ttl::parse("1h").unwrap()),
        description: Description::parse("").unwrap(),
        source: Source::Manual,
        by: Requester::named("alice", Interface::Cli),
    }
}

#[tokio::test]
async fn a_429_with_retry_after_delays_delivery_and_loses_nothing() {
    let w = World::new().await;
    let receiver = Receiver::start().await;
    receiver.once("/webhook", Canned(429, vec![("retry-after", "2".into())], "rate_limited".into()));
    let cfg = config(&w, &dev_targets(&w, &receiver, ""), &[]);
    let t0 = time::OffsetDateTime::now_utc();
    let clock = Arc::new(ManualClock::new(t0));
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    let webhook = Arc::new(Webhook::new(Arc::new(portcullis_slack::FixedUrl(receiver.url("/webhook")))));
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(w.store_path()).unwrap());
    let engine = Arc::new(wiring::builder(&cfg, store.clone(), firewall, clock.clone(), webhook).build());
    engine.grants().add(grant_request("198.51.100.1")).await.unwrap();
    engine.grants().add(grant_request("198.51.100.2")).await.unwrap();
    let (_stop, rx) = watch::channel(false);
    let outbox = engine.outbox().unwrap().clone();
    tokio::spawn(async move { outbox.run(rx).await });

    let first = receiver.wait_for("/webhook", 1).await;
    assert_eq!(first[0].status, 429);
    let db = rusqlite::Connection::open(w.store_path()).unwrap();
    let retry_ms = ((t0 + time::Duration::seconds(2)).unix_timestamp_nanos() / 1_000_000) as i64;
    eventually(Duration::from_secs(10), "the retry to be scheduled Retry-After from now", || async {
        let first: (i64, i64) = db
            .query_row("SELECT next_attempt_ms, attempts FROM outbox ORDER BY audit_id LIMIT 1", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        first == (retry_ms, 1)
    })
    .await;
    assert_eq!(receiver.requests("/webhook").len(), 1, "nothing posted before Retry-After");
    clock.advance(time::Duration::seconds(2));
    let second = receiver.wait_for("/webhook", 2).await;
    assert_eq!((second[1].status, &second[1].body), (200, &first[0].body), "the same message, retried");
    // One message a second: the next waits for the clock.
    eventually(Duration::from_secs(10), "the next post to be paced", || async {
        store.outbox_status().await.unwrap().pending == 1
    })
    .await;
    assert_eq!(receiver.requests("/webhook").len(), 2);
    clock.advance(time::Duration::seconds(1));
    let all = receiver.wait_for("/webhook", 3).await;
    assert!(all[2].body.contains("198.51.100.2/32"), "{:?}", all[2]);
    assert!(all[1].body.contains("198.51.100.1/32"), "in order");
    eventually(Duration::from_secs(10), "the outbox to empty", || async { store.outbox_status().await.unwrap().pending == 0 })
        .await;
}

// Multi-threaded: the receiver must answer while this thread waits for the CLI process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_leaves_undelivered_announcements_for_the_next_run() {
    let w = World::new().await;
    let group = w.group(true, &[]).await;
    let receiver = Receiver::start().await;
    receiver.always("/webhook", Canned(503, vec![], "down".into()));
    let hook = receiver.url("/webhook");
    let run = |args: &[&str]| {
        let mut cmd = w.command(args);
        cmd.env("SLACK_WEBHOOK_URL", &hook);
        cmd.output().unwrap()
    };
    let out = run(&["add", "198.51.100.21", "--ttl", "1h", "--description", "first"]);
    assert!(out.status.success(), "a Slack outage never fails a change: {}", text(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("stay in the outbox"), "{}", text(&out));
    assert!(w.keys(&group).await.contains(&("198.51.100.21/32".into(), 80)));
    assert!(receiver.requests("/webhook").iter().all(|r| r.status == 503));

    receiver.always("/webhook", Canned(200, vec![], "ok".into()));
    let out = run(&["add", "198.51.100.22", "--ttl", "1h"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!String::from_utf8_lossy(&out.stderr).contains("outbox"), "{}", text(&out));
    let delivered: Vec<String> = receiver
        .requests("/webhook")
        .into_iter()
        .filter(|r| r.status == 200)
        .map(|r| r.json()["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(delivered.len(), 2, "{delivered:?}");
    assert!(delivered[0].contains("198.51.100.21/32") && delivered[0].contains("Description: first"));
    assert!(delivered[1].contains("198.51.100.22/32"));
}

/// A reader with no credential limits, as the CLI is.
fn admin() -> portcullis_engine::Requester {
    portcullis_engine::Requester::named("test", portcullis_core::Interface::Cli)
}

#[tokio::test]
async fn during_a_rotation_requests_signed_with_the_next_secret_verify() {
    let w = World::new().await;
    let receiver = Receiver::start().await;
    let cfg = config(&w, &dev_targets(&w, &receiver, ""), &[("SLACK_SIGNING_SECRET_NEXT", "the-next-secret")]);
    let clock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    let s = SlackServer::start(&cfg, firewall, clock.clone(), Arc::new(portcullis_engine::LogNotifier)).await;
    let body = "command=%2Finfra&text=whitelist+list&user_id=U0ALICE&user_name=alice&response_url=x";
    let ts = clock.now().unix_timestamp().to_string();
    for (secret, expected) in [(SECRET, 200), ("the-next-secret", 200), ("a-third-secret", 401)] {
        let signature = SigningSecret::new(secret).sign(&ts, body.as_bytes());
        let (status, answer) = s.post(body, &[("x-slack-request-timestamp", ts.clone()), ("x-slack-signature", signature)]).await;
        assert_eq!(status, expected, "signed with {secret}: {answer}");
    }
    // A signed request replayed inside its 300 s window is refused.
    let signature = SigningSecret::new(SECRET).sign(&ts, body.as_bytes());
    let (status, answer) = s.post(body, &[("x-slack-request-timestamp", ts.clone()), ("x-slack-signature", signature)]).await;
    assert_eq!(status, 401, "a replay: {answer}");
    assert!(answer.contains("used before"), "{answer}");
}
