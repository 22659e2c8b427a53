//! A loopback proxy in front of moto that answers as AWS does where moto does not:
//!
//! - **EC2** `RevokeSecurityGroupIngress`: rules that are there are revoked, rules that are not
//!   are listed in `UnknownIpPermissions`, and the call succeeds (moto fails the whole call with
//!   `InvalidPermission.NotFound` instead).
//! - **DynamoDB**: requests are isolated from each other, as DynamoDB's are. moto's threaded
//!   server runs a `TransactWriteItems` unlocked (check every condition, then write; on a failed
//!   condition it restores a copy of the table taken before), so two racing transactions can both
//!   pass a condition only one may pass, and a restore can undo a write that had succeeded. The
//!   proxy lets one DynamoDB call through at a time; DynamoDB Streams calls pass freely.
//!
//! - **Auto Scaling** `CompleteLifecycleAction`: moto does not implement it (HTTP 500, which
//!   the SDK retries); the proxy answers it as AWS does, with an empty success, and records the
//!   form it received ([`Proxy::completed`]).
//! - **A failing region** ([`Proxy::fail_region`]): security-group calls signed for it are refused with
//!   `UnauthorizedOperation`, as when a role loses its permissions there.
//! - **A slow EC2** ([`Proxy::delay_ec2`], [`Proxy::delay_action`]): every EC2 call (or every
//!   call of one action) is answered that much later, as when EC2 is degraded.
//! - **A forced race** (the store contract's [`Interleave`]): the next DynamoDB writes are
//!   held until all of them have arrived, so every writer has read before any writes.
//!
//! Every other request passes through unchanged.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use portcullis_core::{AppliedRule, Cidr, Environment, GroupChange, PortRange, Protocol, Route, TargetId};
use portcullis_engine::Firewall;

use crate::support::{REGION, World, moto, sdk_config};

struct Upstream {
    moto: String,
    http: reqwest::Client,
    /// Held for the length of each DynamoDB call.
    dynamodb: tokio::sync::Mutex<()>,
    completed: Mutex<Vec<BTreeMap<String, String>>>,
    failing: Mutex<BTreeSet<String>>,
    /// Every query-protocol call (EC2, Auto Scaling): (region, service, action).
    calls: Mutex<Vec<(String, String, String)>>,
    /// How long each EC2 call is held before it is passed on.
    ec2_delay: Mutex<std::time::Duration>,
    /// Rule changes passed to moto and not yet taken as CloudTrail events.
    trail: Mutex<Vec<crate::trail::Call>>,
    /// One action's calls held this long (`delay_action`).
    action_delay: Mutex<Option<(String, std::time::Duration)>>,
    /// DynamoDB writes held until the hold's count has arrived (`Interleave`).
    writes: Mutex<WriteHold>,
    /// An entry someone adds by hand to a prefix list just before the next modification of it
    /// arrives (`change_list_before_next_modify`).
    hand_entry: Mutex<Option<String>>,
}

#[derive(Default)]
struct WriteHold {
    barrier: Option<Arc<tokio::sync::Barrier>>,
    remaining: usize,
    arrived: usize,
}

/// DynamoDB's writes, as `X-Amz-Target` names them.
const DYNAMODB_WRITES: [&str; 5] = ["PutItem", "UpdateItem", "DeleteItem", "TransactWriteItems", "BatchWriteItem"];

/// A running proxy.
#[derive(Clone)]
pub struct Proxy {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    upstream: Arc<Upstream>,
}

impl Proxy {
    /// Every `CompleteLifecycleAction` received, as its form fields.
    pub fn completed(&self) -> Vec<BTreeMap<String, String>> {
        self.upstream.completed.lock().unwrap().clone()
    }

    /// The query-protocol calls (EC2, Auto Scaling) received, as (region, service, action).
    pub fn calls(&self) -> Vec<(String, String, String)> {
        self.upstream.calls.lock().unwrap().clone()
    }

