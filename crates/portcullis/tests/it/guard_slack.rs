//! Guard through Slack, `/v1` and Lambda: the approval message and its buttons on loopback,
//! decisions over HTTP and on virtual time on both stores, and the Lambda's EventBridge and
//! API Gateway paths.

use serde_json::{Value, json};

use crate::guard::{ALICE, Guarded, added, guarded};
use crate::support::{World, fixture, text, unique, within};

const SECRET: &str = "guard-test-signing-secret-0123456";

/// A signed `block_actions` post: `user` clicks `action` on request `id`.
fn click(user: &str, action: &str, id: &str, response_url: &str) -> String {
    let mut payload = fixture("slack-block-actions.json");
    payload["user"]["id"] = json!(user);
    payload["user"]["username"] = json!(user.to_lowercase());
    payload["actions"][0]["action_id"] = json!(action);
    payload["actions"][0]["value"] = json!(id);
    payload["response_url"] = json!(response_url);
    serde_urlencoded::to_string([("payload", payload.to_string())]).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_gets_the_approval_message_and_its_buttons_decide_through_the_same_rules() {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use portcullis::app::App;
    use portcullis::config::{Config, Overrides};
    use portcullis::routes::router;
    use portcullis::wiring;

    use crate::support::{Receiver, post_signed_to, sdk_config};

    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let receiver = Receiver::start().await;
        let path = w.dir.path().join("portcullis.toml");
        std::fs::write(
            &path,
            format!(
                "[slack]\nresponse_url_prefixes = [\"{base}/\"]\n[guard]\ngroups = [\"{group}\"]\napprovers = [\"U0BOB\", \"U0ALICE\"]\n\
                 [[guard.targets]]\nregion = \"us-east-1\"\n[guard.people]\nU0ALICE = [\"{ALICE}\"]\n",
                base = receiver.base
            ),
        )
        .unwrap();
        let vars: BTreeMap<&str, String> = [
            ("SLACK_SIGNING_SECRET", SECRET.to_string()),
            ("APPROVAL_WEBHOOK_URL", receiver.url("/approval")),
            ("MONITORING_WEBHOOK_URL", receiver.url("/monitoring")),
            ("PORTCULLIS_FIREWALL", "aws".into()),
        ]
        .into();
        let overrides =
            Overrides { config_file: Some(path), store: Some(format!("sqlite:{}", w.store_path().display())), ..Overrides::default() };
        let config = Config::load(&overrides, &|k| vars.get(k).cloned()).unwrap();
        let store = wiring::open_store(&config).await.unwrap();
        let firewall = Arc::new(portcullis_aws::Ec2Firewall::new(&sdk_config().await));
        let clock = Arc::new(portcullis_engine::SystemClock);
        let engine = wiring::builder(&config, store, firewall.clone(), clock, wiring::notifier(&config)).guard(wiring::guard_settings(&config).unwrap(), firewall).build();
        let engine = Arc::new(engine);
        let slack = wiring::slack_endpoint(&config).await.unwrap().map(Arc::new);
        let app = Arc::new(App::new(engine.clone(), &config, slack));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router(app)).await.unwrap() });
        let (_stop, rx) = tokio::sync::watch::channel(false);
        let outbox = engine.outbox().unwrap().clone();
        tokio::spawn(async move { outbox.run(rx).await });

        engine.guard().unwrap().record_baseline(false, &portcullis_engine::Requester::named("ops", portcullis_core::Interface::Cli)).await.unwrap();
        let g = Guarded { world: w, config: std::path::PathBuf::new() };
        let id = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let Some(Ok(event)) = portcullis::events::read(&added(&group, &id, "203.0.113.0/24", 22, ALICE)) else { panic!("an event") };
        let answer = portcullis::events::handle(&engine, event, portcullis_core::Interface::Lambda).await.unwrap();
        let request = answer["request"]["id"].as_str().unwrap().to_string();
        assert!(g.rules(&group).await.is_empty());

        let approval: Value = serde_json::from_str(&receiver.wait_for("/approval", 1).await[0].body).unwrap();
        let buttons = approval["blocks"].as_array().unwrap().last().unwrap()["elements"].as_array().unwrap().clone();
        assert!(buttons.iter().all(|b| b["value"] == request.as_str()), "{approval}");
        let labels: Vec<&str> = buttons.iter().filter_map(|b| b["text"]["text"].as_str()).collect();
        assert_eq!(labels, ["Approve", "Approve for 24 h", "Deny"], "{approval}");
        assert!(approval.to_string().contains("tcp 22 from 203.0.113.0/24"), "{approval}");
        let notice = receiver.wait_for("/monitoring", 1).await;
        assert!(notice[0].body.contains("reverted") && notice[0].body.contains(&group), "{}", notice[0].body);

        let interactions = format!("{base}/slack/interactions");
        let now = || time::OffsetDateTime::now_utc().unix_timestamp();
        let (status, _) = post_signed_to(&interactions, "not-the-secret", now(), &click("U0BOB", "approve", &request, &receiver.url("/r/1"))).await;
        assert_eq!(status, 401, "the signature is checked first");
        let (status, _) = post_signed_to(&interactions, SECRET, now(), &click("U0ALICE", "approve", &request, &receiver.url("/r/alice"))).await;
        assert_eq!(status, 200);
        let refused = receiver.wait_for("/r/alice", 1).await;
        assert!(refused[0].body.contains("may not decide") && refused[0].body.contains("ephemeral"), "{}", refused[0].body);
        assert!(g.rules(&group).await.is_empty());

        let (status, _) = post_signed_to(&interactions, SECRET, now(), &click("U0BOB", "approve", &request, &receiver.url("/r/bob"))).await;
        assert_eq!(status, 200);
        let decided: Value = serde_json::from_str(&receiver.wait_for("/r/bob", 1).await[0].body).unwrap();
        assert_eq!(decided["replace_original"], true, "{decided}");
        assert!(decided.to_string().contains("Approved* by <@U0BOB>"), "{decided}");
        assert_eq!(g.rules(&group).await.len(), 1, "approved: the rule is back");
        receiver.wait_for("/monitoring", 2).await;

        // "Approve for 24 h": the addition goes on as a timed rule, and the message says until when.
        let id = g.authorize(&group, "198.51.100.0/24", 443, None).await;
        let Some(Ok(event)) = portcullis::events::read(&added(&group, &id, "198.51.100.0/24", 443, ALICE)) else { panic!() };
        let answer = portcullis::events::handle(&engine, event, portcullis_core::Interface::Lambda).await.unwrap();
        let second = answer["request"]["id"].as_str().unwrap().to_string();
        let body = click("U0BOB", "approve_temporary", &second, &receiver.url("/r/bob2"));
        let (status, _) = post_signed_to(&interactions, SECRET, now(), &body).await;
        assert_eq!(status, 200);
        let decided = receiver.wait_for("/r/bob2", 1).await[0].body.clone();
        assert!(decided.contains("Approved for a time* by <@U0BOB>: a timed rule until"), "{decided}");
        let rules = g.rules(&group).await;
        let granted = rules.iter().find(|r| r.1 == 443).unwrap_or_else(|| panic!("{rules:?}"));
        assert!(granted.3.as_deref().is_some_and(|d| d.starts_with(&format!("pc:timed/{second} "))), "{rules:?}");
    })
    .await;
}

