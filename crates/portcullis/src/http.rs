//! `portcullis serve`: the HTTP API, the Slack endpoint, the sweeper, the periodic reconcile and
//! the outbox's delivery in one process.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use portcullis_core::{Cidr, Description, Environment, GrantKey, Interface, Source, Ttl, ValidationError};
use portcullis_engine::{AddRequest, Engine, EngineError, Requester};
use portcullis_slack::SigningSecret;
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::Config;
use crate::slack::SlackEndpoint;
use crate::wiring;

/// Every HTTP endpoint refuses bodies larger than this.
pub const BODY_LIMIT: usize = 64 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Failed(String),
}

/// A `/v1` error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        (self.status, Json(body)).into_response()
    }
}

impl From<ValidationError> for ApiError {
    fn from(err: ValidationError) -> Self {
        let (status, code) = match &err {
            ValidationError::UnknownEnvironment { .. } => (StatusCode::NOT_FOUND, "unknown_environment"),
            ValidationError::NotAllowed { .. } => (StatusCode::FORBIDDEN, "not_allowed"),
            ValidationError::NoSuchGrant { .. } => (StatusCode::NOT_FOUND, "no_such_grant"),
            ValidationError::GroupFull { .. } => (StatusCode::CONFLICT, "group_full"),
            ValidationError::TooManyGrants { .. } => (StatusCode::CONFLICT, "too_many_grants"),
            _ => (StatusCode::BAD_REQUEST, "invalid_request"),
        };
        ApiError::new(status, code, err.to_string())
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Validation(v) => v.into(),
            other => {
                tracing::error!(error = %other, "request failed");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", other.to_string())
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let code = if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE { "body_too_large" } else { "invalid_body" };
        ApiError::new(rejection.status(), code, rejection.body_text())
    }
}

/// JSON bodies whose rejections are `/v1` errors.
#[derive(FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
struct ApiJson<T>(T);

/// What every handler shares.
pub struct App {
    pub engine: Arc<Engine>,
    pub default_environment: Environment,
    /// `None` when no signing secret is configured: `/slack/commands` then answers 503.
    pub slack: Option<Arc<SlackEndpoint>>,
}

type AppState = Arc<App>;

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/v1/status", get(status))
        .route("/v1/grants", get(list_grants).post(add_grant))
        .route("/v1/grants/{env}/{*cidr}", delete(remove_grant))
        .route("/v1/audit", get(audit))
        .route("/slack/commands", post(crate::slack::command))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

async fn status(State(app): State<AppState>) -> Result<Response, ApiError> {
    let status = app.engine.status().await?;
    let outbox = app.engine.store().outbox_status().await.map_err(EngineError::from)?;
    let mut body = serde_json::to_value(status).expect("status serialises");
    body["outbox_pending"] = outbox.pending.into();
    // Whether this replica is the one sweeping (null when it runs without a lease).
    body["sweeper_lease"] = app.engine.lease().map(|l| l.is_held()).into();
    Ok(Json(body).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    env: Option<String>,
    #[serde(default)]
    all: bool,
}

fn environment(app: &App, name: Option<&str>) -> Result<Environment, ApiError> {
    let env = match name {
        Some(name) => Environment::parse(name)?,
        None => app.default_environment.clone(),
    };
    app.engine.policy(&env)?;
    Ok(env)
}

async fn list_grants(State(app): State<AppState>, Query(q): Query<ListQuery>) -> Result<Response, ApiError> {
    let env = if q.all { None } else { Some(environment(&app, q.env.as_deref())?) };
    let now = app.engine.clock().now();
    let grants: Vec<_> = app
        .engine
        .store()
        .grants(env.as_ref())
        .await
        .map_err(EngineError::from)?
        .into_iter()
        .filter(|g| g.is_live(now))
        .collect();
    Ok(Json(grants).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddBody {
    cidr: String,
    env: Option<String>,
    ttl: Option<String>,
    #[serde(default)]
    description: String,
    /// The acting user, until the API has authentication.
    #[serde(rename = "as")]
    as_user: Option<String>,
}

fn api_requester(name: Option<String>) -> Result<Requester, ApiError> {
    let name = name.unwrap_or_else(|| "api".into());
    if name.trim().is_empty() || name.chars().any(char::is_control) || name.chars().count() > 100 {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", "\"as\" must be a user name"));
    }
    Ok(Requester::named(name.trim(), Interface::Http))
}

async fn add_grant(State(app): State<AppState>, ApiJson(body): ApiJson<AddBody>) -> Result<Response, ApiError> {
    let cidr = Cidr::parse(&body.cidr)?;
    let ttl = body.ttl.as_deref().map(Ttl::parse).transpose()?;
    let description = Description::parse(&body.description)?;
    let environment = environment(&app, body.env.as_deref())?;
    let by = api_requester(body.as_user)?;
    let outcome = app.engine.add(AddRequest { cidr, environment, ttl, description, source: Source::Manual, by }).await?;
    let status = if outcome.refreshed { StatusCode::OK } else { StatusCode::CREATED };
    let failures = outcome.report.as_ref().map(|r| r.failure_messages()).unwrap_or_default();
    let body = serde_json::json!({"grant": outcome.grant, "refreshed": outcome.refreshed, "failures": failures, "report": outcome.report});
    Ok((status, Json(body)).into_response())
}

#[derive(Deserialize)]
struct RemoveQuery {
    #[serde(rename = "as")]
    as_user: Option<String>,
}

async fn remove_grant(
    State(app): State<AppState>,
    Path((env, cidr)): Path<(String, String)>,
    Query(q): Query<RemoveQuery>,
) -> Result<Response, ApiError> {
    let key = GrantKey { cidr: Cidr::parse(&cidr)?, environment: environment(&app, Some(&env))? };
    let by = api_requester(q.as_user)?;
    let outcome = app.engine.remove(&key, &by).await?;
    let failures = outcome.report.failure_messages();
    Ok(Json(serde_json::json!({"grant": outcome.grant, "failures": failures, "report": outcome.report})).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    env: Option<String>,
    limit: Option<usize>,
}

async fn audit(State(app): State<AppState>, Query(q): Query<AuditQuery>) -> Result<Response, ApiError> {
    let env = q.env.as_deref().map(Environment::parse).transpose()?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    let events = app.engine.store().audit(env.as_ref(), limit).await.map_err(EngineError::from)?;
    Ok(Json(events).into_response())
}

/// Serves until SIGTERM or Ctrl-C, then stops taking requests, lets the loops finish the work
/// in hand, and returns.
pub async fn serve(config: Config) -> Result<(), ServeError> {
    if !config.listen.ip().is_loopback() {
        return Err(ServeError::Refused(format!(
            "refusing to listen on {}: the HTTP API has no authentication yet, so serve listens on loopback addresses only",
            config.listen
        )));
    }
    let (engine, tail) = wiring::replica(&config).await.map_err(|e| ServeError::Failed(e.to_string()))?;
    let engine = Arc::new(engine);
    let slack = slack_endpoint(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| ServeError::Failed(format!("cannot listen on {}: {e}", config.listen)))?;
    let local = listener.local_addr().map_err(|e| ServeError::Failed(e.to_string()))?;
    tracing::info!(address = %local, "serving");
    eprintln!("portcullis listening on http://{local}");

    let (stop_tx, stop_rx) = watch::channel(false);
    let sweeper = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move { engine.run_sweeper(stop).await }
    });
    let reconciler = tokio::spawn({
        let (engine, stop, every) = (engine.clone(), stop_rx.clone(), config.reconcile_interval);
        async move { engine.run_reconciler(every, stop).await }
    });
    let lease = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move {
            if let Some(lease) = engine.lease() {
                lease.run(stop).await;
            }
        }
    });
    let streams = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move {
            if let Some(tail) = tail {
                crate::replica::follow_streams(engine, tail, stop, watch::Sender::new(0)).await;
            }
        }
    });
    let announcer = tokio::spawn({
        let (engine, stop) = (engine.clone(), stop_rx.clone());
        async move {
            if let Some(outbox) = engine.outbox() {
                outbox.run(stop).await;
            }
        }
    });
    let mut stop_for_http = stop_rx.clone();
    let app = Arc::new(App {
        engine: engine.clone(),
        default_environment: config.default_environment.clone(),
        slack: slack.clone(),
    });
    let server = axum::serve(listener, router(app)).with_graceful_shutdown(async move {
        let _ = stop_for_http.wait_for(|stop| *stop).await;
    });
    let signals = async {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    };
    let (served, ()) = tokio::join!(server.into_future(), signals);
    let _ = tokio::join!(sweeper, reconciler, streams, announcer);
    // Released last, so no other replica starts sweeping while this one still is.
    let _ = lease.await;
    // Acknowledged Slack commands finish and answer; then what they announced goes out.
    if let Some(slack) = &slack {
        slack.drain(std::time::Duration::from_secs(20)).await;
    }
    if let Some(outbox) = engine.outbox() {
        let report = outbox.flush(time::Duration::seconds(5)).await;
        if report.pending > 0 {
            tracing::warn!(pending = report.pending, "announcements left in the outbox for the next run");
        }
    }
    served.map_err(|e| ServeError::Failed(e.to_string()))
}

