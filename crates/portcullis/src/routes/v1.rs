//! `/v1`: grants, the audit log and status, for admin tokens.

use std::sync::Arc;

use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use portcullis_core::guard::{Refusal, RequestStatus, Verdict};
use portcullis_core::{Cidr, Credential, Description, GrantKey, Interface, ListedGrant, Source, Ttl};
use portcullis_engine::{AddRequest, AuditQuery, DecisionOutcome, GuardError, Scope};
use serde::Deserialize;

use crate::app::{ApiError, ApiJson, App, environment};
use crate::auth::Principal;

type AppState = Arc<App>;

/// The `/v1` routes, behind the admin check.
pub(super) fn routes(app: Arc<App>) -> Router<AppState> {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/grants", get(list_grants).post(add_grant))
        .route("/v1/grants/{env}/{*cidr}", delete(remove_grant))
        .route("/v1/audit", get(audit))
        .route("/v1/events", post(event))
        .route("/v1/requests", get(list_requests))
        .route("/v1/requests/{id}/approve", post(approve_request))
        .route("/v1/requests/{id}/deny", post(deny_request))
        .route_layer(axum::middleware::from_fn_with_state(app, require_admin))
}

/// `/v1` is for admin tokens only; the principal goes to the handler as an extension.
async fn require_admin(
    State(app): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mutating = !matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let principal = match app.principal(request.headers(), mutating).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    if !principal.is_admin() {
        if mutating {
            app.settle(&principal, StatusCode::FORBIDDEN);
        }
        return ApiError::new(StatusCode::FORBIDDEN, "not_admin", "the /v1 API needs an admin token").into_response();
    }
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    if mutating {
        app.settle(&principal, response.status());
    }
    response
}

async fn status(State(app): State<AppState>, Extension(principal): Extension<Principal>) -> Result<Response, ApiError> {
    Ok(Json(app.engine.status(&principal.requester()).await?).into_response())
}

#[derive(Deserialize)]
struct ListQuery {
    env: Option<String>,
    #[serde(default)]
    all: bool,
}

/// `?all=true`: every environment this token may see.
async fn list_grants(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let scope = if q.all { Scope::All } else { Scope::Environment(environment(&app, q.env.as_deref())?) };
    let grants = app.engine.live_grants(&scope, &principal.requester()).await?;
    Ok(Json(ListedGrant::all(&grants)).into_response())
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

/// `POST /v1/events`: an Auto Scaling or CloudTrail event, as the Lambda takes it. Membership
/// reaches every environment that lists the ASG, and guard reaches groups outside any
/// environment, so only a token for every environment may send one.
async fn event(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    ApiJson(body): ApiJson<serde_json::Value>,
) -> Result<Response, ApiError> {
    let invalid = |message: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", message);
    let event =
        match crate::events::read(&body) {
            None => return Err(invalid(
                "not an event /v1/events handles: send an Auto Scaling lifecycle action or true-up, or a CloudTrail rule change"
                    .into(),
            )),
            Some(Err(err)) => return Err(invalid(err.to_string())),
            Some(Ok(event)) => event,
        };
    if let Credential::Token { id, environments } = &principal.requester().credential
        && !environments.is_empty()
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "out_of_scope",
            format!("token {id} is limited to some environments; AWS events need a token for every environment"),
        ));
    }
    let answer = crate::events::handle(&app.engine, event, Interface::Http).await?;
    Ok(Json(answer).into_response())
}

impl From<GuardError> for ApiError {
    fn from(err: GuardError) -> Self {
        match err {
            GuardError::NotConfigured => ApiError::new(StatusCode::NOT_FOUND, "guard_not_configured", err.to_string()),
            GuardError::NoSuchRequest(_) => ApiError::new(StatusCode::NOT_FOUND, "no_such_request", err.to_string()),
            GuardError::Engine(e) => e.into(),
        }
    }
}

#[derive(Deserialize)]
struct RequestsQuery {
    status: Option<String>,
}

/// `GET /v1/requests[?status=pending|approved|denied|expired|all]` (default pending).
async fn list_requests(State(app): State<AppState>, Query(q): Query<RequestsQuery>) -> Result<Response, ApiError> {
    let status = match q.status.as_deref().unwrap_or("pending") {
        "all" => None,
        s => Some(RequestStatus::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_status",
                format!("status {s:?}: use pending, approved, denied, expired or all"),
            )
        })?),
    };
    Ok(Json(app.engine.requests(status).await?).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// A temporary approval's term (`24h`, `7d`: the TTL grammar).
    #[serde(rename = "for")]
    term: Option<String>,
}

/// Reads an optional JSON body; nothing (or whitespace) is `T::default()`.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body is not {shape}: {e}")))
}

async fn approve_request(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let ApproveBody { term } = optional_body(&body, "{\"for\": \"24h\"}")?;
    let verdict = match term {
        None => Verdict::Approve,
        Some(text) => Verdict::ApproveFor(
            portcullis_core::Ttl::parse(&text)
                .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_term", format!("for: {e}")))?
                .duration(),
        ),
    };
    decided(app.engine.decide(&id, verdict, &principal.requester()).await?)
}

async fn deny_request(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let DenyBody { reason } = optional_body(&body, "{\"reason\": \"…\"}")?;
    decided(app.engine.decide(&id, Verdict::Deny { reason }, &principal.requester()).await?)
}

/// 200 with the request when decided; 403 `refused` (the token's user is no approver, made the
/// change, …) or 409 when it is already decided.
fn decided(outcome: DecisionOutcome) -> Result<Response, ApiError> {
    match outcome {
        DecisionOutcome::Decided { request, failures } => {
            Ok(Json(serde_json::json!({"request": request, "failures": failures})).into_response())
        }
        DecisionOutcome::Refused(refusal) => {
            let status = match refusal {
                Refusal::NotApprover { .. } | Refusal::OwnRequest { .. } => StatusCode::FORBIDDEN,
                Refusal::NotAnAddition { .. } => StatusCode::UNPROCESSABLE_ENTITY,
                Refusal::AlreadyDecided { .. } | Refusal::AlreadyApproved { .. } | Refusal::Expired { .. } => {
                    StatusCode::CONFLICT
                }
            };
            Err(ApiError::new(status, "refused", refusal.to_string()))
        }
    }
}

#[derive(Deserialize)]
struct AuditParams {
    env: Option<String>,
    limit: Option<usize>,
}

async fn audit(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<AuditParams>,
) -> Result<Response, ApiError> {
    let environment = q.env.as_deref().map(|e| environment(&app, Some(e))).transpose()?;
    let query = AuditQuery { environment, limit: q.limit.unwrap_or(100) };
    let events = app.engine.audit(&query, &principal.requester()).await?;
    Ok(Json(events).into_response())
}
