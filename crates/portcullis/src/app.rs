//! What every HTTP handler shares: the application state and the one error type handlers
//! return with `?`. Imports no handler; `routes` sits on top of it.

use std::sync::Arc;

use axum::Json;
use axum::extract::FromRequest;
use axum::extract::rejection::JsonRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_aws::iam::IamVerifier;
use portcullis_core::{Environment, NotFound, PolicyRefusal, Rejection};
use portcullis_engine::{Engine, EngineError};

use crate::auth::{AuthError, Authenticator, Principal};
use crate::config::{Config, ConnectionConfig};
use crate::ratelimit::RateLimiter;
use crate::slack::SlackEndpoint;

/// Every HTTP endpoint refuses bodies larger than this.
pub const BODY_LIMIT: usize = 64 * 1024;

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

    pub(crate) fn status(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn retry_after(mut self, seconds: i64) -> ApiError {
        self.retry_after = Some(seconds);
        self
    }
}

/// Every error answer of `/v1` and `/connection`: `{"error": {"code", "message"}}`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable code to act on, and a message for people.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// e.g. `invalid_request`, `unauthenticated`, `not_allowed`, `no_such_grant`, `group_full`,
    /// `too_many_grants`, `rate_limited`.
    #[schema(example = "not_allowed")]
    pub code: String,
    #[schema(example = "alice may not act in prod")]
    pub message: String,
}

