//! `portcullis serve`: the HTTP API, the Slack endpoint, the sweeper, the periodic reconcile and
//! the outbox's delivery in one process.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Extension, FromRequest, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use portcullis_aws::iam::IamVerifier;
use portcullis_core::{Cidr, Description, Environment, GrantKey, Source, Ttl, ValidationError};
use portcullis_engine::{AddRequest, Engine, EngineError};
use portcullis_slack::SigningSecret;
use serde::Deserialize;
use tokio::sync::watch;

use crate::auth::{AuthError, Authenticator, Principal};
use crate::config::{Config, ConnectionConfig};
use crate::ratelimit::RateLimiter;
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

/// A `/v1` (and `/connection`) error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<i64>,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into(), retry_after: None }
    }

    fn retry_after(mut self, seconds: i64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
        }
        response
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
    pub auth: Authenticator,
    pub connection: ConnectionConfig,
    /// Mutating `/connection` and `/v1` requests per principal.
    pub limiter: RateLimiter,
}

impl App {
    pub fn new(engine: Arc<Engine>, config: &Config, slack: Option<Arc<SlackEndpoint>>) -> App {
        let iam = config.iam.as_ref().map(|i| IamVerifier::new(&i.sts_endpoint, &i.server_id, i.max_skew));
        App {
            auth: Authenticator::new(engine.store().clone(), engine.clock().clone(), iam),
            default_environment: config.default_environment.clone(),
            connection: config.connection.clone(),
            limiter: RateLimiter::new(config.connection.rate_limit_per_minute),
            engine,
            slack,
        }
    }

    /// Authenticates a request and, for a mutating one, counts it against the principal's
    /// rate limit.
    pub(crate) async fn principal(&self, headers: &HeaderMap, mutating: bool) -> Result<Principal, ApiError> {
        let principal = self.auth.authenticate(headers).await.map_err(|e| match e {
            AuthError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", m),
            other => {
                tracing::warn!(error = %other, "request not authenticated");
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", other.to_string())
            }
        })?;
        if mutating && let Err(wait) = self.limiter.check(principal.id(), self.engine.clock().now()) {
            tracing::warn!(principal = %principal.id(), "rate-limited");
            let secs = wait.whole_seconds().max(1);
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!("at most {} changes a minute; try again in {secs} s", self.limiter.per_minute()),
            )
            .retry_after(secs));
        }
        Ok(principal)
    }
}

type AppState = Arc<App>;

pub fn router(app: Arc<App>) -> Router {
    let v1 = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/grants", get(list_grants).post(add_grant))
        .route("/v1/grants/{env}/{*cidr}", delete(remove_grant))
        .route("/v1/audit", get(audit))
        .route_layer(axum::middleware::from_fn_with_state(app.clone(), require_admin));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(v1)
        .route("/connection", post(crate::connection::handle).delete(crate::connection::handle))
        .route("/slack/commands", post(crate::slack::command))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

/// `/v1` is for admin tokens only; the principal goes to the handler as an extension.
async fn require_admin(State(app): State<AppState>, mut request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let mutating = !matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let principal = match app.principal(request.headers(), mutating).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !principal.is_admin() {
        return ApiError::new(StatusCode::FORBIDDEN, "not_admin", "the /v1 API needs an admin token").into_response();
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
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

pub(crate) fn environment(app: &App, name: Option<&str>) -> Result<Environment, ApiError> {
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
}

async fn add_grant(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<AddBody>,
) -> Result<Response, ApiError> {
    let cidr = Cidr::parse(&body.cidr)?;
    let ttl = body.ttl.as_deref().map(Ttl::parse).transpose()?;
    let description = Description::parse(&body.description)?;
    let environment = environment(&app, body.env.as_deref())?;
    let by = principal.requester();
    let outcome = app.engine.add(AddRequest { cidr, environment, ttl, description, source: Source::Manual, by }).await?;
    let status = if outcome.refreshed { StatusCode::OK } else { StatusCode::CREATED };
    let failures = outcome.report.as_ref().map(|r| r.failure_messages()).unwrap_or_default();
    let body = serde_json::json!({"grant": outcome.grant, "refreshed": outcome.refreshed, "failures": failures, "report": outcome.report});
    Ok((status, Json(body)).into_response())
}

async fn remove_grant(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((env, cidr)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = GrantKey { cidr: Cidr::parse(&cidr)?, environment: environment(&app, Some(&env))? };
    let by = principal.requester();
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
    let app = Arc::new(App::new(engine.clone(), &config, slack.clone()));
    let server = axum::serve(listener, router(app).into_make_service_with_connect_info::<std::net::SocketAddr>()).with_graceful_shutdown(async move {
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
    if bot_token.is_none() && config.policies.values().any(|p| !p.allowed_groups().is_empty()) {
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

pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
