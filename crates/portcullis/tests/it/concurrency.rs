//! Concurrent changes to one environment: coalesced into few applies, each caller answered
//! only when its own rules exist.

use std::sync::Arc;

use portcullis_core::Role;
use serde_json::Value;

use crate::connection::{Conn, bearer, group_in, keys_in};
use crate::support::REGION;

/// Three groups on one port, so fifty addresses fit the 60-rule quota; a trusted proxy on
/// loopback, so each client may name its own address.
async fn three_groups() -> (Conn, Vec<String>) {
    let groups = vec![group_in(REGION).await, group_in(REGION).await, group_in(REGION).await];
    let ids = groups.iter().map(|g| format!("\"{g}\"")).collect::<Vec<_>>().join(", ");
    let c = Conn::start(&format!(
        "default_environment = \"dev\"\n[connection]\ntrusted_proxies = [\"127.0.0.1/32\"]\nrate_limit_per_minute = 1000\n\
         [environments.dev]\nmax_grants_per_user = 100\n[[environments.dev.targets]]\nregion = \"{REGION}\"\ngroup_ids = [{ids}]\nports = \"tcp:7233\"\n"
    ))
    .await;
    (c, groups)
}

/// A self-service token for each of `n` clients.
async fn self_service_tokens(c: &Conn, n: usize) -> Vec<String> {
    let mut tokens = Vec::with_capacity(n);
    for i in 0..n {
        tokens.push(c.token(&format!("ci-{i}"), Role::SelfService, &[], None).await.0);
    }
    tokens
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_first_opens_are_two_applies_and_every_answer_is_true() {
    let (c, groups) = three_groups().await;
    let c = Arc::new(c);
    let tokens = self_service_tokens(&c, 50).await;
    let calls_before = c.firewall.calls().snapshot();
    let mut clients = tokio::task::JoinSet::new();
    for (i, token) in tokens.into_iter().enumerate() {
        let (c, groups) = (c.clone(), groups.clone());
        clients.spawn(async move {
            let address = format!("198.51.100.{}", i + 1);
            let (status, body) = c.call(reqwest::Method::POST, "", Some(bearer(&token)), &[("x-forwarded-for", &address)]).await;
            // The moment it is answered, the address must be on every group.
            let mut missing = Vec::new();
            for g in &groups {
                if !keys_in(REGION, g).await.contains(&(format!("{address}/32"), 7233)) {
                    missing.push(g.clone());
                }
            }
            (address, status, body, missing)
        });
    }
    let results: Vec<(String, u16, Value, Vec<String>)> =
        tokio::time::timeout(std::time::Duration::from_secs(120), clients.join_all()).await.expect("fifty opens finish");
    for (address, status, body, missing) in &results {
        assert_eq!(*status, 201, "{address}: {body}");
        assert!(missing.is_empty(), "{address} answered 201 but is missing from {missing:?}: {body}");
        let targets = body["targets"].as_array().unwrap();
        assert_eq!(targets.len(), 3, "{body}");
        assert!(targets.iter().all(|t| t["outcome"] != "failed"), "{body}");
    }
    let calls = c.firewall.calls().snapshot();
    let made = |op: &str| calls.get(op).copied().unwrap_or(0) - calls_before.get(op).copied().unwrap_or(0);
    assert!(made("AuthorizeSecurityGroupIngress") <= 6, "at most two Authorize per group: {calls:?}");
    assert!(made("DescribeSecurityGroups") <= 2, "at most two describes for the region: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_removes_adds_and_an_expiry_all_land() {
    use portcullis_core::{Cidr, Description, Environment, Interface, Source, Ttl};
    use portcullis_engine::{AddRequest, Requester, Scope};
    let (c, groups) = three_groups().await;
    let c = Arc::new(c);
    let tokens = self_service_tokens(&c, 40).await;
    let address = |i: usize| format!("198.51.100.{}", i + 1);
    for (i, token) in tokens.iter().enumerate().take(20) {
        let (status, body) = c.call(reqwest::Method::POST, "", Some(bearer(token)), &[("x-forwarded-for", &address(i))]).await;
        assert_eq!(status, 201, "{body}");
    }
    // And one grant that is about to expire.
    let expiring = AddRequest {
        cidr: Cidr::parse("203.0.113.99").unwrap(),
        environment: Environment::parse("dev").unwrap(),
        ttl: Some(Ttl::parse("1m").unwrap()),
        description: Description::parse("").unwrap(),
        source: Source::Manual,
        by: Requester::named("ops", Interface::Cli),
    };
    c.engine.grants().add(expiring).await.unwrap();

    // At once: the first twenty close, twenty more open, and the sweeper expires the minute-long one.
    let mut work = tokio::task::JoinSet::new();
    for (i, token) in tokens.iter().enumerate() {
        let (c, token, addr) = (c.clone(), token.clone(), address(i));
        let method = if i < 20 { reqwest::Method::DELETE } else { reqwest::Method::POST };
        work.spawn(async move {
            let answer = c.call(method.clone(), "", Some(bearer(&token)), &[("x-forwarded-for", &addr)]).await;
            (addr, method, answer)
        });
    }
    c.clock.advance(time::Duration::minutes(2));
    let swept = c.engine.sweep().await.expect("the sweep ran");
    let results = tokio::time::timeout(std::time::Duration::from_secs(120), work.join_all()).await.expect("all finish");
    for (addr, method, (status, body)) in &results {
        let expected = if *method == reqwest::Method::DELETE { 200 } else { 201 };
        assert_eq!(*status, expected, "{method} {addr}: {body}");
    }
    assert_eq!(swept.expired.iter().map(|g| g.cidr.to_string()).collect::<Vec<_>>(), ["203.0.113.99/32"]);

    let mut live: Vec<String> = c
        .engine
        .grants()
        .live_grants(&Scope::All, &Requester::named("test", Interface::Cli))
        .await
        .unwrap()
        .iter()
        .map(|g| g.cidr.to_string())
        .collect();
    live.sort();
    let mut opened: Vec<String> = (20..40).map(|i| format!("{}/32", address(i))).collect();
    opened.sort();
    assert_eq!(live, opened, "exactly the twenty new opens are stored");
    for g in &groups {
        let mut keys: Vec<String> = keys_in(REGION, g).await.into_iter().map(|(cidr, _)| cidr).collect();
        keys.sort();
        assert_eq!(keys, opened, "group {g} holds exactly the live grants, nothing removed or expired");
    }
}