/// Guard over the engine on a virtual clock, on `store`, with `/v1/requests` over real HTTP:
/// a decision by an admin token's user, a non-approver refused, and a request that expires.
async fn decisions_over_v1_and_expiry_on_virtual_time(store: std::sync::Arc<dyn portcullis_store::Store>) {
    use std::sync::Arc;

    use portcullis::app::App;
    use portcullis::config::{Config, Overrides};
    use portcullis::routes::router;
    use portcullis::wiring;
    use portcullis_core::{Interface, Role, Timestamp};
    use portcullis_engine::{Clock, ManualClock, Requester};
    use portcullis_store::Actor;

    use crate::support::sdk_config;

    let w = World::new().await;
    let group = w.group(false, &[]).await;
    let path = w.dir.path().join("portcullis.toml");
    std::fs::write(
        &path,
        format!("[guard]\ngroups = [\"{group}\"]\napprovers = [\"ubob\"]\nrequest_ttl = \"2h\"\n[[guard.targets]]\nregion = \"us-east-1\"\n"),
    )
    .unwrap();
    let overrides = Overrides { config_file: Some(path), firewall: Some("aws".into()), ..Overrides::default() };
    let config = Config::load(&overrides, &|_| None).unwrap();
    let firewall = Arc::new(portcullis_aws::Ec2Firewall::new(&sdk_config().await));
    let clock = Arc::new(ManualClock::new(Timestamp::now_utc()));
    let engine =
        wiring::builder(&config, store.clone(), firewall.clone(), clock.clone(), Arc::new(portcullis_engine::LogNotifier))
            .guard(wiring::guard_settings(&config).unwrap(), firewall)
            .build();
    let engine = Arc::new(engine);
    let app = Arc::new(App::new(engine.clone(), &config, None));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        axum::serve(listener, router(app).into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
    });
    let token = |user: &str| {
        let (secret, token) =
            portcullis::auth::issue(user, Role::Admin, Default::default(), Timestamp::now_utc(), None, "test").unwrap();
        (secret, token)
    };
    let actor = Actor { name: "test".into(), interface: Interface::Cli };
    let (bob, stored) = token("ubob");
    store.create_token(stored, &actor).await.unwrap();
    let (mallory, stored) = token("mallory");
    store.create_token(stored, &actor).await.unwrap();
    let http = reqwest::Client::new();
    let post = |secret: String, url: String| {
        let http = http.clone();
        async move {
            let r = http.post(url).bearer_auth(secret).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };

    engine.guard().unwrap().record_baseline(false, &Requester::named("ops", Interface::Cli)).await.unwrap();
    let g = Guarded { world: w, config: std::path::PathBuf::new() };
    let mut ids = Vec::new();
    for (cidr, port) in [("203.0.113.0/24", 22), ("192.0.2.0/24", 3389), ("198.51.100.0/24", 443)] {
        let rule = g.authorize(&group, cidr, port, None).await;
        let mut e = added(&group, &rule, cidr, port, ALICE);
        let at = clock.now().format(&time::format_description::well_known::Rfc3339).unwrap();
        e["detail"]["eventTime"] = json!(at);
        let Some(Ok(event)) = portcullis::events::read(&e) else { panic!("an event") };
        let answer = portcullis::events::handle(&engine, event, Interface::Http).await.unwrap();
        ids.push(answer["request"]["id"].as_str().unwrap_or_else(|| panic!("{answer}")).to_string());
    }
    assert!(g.rules(&group).await.is_empty());
    let listed: Value = http.get(format!("{base}/v1/requests")).bearer_auth(&bob).send().await.unwrap().json().await.unwrap();
    assert_eq!(listed.as_array().map(Vec::len), Some(3), "{listed}");

    let (status, answer) = post(mallory.clone(), format!("{base}/v1/requests/{}/approve", ids[0])).await;
    assert_eq!((status, answer["error"]["code"].as_str()), (403, Some("refused")), "{answer}");
    let (status, answer) = post(bob.clone(), format!("{base}/v1/requests/{}/approve", ids[0])).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(g.rules(&group).await.len(), 1);
    let (status, _) = post(bob.clone(), format!("{base}/v1/requests/nope/approve")).await;
    assert_eq!(status, 404);

    // "Approve for 1 h": the addition goes on as a timed rule, under our marker.
    let approve_for = |term: &str| {
        let (http, secret, url) = (http.clone(), bob.clone(), format!("{base}/v1/requests/{}/approve", ids[2]));
        let body = json!({"for": term});
        async move {
            let r = http.post(url).bearer_auth(secret).json(&body).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let (status, answer) = approve_for("forever").await;
    assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_term")), "{answer}");
    let (status, answer) = approve_for("1h").await;
    assert_eq!(status, 200, "{answer}");
    let until = clock.now() + time::Duration::hours(1);
    let until = until.format(&time::format_description::well_known::Rfc3339).unwrap();
    assert_eq!(answer["request"]["temporary"]["until"].as_str(), Some(until.as_str()), "{answer}");
    assert!(answer["request"]["applied_at"].is_string(), "{answer}");
    let rules = g.rules(&group).await;
    let granted = rules.iter().find(|r| r.1 == 443).unwrap_or_else(|| panic!("{rules:?}"));
    assert_eq!(granted.3.as_deref(), Some(format!("pc:timed/{} ubob:", ids[2]).as_str()), "{rules:?}");
    assert!(
        engine.guard().unwrap().reconcile_timed_rules().await.unwrap().authorized == 0,
        "level-triggered: nothing more to put on"
    );
    let quiet = engine.guard().unwrap().sweep().await.unwrap();
    assert!(quiet.reverted.is_empty(), "a timed rule's rule is ours, not drift: {quiet:?}");

    clock.advance(time::Duration::hours(2));
    let swept = engine.sweep().await.unwrap();
    let timed_rules = swept.timed_rules.unwrap_or_default();
    assert_eq!((timed_rules.expired, timed_rules.revoked), (vec![ids[2].clone()], 1), "the sweeper revokes it on time");
    let rules = g.rules(&group).await;
    assert_eq!(rules.iter().map(|r| r.1).collect::<Vec<_>>(), [22], "only the timed rule went: {rules:?}");
    let ended = store.request(&ids[2]).await.unwrap().unwrap();
    assert!(ended.temporary.and_then(|t| t.ended_at).is_some(), "{ended:?}");
    let expired = store.audit(None, 50).await.unwrap();
    let expired = expired.iter().find(|e| e.action == portcullis_core::Action::Expired).expect("audited as expired");
    assert!(expired.reason.contains(&ids[2]) && expired.request.is_some(), "{}", expired.reason);
    let notice = portcullis_slack::notification(expired).unwrap_or_default();
    assert!(notice.starts_with(":hourglass:") && notice.contains("198.51.100.0/24"), "{notice}");

    let sweep = engine.guard().unwrap().sweep().await.unwrap();
    assert!(sweep.reverted.is_empty(), "{sweep:?}");
    assert_eq!(sweep.expired, [ids[1].clone()]);
    let (status, answer) = post(bob, format!("{base}/v1/requests/{}/approve", ids[1])).await;
    assert_eq!((status, answer["error"]["message"].as_str().map(|m| m.contains("expired"))), (409, Some(true)), "{answer}");
    assert_eq!(g.rules(&group).await.len(), 1, "the expired request's revert stays");
    let actions: Vec<String> = store.audit(None, 50).await.unwrap().iter().map(|e| e.action.as_str().to_string()).collect();
    assert!(actions.contains(&"change-expired".to_string()) && actions.contains(&"change-approved".to_string()), "{actions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_expiry_on_sqlite() {
    within(async {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(portcullis_store::SqliteStore::open(dir.path().join("g.db")).unwrap());
        decisions_over_v1_and_expiry_on_virtual_time(store).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_and_expiry_on_dynamodb() {
    within(async {
        let sdk = crate::aws_proxy::sdk_config_at(&crate::aws_proxy::start().await).await;
        let env = portcullis_core::Environment::parse("dev").unwrap();
        let store = portcullis_aws::DynamoStore::new(&sdk, portcullis_aws::TableNames::new(&unique("guard"), None), vec![env]);
        store.init().await.unwrap();
        decisions_over_v1_and_expiry_on_virtual_time(std::sync::Arc::new(store)).await;
    })
    .await;
}

/// An API Gateway HTTP API (v2) event: a signed Slack interaction post.
fn gateway_interaction(body: &str, at: i64) -> Value {
    let ts = at.to_string();
    let sig = portcullis_slack::SigningSecret::new(SECRET).sign(&ts, body.as_bytes());
    json!({
        "version": "2.0", "routeKey": "$default", "rawPath": "/slack/interactions", "rawQueryString": "",
        "headers": {"host": "example.execute-api.us-east-1.amazonaws.com", "content-type": "application/x-www-form-urlencoded",
                    "x-slack-request-timestamp": ts, "x-slack-signature": sig},
        "requestContext": {"http": {"method": "POST", "path": "/slack/interactions", "protocol": "HTTP/1.1", "sourceIp": "192.0.2.1", "userAgent": "Slackbot"},
                           "requestId": "r1", "routeKey": "$default", "stage": "$default", "timeEpoch": 0},
        "body": body, "isBase64Encoded": false
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lambda_reverts_from_eventbridge_and_decides_a_click_through_api_gateway() {
    use crate::lambda::{Runtime, in_lambda};

    within(async {
        let w = World::new().await;
        let group = w.group(false, &[]).await;
        let g = guarded(&[&group], 1).await;
        let receiver = crate::support::Receiver::start().await;
        g.write(&[&group], 1, &format!("[slack]\nresponse_url_prefixes = [\"{}/\"]", receiver.base));
        assert!(g.cli(&["guard", "baseline"]).status.success());
        let rule = g.authorize(&group, "203.0.113.0/24", 22, None).await;
        let (rt, addr) = Runtime::start().await;
        rt.queue.lock().unwrap().push_back(added(&group, &rule, "203.0.113.0/24", 22, ALICE));
        // EC2 through a proxy that can make it slow.
        let proxy = crate::aws_proxy::start_proxy().await;
        let mut cmd = g.world.command(&["lambda"]);
        cmd.env("PORTCULLIS_CONFIG", &g.config).env("SLACK_SIGNING_SECRET", SECRET).env("AWS_ENDPOINT_URL_EC2", &proxy.url);
        in_lambda(&mut cmd, addr);
        let mut child = cmd.spawn().unwrap();

        let (_, kind, reverted) = rt.answer(1).await;
        assert_eq!((kind.as_str(), reverted["outcome"].as_str()), ("response", Some("reverted")), "{reverted}");
        assert!(g.rules(&group).await.is_empty());
        let request = reverted["request"]["id"].as_str().unwrap().to_string();

        // EC2 takes 5 s a call now. The click is answered without a single EC2 call: the
        // decision is written, and its apply handed to another invocation.
        proxy.delay_ec2(std::time::Duration::from_secs(5));
        let ec2_calls = proxy.calls().len();
        let body = click("ubob", "approve", &request, &receiver.url("/actions/1"));
        let clicked = std::time::Instant::now();
        rt.queue.lock().unwrap().push_back(gateway_interaction(&body, time::OffsetDateTime::now_utc().unix_timestamp()));
        let (_, kind, response) = rt.answer(2).await;
        let answered_in = clicked.elapsed();
        assert_eq!(proxy.calls().len(), ec2_calls, "the click's answer waited on no EC2 call");
        assert!(answered_in < std::time::Duration::from_secs(5), "answered in {answered_in:?}, not after EC2's 5 s");
        assert_eq!((kind.as_str(), response["statusCode"].as_i64()), ("response", Some(200)), "{response}");
        let decided: Value = serde_json::from_str(response["body"].as_str().unwrap_or_default()).unwrap_or(Value::Null);
        assert!(decided.to_string().contains("Approved* by <@ubob>; applying it"), "not applied yet: {response}");
        let first = receiver.wait_for("/actions/1", 1).await;
        assert!(
            first[0].body.contains("\"replace_original\":true") && first[0].body.contains("applying it"),
            "{}",
            first[0].body
        );
        let invoked = rt.invoked.lock().unwrap().clone();
        assert_eq!(invoked.len(), 1, "one asynchronous invocation of the function itself");
        assert_eq!(
            (invoked[0].0.as_str(), invoked[0].1["portcullis_deferred_apply"]["request"].as_str()),
            ("portcullis", Some(request.as_str()))
        );

        // The second invocation applies it, then says so where the click was.
        rt.run_invoked();
        let (_, kind, applied) = rt.answer(3).await;
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        assert_eq!(
            (kind.as_str(), applied["request"]["status"].as_str()),
            ("response", Some("applied")),
            "{applied}\n{}",
            text(&out)
        );
        assert_eq!(g.rules(&group).await.len(), 1);
        let replaced = receiver.wait_for("/actions/1", 2).await;
        assert!(replaced[1].body.contains("Approved* by <@ubob> and applied"), "{}", replaced[1].body);
    })
    .await;
}
