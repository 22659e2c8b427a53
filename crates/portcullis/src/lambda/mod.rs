//! The events the IP Whitelist Manager's Lambda received, handled the same way by `portcullis invoke` (one
//! event, locally) and `portcullis lambda` (AWS Lambda's Runtime API):
//!
//! - action events (`add`, `remove`, `list`, `refresh`; `../shared/fixtures/event-*.json`);
//! - DynamoDB Stream batches, answered with partial batch failures (`batchItemFailures`);
//! - EventBridge scheduled events: sweep expiries and reconcile, under the sweeper lease;
//! - API Gateway HTTP API (payload 2.0) requests for `/slack/commands` and `/healthz`.
//!
//! Every invocation delivers its own announcements (at most 10 s) before it returns.

use std::sync::Arc;

use aws_lambda_events::apigw::{ApiGatewayV2httpRequest, ApiGatewayV2httpResponse};
use aws_lambda_events::dynamodb::EventRecord;
use aws_lambda_events::encodings::Body;
use aws_lambda_events::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use axum::body::to_bytes;
use axum::http::{Method, Request};
use portcullis_core::{ExternalChange, Interface};
use portcullis_engine::{Cause, Engine, EngineError, Failure, Scope};
use portcullis_store::ip_whitelist::{self, ChangeKind, StreamItems, external_change, unreadable_record};
use serde_json::{Value, json};
use tower::ServiceExt;

use crate::app::App;
use crate::events::{self, AwsEvent, MalformedEvent};
use crate::routes::router;
use crate::slack::DeferredApply;

/// How long an invocation waits for its announcements before returning.
pub const ANNOUNCE_BUDGET: time::Duration = time::Duration::seconds(10);

mod action;

pub use action::{ActionAnswer, ActionError, ActionEvent, ApplyAnswer, UserInfo, handle_action, item_json};

/// An answer as the JSON Lambda returns.
pub(crate) fn to_json(answer: &impl serde::Serialize) -> Value {
    serde_json::to_value(answer).expect("answers serialise")
}

/// What an event is.
pub enum Event {
    Action(ActionEvent),
    Stream(Vec<Value>),
    Scheduled,
    Http(Box<ApiGatewayV2httpRequest>),
    /// An Auto Scaling lifecycle action, true-up or test notification, or a CloudTrail rule
    /// change for guard (`events`).
    Asg(AwsEvent),
    /// An approval's apply, handed over by an invocation that answered Slack first.
    Deferred(DeferredApply),
}

/// Why an invocation failed (Lambda retries it and counts an error).
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error("an event is a JSON object")]
    NotAnObject,
    #[error("Records is not an array")]
    RecordsNotAnArray,
    #[error("invalid action event: {0}")]
    InvalidAction(serde_json::Error),
    #[error("invalid HTTP API event: {0}")]
    InvalidHttp(serde_json::Error),
    #[error("invalid deferred apply: {0}")]
    InvalidDeferred(serde_json::Error),
    #[error(transparent)]
    Guard(#[from] portcullis_engine::GuardError),
    #[error(transparent)]
    InvalidAsg(#[from] MalformedEvent),
    #[error(
        "not an event portcullis handles: expected an action event, DynamoDB Stream records, an EventBridge scheduled event or an API Gateway HTTP API request"
    )]
    Unknown,
    /// An action event's change failed for a reason worth retrying (not a refusal).
    #[error(transparent)]
    Action(ActionError),
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(
        "portcullis lambda runs inside AWS Lambda (AWS_LAMBDA_RUNTIME_API is not set); to handle one event here, use `portcullis invoke --event FILE`"
    )]
    NotInLambda,
    /// Lambda sets these for every function; without them the runtime cannot start.
    #[error("the Lambda environment is incomplete: {0}")]
    LambdaEnvironment(String),
    #[error("the Lambda runtime failed: {0}")]
    Runtime(lambda_runtime::Error),
}

/// Tells which kind of event a payload is; an error says why it is none.
pub fn classify(value: Value) -> Result<Event, InvocationError> {
    let Value::Object(map) = &value else { return Err(InvocationError::NotAnObject) };
    if let Some(records) = map.get("Records") {
        let Value::Array(records) = records else { return Err(InvocationError::RecordsNotAnArray) };
        return Ok(Event::Stream(records.clone()));
    }
    if let Some(job) = map.get(crate::slack::DEFERRED) {
        return serde_json::from_value(job.clone()).map(Event::Deferred).map_err(InvocationError::InvalidDeferred);
    }
    if map.contains_key("action") {
        return serde_json::from_value(value).map(Event::Action).map_err(InvocationError::InvalidAction);
    }
    if let Some(asg) = events::read(&value) {
        return Ok(Event::Asg(asg?));
    }
    if map.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
        || map.get("source").and_then(Value::as_str) == Some("aws.events")
    {
        return Ok(Event::Scheduled);
    }
    if map.get("requestContext").is_some_and(|c| c.get("http").is_some()) {
        return serde_json::from_value(value).map(|r| Event::Http(Box::new(r))).map_err(InvocationError::InvalidHttp);
    }
    Err(InvocationError::Unknown)
}