    /// The CloudTrail events of every rule change passed to moto since the last take, as
    /// EventBridge would deliver them, made by `principal` (`crate::trail`).
    pub fn take_trail(&self, principal: &str) -> Vec<serde_json::Value> {
        let calls = std::mem::take(&mut *self.upstream.trail.lock().unwrap());
        calls.iter().enumerate().map(|(n, call)| crate::trail::event(call, principal, "123456789012", n)).collect()
    }

    /// Holds every EC2 call this long before passing it on (zero: not at all).
    pub fn delay_ec2(&self, delay: std::time::Duration) {
        *self.upstream.ec2_delay.lock().unwrap() = delay;
    }

    /// Holds every call of `action` (an EC2 or Auto Scaling action) this long before passing it
    /// on; `None` ends it.
    pub fn delay_action(&self, delay: Option<(&str, std::time::Duration)>) {
        *self.upstream.action_delay.lock().unwrap() = delay.map(|(a, d)| (a.to_string(), d));
    }

    /// Adds `cidr` to a prefix list, by hand, just before the next `ModifyManagedPrefixList`
    /// arrives: that modification then names a version that is no longer current.
    pub fn change_list_before_next_modify(&self, cidr: &str) {
        *self.upstream.hand_entry.lock().unwrap() = Some(cidr.to_string());
    }

    /// Refuses (or, with `false`, lets through again) security-group calls signed for `region`.
    pub fn fail_region(&self, region: &str, failing: bool) {
        let mut regions = self.upstream.failing.lock().unwrap();
        if failing {
            regions.insert(region.to_string());
        } else {
            regions.remove(region);
        }
    }
}

/// The proxy's address (`http://127.0.0.1:PORT`); it serves until the test's runtime ends.
pub async fn start() -> String {
    start_proxy().await.url
}

/// A proxy with its records and switches; it serves until the test's runtime ends.
pub async fn start_proxy() -> Proxy {
    let upstream = Arc::new(Upstream {
        moto: moto(),
        http: reqwest::Client::new(),
        dynamodb: tokio::sync::Mutex::new(()),
        completed: Mutex::default(),
        failing: Mutex::default(),
        calls: Mutex::default(),
        ec2_delay: Mutex::default(),
        trail: Mutex::default(),
        action_delay: Mutex::default(),
        writes: Mutex::default(),
        hand_entry: Mutex::default(),
    });
    let app = axum::Router::new().fallback(forward).with_state(upstream.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Proxy { url: format!("http://{addr}"), upstream }
}

/// The region and service a SigV4 `Authorization` header is scoped to.
fn signed_scope(headers: &HeaderMap) -> Option<(String, String)> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    let credential = auth.split("Credential=").nth(1)?.split(',').next()?;
    let scope: Vec<&str> = credential.split('/').collect();
    (scope.len() == 5).then(|| (scope[2].to_string(), scope[3].to_string()))
}

/// An SDK configuration whose every service is reached through the proxy at `endpoint`.
pub async fn sdk_config_at(endpoint: &str) -> aws_config::SdkConfig {
    sdk_config().await.into_builder().endpoint_url(endpoint).build()
}

