//! What the operators' console asks of the API, over real HTTP on loopback (EC2 on moto, SQLite,
//! a manual clock): `GET /connection` (who and where from), the audit log a page at a time with
//! filters, the sweeper lease's holder in `/v1/status`, and the console's files. The console
//! itself runs in Chromium in tests/e2e.

use portcullis_core::Role;
use portcullis_engine::Clock;
use portcullis_store::LeaseClaim;
use reqwest::Method;

use crate::connection::{Conn, bearer, group_in};
use crate::support::REGION;

/// dev on one group (`time_to_expire` 2 h), prod and staging without; `rate` changes per
/// principal per minute.
fn config(group: &str, rate: u32) -> String {
    format!(
        r#"
        default_environment = "dev"
        [connection]
        rate_limit_per_minute = {rate}
        [environments.dev]
        time_to_expire = "2h"
        [[environments.dev.targets]]
        region = "{REGION}"
        group_ids = ["{group}"]
        [environments.prod]
        [environments.staging]
        "#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whoami_names_the_caller_its_address_and_whether_it_is_open_and_changes_nothing() {
    let c = Conn::start(&config(&group_in(REGION).await, 2)).await;
    let (ci, _) = c.token("ci", Role::SelfService, &["prod", "staging"], None).await;
    let (ops, _) = c.token("ops", Role::Admin, &[], None).await;
    let who = |secret: String, query: &'static str| {
        let c = &c;
        async move { c.call(Method::GET, query, Some(bearer(&secret)), &[]).await }
    };

    // A token limited to other environments: the first it may see, not the default.
    let (status, me) = who(ci.clone(), "").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["address"], "127.0.0.1/32");
    assert_eq!(me["environment"], "prod");
    assert_eq!(me["environments"], serde_json::json!(["prod", "staging"]));
    assert_eq!((me["principal"].as_str(), me["admin"].as_bool()), (Some("ci"), Some(false)));
    assert_eq!((me["grant"].is_null(), me["ttl"].as_str()), (true, Some("1h")));
    assert_eq!(who(ci.clone(), "?env=dev").await.0, 403, "outside the token's environments");
    assert_eq!(who(ci.clone(), "?env=nowhere").await.0, 404);
    assert_eq!(c.call(Method::GET, "", None, &[]).await.0, 401);

    // Asking is no change: ten asks leave both of the admin's two changes a minute.
    for _ in 0..10 {
        assert_eq!(who(ops.clone(), "").await.0, 200);
    }

    // Open in dev, then ask: the grant and how long it has left, on the manual clock.
    let (status, opened) = c.call(Method::POST, "?env=dev", Some(bearer(&ops)), &[]).await;
    assert_eq!(status, 201, "{opened}");
    c.clock.advance(time::Duration::minutes(30));
    let (status, me) = who(ops.clone(), "").await;
    assert_eq!(status, 200, "{me}");
    assert_eq!((me["environment"].as_str(), me["admin"].as_bool(), me["ttl"].as_str()), (Some("dev"), Some(true), Some("2h")));
    assert_eq!(me["grant"]["cidr"], "127.0.0.1/32");
    assert_eq!(me["grant"]["source"], "self-service");
    // 90 minutes, less what the store's millisecond times cut off.
    assert!((90 * 60 - 1..=90 * 60).contains(&me["expires_in_seconds"].as_i64().unwrap()), "{me}");
    assert_eq!(me["environments"], serde_json::json!(["dev", "prod", "staging"]));

    // Asking changed nothing: the audit log holds the token creations, the add and the one
    // refusal (dev, for ci) only.
    let audit = c.store.audit(None, 100).await.unwrap();
    let actions: Vec<&str> = audit.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["added", "refused", "token-created", "token-created"], "{audit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_is_read_a_page_at_a_time_and_filtered() {
    let c = Conn::start(&config(&group_in(REGION).await, 1000)).await;
    let (ops, _) = c.token("ops", Role::Admin, &[], None).await;
    for i in 0..7 {
        let (status, body) =
            c.v1(Method::POST, "/grants", &ops, Some(serde_json::json!({"cidr": format!("10.{i}.0.0/16")}))).await;
        assert_eq!(status, 400, "{body}");
    }
    let (status, _) = c.v1(Method::POST, "/grants", &ops, Some(serde_json::json!({"cidr": "198.51.100.7", "ttl": "1h"}))).await;
    assert_eq!(status, 201);

    let page = |query: String| {
        let (c, ops) = (&c, ops.clone());
        async move {
            let (status, body) = c.v1(Method::GET, &format!("/audit?{query}"), &ops, None).await;
            assert_eq!(status, 200, "{query}: {body}");
            body.as_array()
                .unwrap()
                .iter()
                .map(|e| (e["id"].as_i64().unwrap(), e["action"].as_str().unwrap().to_string()))
                .collect::<Vec<_>>()
        }
    };
    // Pages of three, each starting below the last id of the page before: every event once.
    let mut seen = Vec::new();
    let mut before = String::new();
    loop {
        let events = page(format!("limit=3{before}")).await;
        let Some(last) = events.last() else { break };
        before = format!("&before={}", last.0);
        seen.extend(events);
    }
    assert_eq!(seen.len(), 9, "seven refusals, an add and a token: {seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 > w[1].0), "newest first, never twice: {seen:?}");
    assert_eq!(page("action=refused&limit=100".into()).await.len(), 7);
    assert_eq!(page("action=added&user=ops".into()).await.len(), 1);
    assert_eq!(page("user=nobody".into()).await, []);
    assert_eq!(page("env=dev&action=token-created".into()).await, [], "a token for any environment is not dev's event");
    let (status, body) = c.v1(Method::GET, "/audit?action=exploded", &ops, None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (400, Some("invalid_action")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("change-approved"), "the message lists the actions: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_the_replica_that_holds_the_sweeper_lease() {
    let c = Conn::start(&config(&group_in(REGION).await, 1000)).await;
    let (ops, _) = c.token("ops", Role::Admin, &[], None).await;
    let (_, status) = c.v1(Method::GET, "/status", &ops, None).await;
    assert!(status["sweeper_lease_holder"].is_null(), "nobody holds it: {status}");
    assert_eq!(status["instance"].as_str(), Some(c.store.instance()));

    let now = c.clock.now();
    let claim =
        LeaseClaim { name: portcullis_engine::SWEEPER_LEASE, holder: "replica-b", now, duration: time::Duration::seconds(15) };
    assert!(c.store.acquire_lease(claim).await.unwrap());
    let (_, status) = c.v1(Method::GET, "/status", &ops, None).await;
    assert_eq!(status["sweeper_lease_holder"]["holder"], "replica-b", "{status}");
    c.clock.advance(time::Duration::seconds(16));
    let (_, status) = c.v1(Method::GET, "/status", &ops, None).await;
    assert!(status["sweeper_lease_holder"].is_null(), "lapsed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_is_served_from_the_binary_under_a_strict_policy() {
    let c = Conn::start(&config(&group_in(REGION).await, 1000)).await;
    let http = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/console/console.js", "text/javascript"),
        ("/console/console.css", "text/css"),
        ("/console/icon.svg", "image/svg+xml"),
    ] {
        let response = http.get(format!("{}{path}", c.base)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}: {headers:?}");
        // Every file carries the policy; what it means is tested in Chromium (test_console.py).
        assert!(headers["content-security-policy"].to_str().unwrap().contains("script-src 'self'"), "{path}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert_eq!(headers["cache-control"], "no-store");
    }
    let page = http.get(format!("{}/", c.base)).send().await.unwrap().text().await.unwrap();
    assert!(page.contains(r#"<script src="/console/console.js" defer></script>"#));
    // The contract is served beside it, and errors elsewhere keep their JSON shape.
    let contract: serde_json::Value = http.get(format!("{}/openapi.json", c.base)).send().await.unwrap().json().await.unwrap();
    assert!(contract["openapi"].as_str().unwrap().starts_with("3.1"));
    let missing = http.get(format!("{}/console/nothing.js", c.base)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<serde_json::Value>().await.unwrap()["error"]["code"], "not_found");
}