/// One record of a DynamoDB Stream event, read.
pub fn stream_record(value: &Value) -> ExternalChange {
    let sequence = value.pointer("/dynamodb/SequenceNumber").and_then(Value::as_str).map(str::to_string);
    let event_id = value.get("eventID").and_then(Value::as_str).map(str::to_string);
    let unreadable = |error: String| unreadable_record(event_id.clone(), sequence.clone(), error);
    let record: EventRecord = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => return unreadable(format!("not a DynamoDB stream record: {e}")),
    };
    if record.event_source.as_deref().is_some_and(|s| s != "aws:dynamodb") {
        return unreadable(format!("event source {:?} is not aws:dynamodb", record.event_source));
    }
    let Some(kind) = ChangeKind::parse(&record.event_name) else {
        return unreadable(format!("unknown eventName {:?}", record.event_name));
    };
    let (Some(event_id), Some(seq)) = (event_id.clone(), sequence.clone()) else {
        return unreadable("no eventID or SequenceNumber".into());
    };
    let Some(keys) = ip_whitelist::item_from_json(value.pointer("/dynamodb/Keys")) else { return unreadable("no Keys".into()) };
    let by_service =
        record.user_identity.as_ref().is_some_and(|u| u.type_ == "Service" && u.principal_id == "dynamodb.amazonaws.com");
    external_change(StreamItems {
        event_id,
        sequence: seq,
        kind,
        by_service,
        keys,
        old: ip_whitelist::item_from_json(value.pointer("/dynamodb/OldImage")),
        new: ip_whitelist::item_from_json(value.pointer("/dynamodb/NewImage")),
    })
}

/// Handles a stream batch; the response names the first record to retry, if any.
pub async fn handle_stream(engine: &Engine, records: &[Value]) -> DynamoDbEventResponse {
    let records: Vec<ExternalChange> = records.iter().map(stream_record).collect();
    let outcome = engine.grants().handle_stream(records).await;
    tracing::info!(
        records = outcome.records,
        announced = outcome.announced,
        unreadable = outcome.unreadable,
        failed_at = outcome.failed_at.as_deref().unwrap_or("-"),
        "stream batch handled"
    );
    let mut response = DynamoDbEventResponse::default();
    if let Some(seq) = outcome.failed_at {
        let mut failure = DynamoDbBatchItemFailure::default();
        failure.item_identifier = Some(seq);
        response.batch_item_failures.push(failure);
    }
    response
}

/// A scheduled run: sweep expiries and reconcile everything, if this invocation gets the
/// engine's sweeper lease (another replica may be doing it). An engine without a lease is the
/// only process, and runs at once.
pub async fn handle_scheduled(engine: &Engine, member_sync: time::Duration) -> Result<Value, EngineError> {
    let lease = engine.lease();
    if let Some(lease) = lease
        && !lease.try_acquire().await
    {
        tracing::info!("another process holds the sweeper lease; nothing to do");
        return Ok(json!({"skipped": "another process holds the sweeper lease"}));
    }
    let result = async {
        let sweep = engine.sweep().await?;
        let report = engine.grants().reconcile(Scope::All, Cause::Periodic).await?;
        let mut answer = json!({
            "expired": sweep.expired.iter().map(item_json).collect::<Vec<_>>(),
            "authorized": report.authorized,
            "revoked": report.revoked,
            "failures": Failure::lines(&report.failures()),
        });
        if let Some(true_up) = scheduled_true_up(engine, member_sync).await? {
            answer["members"] = true_up;
        }
        if let Some(guard) = engine.guarding() {
            match guard.sweep().await {
                Ok(report) => answer["guard"] = serde_json::to_value(report).expect("reports serialise"),
                Err(portcullis_engine::GuardError::Engine(e)) => return Err(e),
                Err(e) => answer["guard"] = json!({"error": e.to_string()}),
            }
        }
        Ok::<Value, EngineError>(answer)
    }
    .await;
    if let Some(lease) = lease {
        lease.release().await;
    }
    result
}