async fn forward(State(up): State<Arc<Upstream>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let target = headers.get("x-amz-target").and_then(|t| t.to_str().ok()).unwrap_or_default();
    if let Some(operation) = target.strip_prefix("DynamoDB_20120810.") {
        if DYNAMODB_WRITES.contains(&operation) {
            let held = {
                let mut hold = up.writes.lock().unwrap();
                (hold.remaining > 0).then(|| {
                    hold.remaining -= 1;
                    hold.arrived += 1;
                    hold.barrier.clone().expect("a hold has a barrier")
                })
            };
            if let Some(barrier) = held {
                // Every held writer has read by the time the last one writes; a hold nobody
                // completes lets its writes through after a while (and `held` says so).
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), barrier.wait()).await;
            }
        }
        let _one_at_a_time = up.dynamodb.lock().await;
        return pass(&up, &method, &uri, &headers, body).await;
    }
    let form: Vec<(String, String)> = serde_urlencoded::from_bytes(&body).unwrap_or_default();
    let action = form.iter().find(|(k, _)| k == "Action").map(|(_, v)| v.as_str());
    let scope = signed_scope(&headers);
    if let (Some((region, service)), Some(action)) = (&scope, action) {
        up.calls.lock().unwrap().push((region.clone(), service.clone(), action.to_string()));
    }
    let held = up.action_delay.lock().unwrap().clone().filter(|(a, _)| Some(a.as_str()) == action).map(|(_, d)| d);
    if let Some(delay) = held {
        tokio::time::sleep(delay).await;
    }
    let delay = *up.ec2_delay.lock().unwrap();
    if scope.as_ref().is_some_and(|(_, service)| service == "ec2") && !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    if let Some((region, service)) = &scope
        && service == "ec2"
        && action.is_some_and(|a| a.contains("SecurityGroup"))
        && up.failing.lock().unwrap().contains(region)
    {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>UnauthorizedOperation</Code>\
             <Message>You are not authorized to perform this operation in {region}.</Message></Error></Errors>\
             <RequestID>proxy</RequestID></Response>"
        );
        return (StatusCode::FORBIDDEN, [("content-type", "text/xml")], xml).into_response();
    }
    if action == Some("ModifyManagedPrefixList")
        && let Some(refused) = stale_version(&up, &method, &uri, &headers, &form).await
    {
        return refused;
    }
    if action == Some("CompleteLifecycleAction") {
        up.completed.lock().unwrap().push(form.iter().cloned().collect());
        let xml = "<CompleteLifecycleActionResponse xmlns=\"http://autoscaling.amazonaws.com/doc/2011-01-01/\">\
                   <CompleteLifecycleActionResult/><ResponseMetadata><RequestId>proxy</RequestId></ResponseMetadata>\
                   </CompleteLifecycleActionResponse>";
        return (StatusCode::OK, [("content-type", "text/xml")], xml).into_response();
    }
    let (status, answer) = send(&up, &method, &uri, &headers, body.clone()).await;
    if let (Some((region, _)), Some(action)) = (&scope, action)
        && status.is_success()
        && crate::trail::ACTIONS.contains(&action)
    {
        let call =
            crate::trail::Call { region: region.clone(), action: action.to_string(), form: form.clone(), answer: answer.clone() };
        up.trail.lock().unwrap().push(call);
    }
    if action != Some("RevokeSecurityGroupIngress") || !answer.contains("InvalidPermission.NotFound") {
        return (status, answer).into_response();
    }
    // As EC2: revoke each rule on its own, and report those that were not there.
    let mut unknown = String::new();
    for single in single_rules(&form) {
        let body = serde_urlencoded::to_string(&single.form).unwrap();
        let (status, answer) = send(&up, &method, &uri, &headers, Bytes::from(body)).await;
        if answer.contains("InvalidPermission.NotFound") {
            unknown.push_str(&single.xml);
        } else if !status.is_success() {
            return (status, answer).into_response();
        }
    }
    if let Some((region, _)) = &scope {
        // As EC2: the call succeeded, so CloudTrail reports it.
        let call = crate::trail::Call {
            region: region.clone(),
            action: "RevokeSecurityGroupIngress".into(),
            form: form.clone(),
            answer: String::new(),
        };
        up.trail.lock().unwrap().push(call);
    }
    let xml = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RevokeSecurityGroupIngressResponse \
         xmlns=\"http://ec2.amazonaws.com/doc/2016-11-15/\"><requestId>proxy</requestId><return>true</return>\
         <unknownIpPermissionSet>{unknown}</unknownIpPermissionSet></RevokeSecurityGroupIngressResponse>"
    );
    (StatusCode::OK, [("content-type", "text/xml")], xml).into_response()
}