/// The errors every authenticated route of the contract may answer, besides its own: listed
/// once, named in each `#[utoipa::path]` as `CommonErrors`.
#[derive(utoipa::IntoResponses)]
pub enum CommonErrors {
    #[response(status = 401, description = "No valid token (or IAM login)")]
    Unauthenticated(ErrorBody),
    #[response(status = 413, description = "A body over 64 KiB")]
    TooLarge(ErrorBody),
    #[response(status = 429, description = "Too many requests (refusals count apart); see Retry-After")]
    RateLimited(ErrorBody),
    #[response(status = 503, description = "Authentication could not be checked now")]
    Unavailable(ErrorBody),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { error: ErrorDetail { code: self.code.to_string(), message: self.message } };
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

impl From<Rejection> for ApiError {
    fn from(err: Rejection) -> Self {
        let (status, code) = match &err {
            Rejection::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
            Rejection::NotFound(NotFound::UnknownEnvironment { .. }) => (StatusCode::NOT_FOUND, "unknown_environment"),
            Rejection::NotFound(NotFound::NoSuchGrant { .. }) => (StatusCode::NOT_FOUND, "no_such_grant"),
            Rejection::Permission(_) => (StatusCode::FORBIDDEN, "not_allowed"),
            Rejection::Policy(refusal) => match refusal {
                PolicyRefusal::GroupFull { .. } => (StatusCode::CONFLICT, "group_full"),
                PolicyRefusal::ListFull { .. } => (StatusCode::CONFLICT, "list_full"),
                PolicyRefusal::FamilyNotTaken { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "family_not_taken"),
                PolicyRefusal::TooManyGrants { .. } => (StatusCode::CONFLICT, "too_many_grants"),
                _ => (StatusCode::BAD_REQUEST, "invalid_request"),
            },
        };
        ApiError::new(status, code, err.to_string())
    }
}

/// Each kind of rejection answers as the whole does.
macro_rules! rejected {
    ($($kind:ty),*) => {$(
        impl From<$kind> for ApiError {
            fn from(err: $kind) -> Self {
                Rejection::from(err).into()
            }
        }
    )*};
}
rejected!(portcullis_core::InvalidInput, NotFound, portcullis_core::PermissionRefusal, PolicyRefusal);

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        match err {
            EngineError::Rejected(v) => v.into(),
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
pub(crate) struct ApiJson<T>(pub(crate) T);

/// What every handler shares.
pub struct App {
    pub engine: Arc<Engine>,
    pub default_environment: Environment,
    /// `None` when no signing secret is configured: `/slack/commands` then answers 503.
    pub slack: Option<Arc<SlackEndpoint>>,
    pub auth: Authenticator,
    pub connection: ConnectionConfig,
    /// Mutating `/connection` and `/v1` requests per principal that change something.
    pub limiter: RateLimiter,
    /// Mutating requests per principal that were refused (403, 404, …): counted apart, so
    /// refusals never use up a caller's changes, under a cap of their own.
    pub refusals: RateLimiter,
    /// AWS events per principal (`POST /v1/events`): a limit of their own, so a burst of
    /// lifecycle events never uses up a person's changes; an `events` token has none.
    pub events: RateLimiter,
    /// How long a request's body may take to arrive, once its headers are in.
    pub body_read_timeout: std::time::Duration,
    /// How often the ASGs' members are trued up (`member_sync_secs`).
    pub member_sync: time::Duration,
    /// Requests answered, counted for `/metrics` (by `routes`' middleware).
    pub http_requests: crate::metrics::HttpRequests,
}

impl App {
    pub fn new(engine: Arc<Engine>, config: &Config, slack: Option<Arc<SlackEndpoint>>) -> App {
        let iam = config.iam.as_ref().map(|i| IamVerifier::new(&i.sts_endpoint, &i.server_id, i.max_skew));
        App {
            auth: Authenticator::new(engine.clone(), iam),
            default_environment: config.default_environment.clone(),
            connection: config.connection.clone(),
            limiter: RateLimiter::new(config.connection.rate_limit_per_minute),
            refusals: RateLimiter::new(config.connection.rate_limit_per_minute.saturating_mul(REFUSALS_PER_CHANGE)),
            events: RateLimiter::new(config.connection.events_per_minute),
            body_read_timeout: config.http.body_read_timeout,
            member_sync: config.member_sync_interval,
            http_requests: Default::default(),
            engine,
            slack,
        }
    }

    /// Authenticates a request and counts it against the principal's rate limit that
    /// `charge` names.
    pub(crate) async fn principal(&self, headers: &HeaderMap, charge: Charge) -> Result<Principal, ApiError> {
        let principal = self.auth.authenticate(headers).await.map_err(|e| match e {
            AuthError::Unavailable(m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "auth_unavailable", m),
            other => {
                tracing::warn!(error = %other, "request not authenticated");
                ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", other.to_string())
            }
        })?;
        let now = self.engine.clock().now();
        let limited = |wait: time::Duration, per_minute: usize, what: &str| {
            tracing::warn!(principal = %principal.id(), what, "rate-limited");
            let secs = wait.whole_seconds().max(1);
            let message = format!("at most {per_minute} {what} a minute; try again in {secs} s");
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message).retry_after(secs)
        };
        match charge {
            Charge::Nothing => {}
            Charge::Change => {
                // Refusals are counted apart (see `settle`), and only looked at here.
                self.refusals
                    .peek(principal.id(), now)
                    .map_err(|w| limited(w, self.refusals.per_minute(), "refused requests"))?;
                self.limiter.check(principal.id(), now).map_err(|w| limited(w, self.limiter.per_minute(), "changes"))?;
            }
            Charge::Event if principal.is_events() => {}
            Charge::Event => {
                self.events.check(principal.id(), now).map_err(|w| limited(w, self.events.per_minute(), "AWS events"))?;
            }
        }
        Ok(principal)
    }

    /// Settles a mutating request's charge once its answer is known: a refused request (a
    /// client error other than 429) gives its change back and counts as a refusal instead.
    pub(crate) fn settle(&self, principal: &Principal, status: StatusCode) {
        if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
            self.limiter.give_back(principal.id());
            let _ = self.refusals.check(principal.id(), self.engine.clock().now());
        }
    }
}

/// Which rate limit a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Charge {
    /// A read: none.
    Nothing,
    /// A person's change (or a refusal of one): `rate_limit_per_minute`.
    Change,
    /// An AWS event: `events_per_minute`, or none for an `events` token.
    Event,
}

/// How many refused mutating requests a principal may make for each change it may make.
const REFUSALS_PER_CHANGE: u32 = 4;

/// An audit action by its name, or a message listing the names (for `audit --action` and
/// `/v1/audit?action=`).
pub fn audit_action(text: &str) -> Result<portcullis_core::Action, String> {
    portcullis_core::Action::parse(text).ok_or_else(|| {
        let names: Vec<&str> = portcullis_core::Action::ALL.iter().map(|a| a.as_str()).collect();
        format!("action {text:?} is not one of {}", names.join(", "))
    })
}

/// The environment named, or the default; it must be a known one.
pub(crate) fn environment(app: &App, name: Option<&str>) -> Result<Environment, ApiError> {
    let env = match name {
        Some(name) => Environment::parse(name)?,
        None => app.default_environment.clone(),
    };
    app.engine.grants().policy(&env)?;
    Ok(env)
}