/// A true-up of every configured ASG, when none ran in this `member_sync` period: scheduled
/// events come every minute, and the period's claim in the store says whether this one is the
/// first of its period.
async fn scheduled_true_up(engine: &Engine, member_sync: time::Duration) -> Result<Option<Value>, EngineError> {
    if engine.members().map_or(&[][..], |m| m.sources()).is_empty() {
        return Ok(None);
    }
    let period = member_sync.whole_seconds().max(1);
    let key = format!("member-sync:{}", engine.clock().now().unix_timestamp() / period);
    if !engine.grants().first_use(&key, member_sync * 2).await? {
        return Ok(None);
    }
    let true_up = AwsEvent::Member(portcullis_engine::MemberEvent::TrueUp { asg: None, region: None });
    match events::handle(engine, true_up, Interface::Sweeper).await {
        Ok(answer) => Ok(Some(answer)),
        Err(events::EventError::Engine(e)) => Err(e),
        Err(events::EventError::Refused(message)) => Ok(Some(json!({"success": false, "refused": message}))),
    }
}

/// An API Gateway HTTP API request, answered by the same router `serve` uses.
pub async fn handle_http(router: &axum::Router, request: ApiGatewayV2httpRequest) -> ApiGatewayV2httpResponse {
    use base64::Engine as _;
    let mut response = ApiGatewayV2httpResponse::default();
    let path = request.raw_path.clone().unwrap_or_else(|| "/".into());
    let body = match (&request.body, request.is_base64_encoded) {
        (Some(b), true) => match base64::engine::general_purpose::STANDARD.decode(b) {
            Ok(bytes) => bytes,
            Err(e) => {
                response.status_code = 400;
                response
                    .headers
                    .insert(axum::http::header::CONTENT_TYPE, axum::http::HeaderValue::from_static("application/json"));
                let body = json!({"error": {"code": "invalid_body", "message": format!("isBase64Encoded is set, but the body is not base64: {e}")}});
                response.body = Some(Body::Text(body.to_string()));
                return response;
            }
        },
        (Some(b), false) => b.clone().into_bytes(),
        (None, _) => Vec::new(),
    };
    let method = Method::from_bytes(request.request_context.http.method.as_str().as_bytes()).unwrap_or(Method::GET);
    let uri = match request.raw_query_string.as_deref().filter(|q| !q.is_empty()) {
        Some(q) => format!("{path}?{q}"),
        None => path,
    };
    let mut builder = Request::builder().method(method).uri(uri);
    for (name, value) in request.headers.iter() {
        builder = builder.header(name, value);
    }
    let mut http_request = match builder.body(axum::body::Body::from(body)) {
        Ok(r) => r,
        Err(e) => {
            response.status_code = 400;
            response.body = Some(Body::Text(format!("bad request: {e}")));
            return response;
        }
    };
    // The caller's address as API Gateway saw it (it handles forwarding itself).
    let source = request.request_context.http.source_ip.as_deref().and_then(|ip| ip.parse::<std::net::IpAddr>().ok());
    let source = source.unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    http_request.extensions_mut().insert(axum::extract::ConnectInfo(std::net::SocketAddr::new(source, 0)));
    let answer = match router.clone().oneshot(http_request).await {
        Ok(a) => a,
        Err(never) => match never {},
    };
    response.status_code = i64::from(answer.status().as_u16());
    response.headers = answer.headers().clone();
    let bytes = to_bytes(answer.into_body(), 1 << 20).await.unwrap_or_default();
    response.body = Some(Body::Text(String::from_utf8_lossy(&bytes).into_owned()));
    response
}

/// Everything one invocation needs.
pub struct Handler {
    pub engine: Arc<Engine>,
    pub app: Arc<App>,
    /// The HTTP routes over `app`, built once: a warm function answers many requests.
    router: axum::Router,
}

impl Handler {
    pub fn new(engine: Arc<Engine>, app: Arc<App>) -> Handler {
        let router = router(app.clone());
        Handler { engine, app, router }
    }

    /// Handles one event and delivers what it announced; `Err` makes the invocation fail (so
    /// Lambda retries it and counts an error).
    pub async fn handle(&self, payload: Value) -> Result<Value, InvocationError> {
        let result = self.dispatch(payload).await;
        if let Some(outbox) = self.engine.outbox() {
            let report = outbox.flush(ANNOUNCE_BUDGET).await;
            if report.pending > 0 {
                tracing::warn!(pending = report.pending, "announcements left in the outbox for the next invocation");
            }
        }
        result
    }