/// Passes a request to moto and its answer back whole: status, headers (DynamoDB's error type
/// and checksum among them) and body.
/// As EC2 answers a `ModifyManagedPrefixList` whose `CurrentVersion` is not the list's current
/// version (the API reference: "If you specify a current version number that does not match the
/// true current version number, the request fails"); moto applies it whatever the version. The
/// hand-made change `change_list_before_next_modify` asked for is made first.
async fn stale_version(
    up: &Upstream,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    form: &[(String, String)],
) -> Option<Response> {
    let field = |name: &str| form.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let (id, given) = (field("PrefixListId")?, field("CurrentVersion")?);
    let hand = up.hand_entry.lock().unwrap().take();
    if let Some(cidr) = hand {
        let by_hand = serde_urlencoded::to_string([
            ("Action", "ModifyManagedPrefixList"),
            ("Version", "2016-11-15"),
            ("PrefixListId", id.as_str()),
            ("AddEntry.1.Cidr", cidr.as_str()),
            ("AddEntry.1.Description", "by hand"),
        ])
        .unwrap();
        let (status, answer) = send(up, method, uri, headers, Bytes::from(by_hand)).await;
        assert!(status.is_success(), "the hand-made change: {answer}");
    }
    let describe = serde_urlencoded::to_string([
        ("Action", "DescribeManagedPrefixLists"),
        ("Version", "2016-11-15"),
        ("PrefixListId.1", id.as_str()),
    ])
    .unwrap();
    let (_, answer) = send(up, method, uri, headers, Bytes::from(describe)).await;
    let current = answer.split("<version>").nth(1)?.split("</version>").next()?.trim().to_string();
    (current != given).then(|| {
        let xml = format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response><Errors><Error><Code>PrefixListVersionMismatch</Code>\
             <Message>The prefix list {id} is at version {current}, not {given}.</Message></Error></Errors>\
             <RequestID>proxy</RequestID></Response>"
        );
        (StatusCode::BAD_REQUEST, [("content-type", "text/xml")], xml).into_response()
    })
}