/// The Slack endpoint, when a signing secret is configured; its secrets are read now so a
/// wrong ARN stops the server at start, not at the first command.
pub async fn slack_endpoint(config: &Config) -> Result<Option<Arc<SlackEndpoint>>, ServeError> {
    Ok(build_slack_endpoint(config).await?.map(Arc::new))
}

/// A signing secret kept in Secrets Manager, read again when a signature does not verify.
struct SecretSigningKey {
    arn: String,
}

#[async_trait::async_trait]
impl crate::slack::SecretReload for SecretSigningKey {
    async fn reload(&self) -> Result<SigningSecret, String> {
        let value = wiring::secret_value(&crate::config::Secret::Arn(self.arn.clone())).await.map_err(|e| e.to_string())?;
        let secret = portcullis_slack::secret_field(&value, "signing_secret").map_err(|e| e.to_string())?;
        Ok(SigningSecret::new(secret))
    }
}

/// [`slack_endpoint`], not yet shared (Lambda mode sets it to answer inline).
pub async fn build_slack_endpoint(config: &Config) -> Result<Option<SlackEndpoint>, ServeError> {
    let Some(secret) = &config.slack.signing_secret else {
        tracing::info!("no Slack signing secret configured: /slack/commands is off");
        return Ok(None);
    };
    let failed = |e: wiring::WiringError| ServeError::Failed(format!("Slack signing secret: {e}"));
    let secret = wiring::secret_value(secret).await.map_err(failed)?;
    // The bare secret, or JSON with a `signing_secret` key.
    let secret = portcullis_slack::secret_field(&secret, "signing_secret")
        .map_err(|e| ServeError::Refused(format!("Slack signing secret: {e}")))?;
    let bot_token = match &config.slack.bot_token {
        Some(token) => Some(wiring::secret_value(token).await.map_err(|e| ServeError::Failed(format!("Slack bot token: {e}")))?),
        None => None,
    };
    if bot_token.is_none() && config.policies.values().any(|p| !p.allowed_groups.is_empty()) {
        return Err(ServeError::Refused(
            "user_groups are configured, but checking them needs SLACK_BOT_TOKEN (or SLACK_BOT_TOKEN_SECRET_ARN)".into(),
        ));
    }
    let endpoint = SlackEndpoint::new(&config.slack, SigningSecret::new(secret), bot_token);
    Ok(Some(match &config.slack.signing_secret {
        Some(crate::config::Secret::Arn(arn)) => endpoint.with_reload(Arc::new(SecretSigningKey { arn: arn.clone() })),
        _ => endpoint,
    }))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