    async fn dispatch(&self, payload: Value) -> Result<Value, InvocationError> {
        let default_env = &self.app.default_environment;
        match classify(payload)? {
            Event::Action(event) => {
                let action = event.action.clone();
                match handle_action(&self.engine, default_env, event, Interface::Lambda).await {
                    Ok(answer) => Ok(to_json(&answer)),
                    // Retrying bad input or a refusal changes nothing: answered, not failed.
                    Err(err) if err.answered() => Ok(to_json(&err.answer(&action))),
                    Err(err) => Err(InvocationError::Action(err)),
                }
            }
            Event::Stream(records) => Ok(serde_json::to_value(handle_stream(&self.engine, &records).await).expect("serialises")),
            Event::Scheduled => Ok(handle_scheduled(&self.engine, self.app.member_sync).await?),
            Event::Asg(event) => match events::handle(&self.engine, event, Interface::Lambda).await {
                Ok(answer) => Ok(answer),
                Err(events::EventError::Engine(e)) => Err(e.into()),
                // Retrying a refused event changes nothing: answered, not failed.
                Err(events::EventError::Refused(message)) => Ok(json!({"success": false, "refused": message})),
            },
            Event::Http(request) => Ok(serde_json::to_value(handle_http(&self.router, *request).await).expect("serialises")),
            Event::Deferred(job) => self.deferred(job).await,
        }
    }

    /// Applies an approval handed over by the invocation that answered Slack, then replaces
    /// the clicked message with the outcome (applied, or failed and why).
    async fn deferred(&self, job: DeferredApply) -> Result<Value, InvocationError> {
        let (request, failures) = self.engine.guard()?.apply_by_id(&job.request).await?;
        let message = crate::routes::outcome_message(&self.engine, &request, &failures);
        let slack = self.app.slack.as_ref();
        match (slack, job.response_url) {
            (Some(slack), Some(url)) if slack.responder.allows(&url) => {
                if let Err(err) = slack.responder.post(&url, &message).await {
                    tracing::warn!(error = %err, "could not post an applied decision to its response_url");
                }
            }
            (_, Some(_)) => tracing::warn!("a deferred apply's response_url is outside the allowed prefixes; not posted"),
            _ => {}
        }
        Ok(to_json(&ApplyAnswer::new(request, &failures)))
    }
}

/// Checks what the Lambda runtime reads from the environment (it panics on a missing one).
pub fn check_environment(env: &dyn Fn(&str) -> Option<String>) -> Result<(), InvocationError> {
    let Some(api) = env("AWS_LAMBDA_RUNTIME_API") else {
        return Err(InvocationError::NotInLambda);
    };
    if !runtime_api_address(&api) {
        return Err(InvocationError::LambdaEnvironment(format!(
            "AWS_LAMBDA_RUNTIME_API {api:?} is not a host:port (e.g. 127.0.0.1:9001)"
        )));
    }
    let mut problems: Vec<String> =
        ["AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_VERSION", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE"]
            .into_iter()
            .filter(|k| env(k).is_none())
            .map(|k| format!("{k} is not set"))
            .collect();
    if let Some(memory) = env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
        && memory.trim().parse::<i32>().is_err()
    {
        problems.push(format!("AWS_LAMBDA_FUNCTION_MEMORY_SIZE {memory:?} is not a number of megabytes"));
    }
    if problems.is_empty() { Ok(()) } else { Err(InvocationError::LambdaEnvironment(problems.join("; "))) }
}

/// Whether `text` is what Lambda sets `AWS_LAMBDA_RUNTIME_API` to: `host:port`, the host a
/// name or an IPv4 address (or `[IPv6]`), the port a number from 1 to 65535, and nothing else.
fn runtime_api_address(text: &str) -> bool {
    let Some((host, port)) = text.rsplit_once(':') else { return false };
    let port_ok = port.parse::<u16>().is_ok_and(|p| p > 0) && port.bytes().all(|b| b.is_ascii_digit());
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(v6) => v6.parse::<std::net::Ipv6Addr>().is_ok(),
        None => {
            !host.is_empty()
                && host.len() <= 253
                && host.split('.').all(|label| !label.is_empty() && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        }
    };
    port_ok && host_ok
}

/// Runs as an AWS Lambda function until the runtime stops the process.
pub async fn run(handler: Handler) -> Result<(), InvocationError> {
    check_environment(&|k| std::env::var(k).ok())?;
    if handler.engine.guarding().is_some() {
        // At start, so the first log lines say who guard is (learned from STS).
        if let Some(guard) = handler.engine.guarding() {
            guard.own_identities().await;
        }
    }
    let handler = Arc::new(handler);
    let service = lambda_runtime::service_fn(move |event: lambda_runtime::LambdaEvent<Value>| {
        let handler = handler.clone();
        async move { handler.handle(event.payload).await.map_err(lambda_runtime::Error::from) }
    });
    lambda_runtime::run(service).await.map_err(InvocationError::Runtime)
}