async fn pass(up: &Upstream, method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> Response {
    let response = request(up, method, uri, headers, body).send().await.unwrap();
    let mut answer = Response::builder().status(response.status().as_u16());
    for (name, value) in response.headers() {
        if name != "content-length" && name != "transfer-encoding" {
            answer = answer.header(name.as_str(), value.as_bytes());
        }
    }
    answer.body(axum::body::Body::from(response.bytes().await.unwrap())).unwrap()
}

fn request(up: &Upstream, method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> reqwest::RequestBuilder {
    let url = format!("{}{}", up.moto, uri.path_and_query().map_or("/", |p| p.as_str()));
    let mut request = up.http.request(method.clone(), url).body(body);
    for (name, value) in headers {
        // moto reads the account from the signature's key; the signature itself it ignores.
        if name != "host" && name != "content-length" {
            request = request.header(name, value);
        }
    }
    request
}

async fn send(up: &Upstream, method: &Method, uri: &Uri, headers: &HeaderMap, body: Bytes) -> (StatusCode, String) {
    let response = request(up, method, uri, headers, body).send().await.unwrap();
    let status = StatusCode::from_u16(response.status().as_u16()).unwrap();
    (status, response.text().await.unwrap())
}

/// One rule of a revoke request: the request for it alone, and its `UnknownIpPermissions` item.
struct Single {
    form: Vec<(String, String)>,
    xml: String,
}

fn single_rules(form: &[(String, String)]) -> Vec<Single> {
    let common: Vec<(String, String)> = form.iter().filter(|(k, _)| !k.starts_with("IpPermissions.")).cloned().collect();
    let field = |perm: &str, name: &str| {
        form.iter().find(|(k, _)| *k == format!("IpPermissions.{perm}.{name}")).map(|(_, v)| v.clone()).unwrap_or_default()
    };
    let mut out = Vec::new();
    for (key, cidr) in form {
        let Some(rest) = key.strip_prefix("IpPermissions.") else { continue };
        let (perm, range) = rest.split_once('.').unwrap();
        let (list, cidr_field, xml_list, xml_field) = if range.starts_with("IpRanges.") && range.ends_with(".CidrIp") {
            ("IpRanges", "CidrIp", "ipRanges", "cidrIp")
        } else if range.starts_with("Ipv6Ranges.") && range.ends_with(".CidrIpv6") {
            ("Ipv6Ranges", "CidrIpv6", "ipv6Ranges", "cidrIpv6")
        } else {
            continue;
        };
        let (protocol, from, to) = (field(perm, "IpProtocol"), field(perm, "FromPort"), field(perm, "ToPort"));
        let mut single = common.clone();
        single.extend([
            ("IpPermissions.1.IpProtocol".to_string(), protocol.clone()),
            ("IpPermissions.1.FromPort".to_string(), from.clone()),
            ("IpPermissions.1.ToPort".to_string(), to.clone()),
            (format!("IpPermissions.1.{list}.1.{cidr_field}"), cidr.clone()),
        ]);
        let xml = format!(
            "<item><ipProtocol>{protocol}</ipProtocol><fromPort>{from}</fromPort><toPort>{to}</toPort>\
             <{xml_list}><item><{xml_field}>{cidr}</{xml_field}></item></{xml_list}></item>"
        );
        out.push(Single { form: single, xml });
    }
    out
}

fn rule(cidr: &str, port: u16) -> AppliedRule {
    AppliedRule {
        cidr: Cidr::parse(cidr).unwrap(),
        ec2_cidr: cidr.into(),
        ports: PortRange::single(Protocol::Tcp, port),
        description: "pc:dev test".into(),
    }
}

#[tokio::test]
async fn a_revoke_of_rules_partly_gone_counts_only_what_real_ec2_revoked() {
    let test = async {
        let w = World::new().await;
        let group = w.group(true, &[]).await;
        w.hand_rule(&group, "198.51.100.1/32", 443, "pc:dev test").await;
        w.hand_rule(&group, "2001:db8::1/128", 443, "pc:dev test").await;
        let proxy = start().await;
        let firewall = portcullis_aws::Ec2Firewall::new(&sdk_config().await);
        let change = GroupChange {
            list: None,
            target: TargetId { region: REGION.into(), group_id: group.clone() },
            route: Route { region: REGION.into(), endpoint_url: Some(proxy), role_arn: None },
            environment: Environment::parse("dev").unwrap(),
            authorize: vec![],
            // Two that are there, two already gone (one of each family).
            revoke: vec![
                rule("198.51.100.1/32", 443),
                rule("198.51.100.2/32", 443),
                rule("2001:db8::1/128", 443),
                rule("2001:db8::2/128", 443),
            ],
            update_descriptions: vec![],
        };
        let applied = firewall.apply(&change).await.unwrap();
        assert_eq!((applied.revoked, applied.already_done), (2, 2), "{applied:?}");
        assert!(w.rules(&group).await.is_empty());
        // All gone: nothing revoked, nothing failed.
        let applied = firewall.apply(&change).await.unwrap();
        assert_eq!((applied.revoked, applied.already_done), (0, 4), "{applied:?}");
    };
    tokio::time::timeout(std::time::Duration::from_secs(60), test).await.expect("the test timed out");
}

impl portcullis_store::contract::Interleave for Proxy {
    fn hold(&self, writers: usize) {
        let mut hold = self.upstream.writes.lock().unwrap();
        *hold = WriteHold { barrier: Some(Arc::new(tokio::sync::Barrier::new(writers))), remaining: writers, arrived: 0 };
    }

    fn held(&self) -> usize {
        self.upstream.writes.lock().unwrap().arrived
    }
}
