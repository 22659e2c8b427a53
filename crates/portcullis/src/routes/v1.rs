//! `/v1`: grants, the audit log, status, AWS events and guard's change requests, for admin
//! tokens. Each handler carries its OpenAPI description (`#[utoipa::path]`), and `routes!`
//! registers the handler and its description together, so `/openapi.json` cannot name a route
//! the router does not serve.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use portcullis_core::guard::{ChangeRequest, Refusal, RequestStatus, Verdict};
use portcullis_core::{AuditEvent, Cidr, Description, Grant, GrantKey, Interface, ListedGrant, Source, Ttl};
use portcullis_engine::{AddRequest, Apply, AuditQuery, DecisionOutcome, Failure, GuardError, ReconcileReport, Scope, Status};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::{ApiError, ApiJson, App, Charge, CommonErrors, ErrorBody, environment};
use crate::auth::Principal;

type AppState = Arc<App>;

/// The `/v1` routes, behind the admin check.
pub(super) fn routes(app: Arc<App>) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(list_grants, add_grant))
        .routes(routes!(remove_grant))
        .routes(routes!(remove_grant_unencoded))
        .routes(routes!(audit))
        .routes(routes!(event))
        .routes(routes!(list_requests))
        .routes(routes!(approve_request))
        .routes(routes!(deny_request))
        .route_layer(axum::middleware::from_fn_with_state(app, require_admin))
}

/// `/v1` is for admin tokens only, and `POST /v1/events` also for `events` tokens; the
/// principal goes to the handler as an extension. AWS events count against a limit of their
/// own, never a person's changes.
async fn require_admin(
    State(app): State<AppState>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mutating = !matches!(*request.method(), axum::http::Method::GET | axum::http::Method::HEAD);
    let event = mutating && request.uri().path() == EVENTS;
    let charge = match (mutating, event) {
        (_, true) => Charge::Event,
        (true, false) => Charge::Change,
        (false, _) => Charge::Nothing,
    };
    let principal = match app.principal(request.headers(), charge).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let allowed = principal.is_admin() || (event && principal.is_events());
    if !allowed {
        if charge == Charge::Change {
            app.settle(&principal, StatusCode::FORBIDDEN);
        }
        let message = if principal.is_events() {
            "an events token may only send AWS events (POST /v1/events)"
        } else {
            "the /v1 API needs an admin token"
        };
        return ApiError::new(StatusCode::FORBIDDEN, "not_admin", message).into_response();
    }
    request.extensions_mut().insert(principal.clone());
    let response = next.run(request).await;
    if charge == Charge::Change {
        app.settle(&principal, response.status());
    }
    response
}

/// The route AWS events are sent to.
const EVENTS: &str = "/v1/events";

/// The process's health: the last reconcile and its failures, the next expiry, overdue
/// expiries, the outbox's backlog, and which replica holds the sweeper lease.
#[utoipa::path(get, path = "/v1/status", tag = "v1", security(("token" = [])),
    responses(
        (status = 200, body = Status, description = "OK"),
        (status = 403, body = ErrorBody, description = "Not an admin token"),
        CommonErrors,
    ))]
async fn status(State(app): State<AppState>, Extension(principal): Extension<Principal>) -> Result<Response, ApiError> {
    Ok(Json(app.engine.status(&principal.requester()).await?).into_response())
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// One environment (default: the server's default environment).
    env: Option<String>,
    /// Every environment this token may see (`env` is then ignored).
    #[serde(default)]
    all: bool,
}

/// Live grants, in one environment or (`all=true`) every one this token may see.
#[utoipa::path(get, path = "/v1/grants", tag = "v1", security(("token" = [])), params(ListQuery),
    responses(
        (status = 200, body = Vec<ListedGrant>, description = "OK"),
        (status = 400, body = ErrorBody, description = "A malformed query or environment name"),
        (status = 403, body = ErrorBody, description = "Not allowed"),
        (status = 404, body = ErrorBody, description = "Unknown environment"),
        CommonErrors,
    ))]
async fn list_grants(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<ListQuery>,
) -> Result<Response, ApiError> {
    let scope = if q.all { Scope::All } else { Scope::Environment(environment(&app, q.env.as_deref())?) };
    let grants = app.engine.grants().live_grants(&scope, &principal.requester()).await?;
    Ok(Json(ListedGrant::all(&grants)).into_response())
}

/// A grant to add (or refresh).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct AddBody {
    /// An IPv4 or IPv6 address or network.
    #[schema(example = "198.51.100.7")]
    cidr: String,
    /// The environment (default: the server's default environment).
    env: Option<String>,
    /// How long: `Nm` (1-1440), `Nh` (1-24), `Nd` (1-365); default 30d.
    #[schema(example = "12h")]
    ttl: Option<String>,
    /// At most 200 printable characters.
    #[serde(default)]
    description: String,
}

/// What an add or refresh did.
#[derive(Serialize, ToSchema)]
struct GrantAnswer {
    grant: Grant,
    /// True when an existing grant was refreshed (its expiry renewed), not added.
    refreshed: bool,
    /// One line per group or region that could not be changed (the grant stays stored; the
    /// periodic reconcile retries).
    failures: Vec<String>,
    /// What the apply did to each group; none when a refresh needed no firewall call.
    report: Option<ReconcileReport>,
}

/// Adds a grant for the token's user, or refreshes the live one (the later expiry wins).
#[utoipa::path(post, path = "/v1/grants", tag = "v1", security(("token" = [])), request_body = AddBody,
    responses(
        (status = 201, body = GrantAnswer, description = "Added"),
        (status = 200, body = GrantAnswer, description = "Refreshed"),
        (status = 400, body = ErrorBody, description = "A malformed body, network, TTL or description, or one the policy refuses"),
        (status = 403, body = ErrorBody, description = "Not allowed in this environment"),
        (status = 404, body = ErrorBody, description = "Unknown environment"),
        (status = 409, body = ErrorBody, description = "A group is full, or the user holds too many grants"),
        (status = 415, body = ErrorBody, description = "A body that is not JSON"),
        (status = 422, body = ErrorBody, description = "A body of the wrong shape"),
        CommonErrors,
    ))]
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
    let outcome = app.engine.grants().add(AddRequest { cidr, environment, ttl, description, source: Source::Manual, by }).await?;
    let status = if outcome.refreshed { StatusCode::OK } else { StatusCode::CREATED };
    let failures = outcome.report.as_ref().map(|r| Failure::lines(&r.failures())).unwrap_or_default();
    let answer = GrantAnswer { grant: outcome.grant, refreshed: outcome.refreshed, failures, report: outcome.report };
    Ok((status, Json(answer)).into_response())
}

/// What a removal did.
#[derive(Serialize, ToSchema)]
struct RemovedAnswer {
    grant: Grant,
    failures: Vec<String>,
    report: ReconcileReport,
}

/// Removes a grant and revokes its rules now. The network is one path segment, its `/`
/// encoded (`198.51.100.7%2F32`); a bare address means /32 or /128.
#[utoipa::path(delete, path = "/v1/grants/{env}/{cidr}", tag = "v1", security(("token" = [])),
    params(("env" = String, Path, description = "The environment"), ("cidr" = String, Path, description = "The network, `/` encoded as `%2F`")),
    responses(
        (status = 200, body = RemovedAnswer, description = "OK"),
        (status = 400, body = ErrorBody, description = "A malformed request"),
        (status = 403, body = ErrorBody, description = "Not allowed here, or a member grant (membership decides)"),
        (status = 404, body = ErrorBody, description = "Unknown environment, or no such grant"),
        CommonErrors,
    ))]
async fn remove_grant(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((env, cidr)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let key = GrantKey { cidr: Cidr::parse(&cidr)?, environment: environment(&app, Some(&env))? };
    let outcome = app.engine.grants().remove(&key, &principal.requester()).await?;
    let failures = Failure::lines(&outcome.report.failures());
    Ok(Json(RemovedAnswer { grant: outcome.grant, failures, report: outcome.report }).into_response())
}

/// Removes a grant, its network unencoded in the path (`/v1/grants/dev/198.51.100.7/32`), as
/// people type it; otherwise as `DELETE /v1/grants/{env}/{cidr}`.
#[utoipa::path(delete, path = "/v1/grants/{env}/{address}/{prefix}", tag = "v1", security(("token" = [])),
    params(
        ("env" = String, Path, description = "The environment"),
        ("address" = String, Path, description = "The network's address"),
        ("prefix" = String, Path, description = "Its prefix length"),
    ),
    responses(
        (status = 200, body = RemovedAnswer, description = "OK"),
        (status = 400, body = ErrorBody, description = "A malformed request"),
        (status = 403, body = ErrorBody, description = "Not allowed here, or a member grant (membership decides)"),
        (status = 404, body = ErrorBody, description = "Unknown environment, or no such grant"),
        CommonErrors,
    ))]
async fn remove_grant_unencoded(
    app: State<AppState>,
    principal: Extension<Principal>,
    Path((env, address, prefix)): Path<(String, String, String)>,
) -> Result<Response, ApiError> {
    remove_grant(app, principal, Path((env, format!("{address}/{prefix}")))).await
}

/// `POST /v1/events`: an Auto Scaling or CloudTrail event, as the Lambda takes it. Membership
/// reaches every environment that lists the ASG, and guard reaches groups outside any
/// environment, so only a token for every environment may send one.
#[utoipa::path(post, path = "/v1/events", tag = "v1", security(("token" = [])),
    request_body(content = Object, description = "An Auto Scaling lifecycle action or `{\"trueup\": true}`, or a CloudTrail security-group rule change, as EventBridge delivers it"),
    responses(
        (status = 200, body = Object, description = "What was done, as the Lambda answers it"),
        (status = 400, body = ErrorBody, description = "Not an event this handles, or a malformed one"),
        (status = 403, body = ErrorBody, description = "A token limited to some environments"),
        (status = 415, body = ErrorBody, description = "A body that is not JSON"),
        (status = 422, body = ErrorBody, description = "A body of the wrong shape"),
        CommonErrors,
    ))]
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
    app.engine.grants().authorize_everywhere(&principal.requester()).await?;
    let answer = match crate::events::handle(&app.engine, event, Interface::Http).await {
        Ok(answer) => answer,
        Err(crate::events::EventError::Refused(message)) => return Err(invalid(message)),
        Err(crate::events::EventError::Engine(e)) => return Err(e.into()),
    };
    Ok(Json(answer).into_response())
}

impl From<GuardError> for ApiError {
    fn from(err: GuardError) -> Self {
        match err {
            GuardError::NotConfigured => ApiError::new(StatusCode::NOT_FOUND, "guard_not_configured", err.to_string()),
            GuardError::NoSuchRequest(_) => ApiError::new(StatusCode::NOT_FOUND, "no_such_request", err.to_string()),
            GuardError::FromTheFuture { .. } => ApiError::new(StatusCode::BAD_REQUEST, "invalid_event", err.to_string()),
            GuardError::Engine(e) => e.into(),
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct RequestsQuery {
    /// `pending` (the default), `approved`, `applied`, `failed`, `denied`, `expired` or `all`.
    status: Option<String>,
}

/// Guard's change requests, oldest first.
#[utoipa::path(get, path = "/v1/requests", tag = "v1", security(("token" = [])), params(RequestsQuery),
    responses(
        (status = 200, body = Vec<ChangeRequest>, description = "OK"),
        (status = 400, body = ErrorBody, description = "An unknown status"),
        (status = 403, body = ErrorBody, description = "Not allowed"),
        (status = 404, body = ErrorBody, description = "Guard is not configured"),
        CommonErrors,
    ))]
async fn list_requests(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<RequestsQuery>,
) -> Result<Response, ApiError> {
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
    Ok(Json(app.engine.guard()?.requests(status, &principal.requester()).await?).into_response())
}

/// A denial's reason (optional; the body may be empty).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct DenyBody {
    reason: Option<String>,
}

/// An approval's term, for a temporary approval of an addition (optional; the body may be
/// empty for an ordinary approval).
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    /// A temporary approval's term (`24h`, `7d`: the TTL grammar), at most the configured
    /// `temporary_approval` (`GET /v1/status` says it).
    #[serde(rename = "for")]
    #[schema(example = "24h")]
    term: Option<String>,
    /// Break-glass, by the change's requester: why. The addition goes on at once as a timed
    /// rule, for `for` or at most `break_glass_ttl`; every approver is told.
    break_glass: Option<String>,
}

/// What a decision did.
#[derive(Serialize, ToSchema)]
struct DecisionAnswer {
    request: ChangeRequest,
    /// What could not be applied (the sweep retries).
    failures: Vec<String>,
}

/// Reads an optional JSON body; nothing (or whitespace) is `T::default()`.
fn optional_body<T: serde::de::DeserializeOwned + Default>(body: &[u8], shape: &str) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("the body is not {shape}: {e}")))
}

/// Approves a change request as the token's user (an approver, never the requester): it is
/// applied as made; with `for`, an addition is put back for that long only.
#[utoipa::path(post, path = "/v1/requests/{id}/approve", tag = "v1", security(("token" = [])),
    params(("id" = String, Path, description = "The request's id")),
    request_body(content = Option<ApproveBody>),
    responses(
        (status = 200, body = DecisionAnswer, description = "OK"),
        (status = 400, body = ErrorBody, description = "A malformed body or term"),
        (status = 403, body = ErrorBody, description = "Not an approver, or the requester"),
        (status = 404, body = ErrorBody, description = "No such request, or guard is not configured"),
        (status = 409, body = ErrorBody, description = "Already decided, already approved by this user, or expired"),
        (status = 422, body = ErrorBody, description = "Only an addition can be approved for a time"),
        CommonErrors,
    ))]
async fn approve_request(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let ApproveBody { term, break_glass } = optional_body(&body, "{\"for\": \"24h\"}")?;
    let term = term
        .map(|text| portcullis_core::Ttl::parse(&text).map(|t| t.duration()))
        .transpose()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_term", format!("for: {e}")))?;
    let verdict = match (break_glass, term) {
        (Some(reason), term) => {
            let most = app.engine.guarding().and_then(|g| g.break_glass_ttl()).unwrap_or(time::Duration::hours(4));
            Verdict::BreakGlass { reason, term: term.unwrap_or(most) }
        }
        (None, None) => Verdict::Approve,
        (None, Some(term)) => Verdict::ApproveFor(term),
    };
    decided(app.engine.guard()?.decide(&id, verdict, &principal.requester(), Apply::Now).await?)
}

/// Denies a change request as the token's user (an approver): the revert stays.
#[utoipa::path(post, path = "/v1/requests/{id}/deny", tag = "v1", security(("token" = [])),
    params(("id" = String, Path, description = "The request's id")),
    request_body(content = Option<DenyBody>),
    responses(
        (status = 200, body = DecisionAnswer, description = "OK"),
        (status = 400, body = ErrorBody, description = "A malformed body"),
        (status = 403, body = ErrorBody, description = "Not an approver, or the requester"),
        (status = 404, body = ErrorBody, description = "No such request, or guard is not configured"),
        (status = 409, body = ErrorBody, description = "Already decided, or expired"),
        CommonErrors,
    ))]
async fn deny_request(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let DenyBody { reason } = optional_body(&body, "{\"reason\": \"…\"}")?;
    decided(app.engine.guard()?.decide(&id, Verdict::Deny { reason }, &principal.requester(), Apply::Now).await?)
}

/// 200 with the request when decided; 403 `refused` (the token's user is no approver, made the
/// change, …) or 409 when it is already decided.
fn decided(outcome: DecisionOutcome) -> Result<Response, ApiError> {
    match outcome {
        DecisionOutcome::Decided { request, failures } => {
            Ok(Json(DecisionAnswer { request: *request, failures: Failure::lines(&failures) }).into_response())
        }
        DecisionOutcome::Refused(refusal) => {
            let status = match refusal {
                Refusal::NotApprover { .. }
                | Refusal::OwnRequest { .. }
                | Refusal::NotRequester { .. }
                | Refusal::BreakGlassOff => StatusCode::FORBIDDEN,
                Refusal::NotAnAddition { .. } | Refusal::TermTooLong { .. } | Refusal::BreakGlassTooLong { .. } => {
                    StatusCode::UNPROCESSABLE_ENTITY
                }
                Refusal::AlreadyDecided { .. } | Refusal::AlreadyApproved { .. } | Refusal::Expired { .. } => {
                    StatusCode::CONFLICT
                }
            };
            Err(ApiError::new(status, "refused", refusal.to_string()))
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AuditParams {
    /// One environment's events (default: every environment this token may see).
    env: Option<String>,
    /// Only this action's events (`added`, `removed`, `expired`, `refused`, …).
    action: Option<String>,
    /// Only this user's events: a name, or a Slack user's name or id.
    user: Option<String>,
    /// Only events older than this id: the next page starts below the last id of this one.
    before: Option<i64>,
    /// At most this many (default 100, at most 10000).
    limit: Option<usize>,
}

/// The audit log, newest first, a page at a time.
#[utoipa::path(get, path = "/v1/audit", tag = "v1", security(("token" = [])), params(AuditParams),
    responses(
        (status = 200, body = Vec<AuditEvent>, description = "OK"),
        (status = 400, body = ErrorBody, description = "A malformed query, environment or action"),
        (status = 403, body = ErrorBody, description = "Not allowed"),
        (status = 404, body = ErrorBody, description = "Unknown environment"),
        CommonErrors,
    ))]
async fn audit(
    State(app): State<AppState>,
    Extension(principal): Extension<Principal>,
    Query(q): Query<AuditParams>,
) -> Result<Response, ApiError> {
    let environment = q.env.as_deref().map(|e| environment(&app, Some(e))).transpose()?;
    let action = q
        .action
        .as_deref()
        .map(crate::app::audit_action)
        .transpose()
        .map_err(|m| ApiError::new(StatusCode::BAD_REQUEST, "invalid_action", m))?;
    let user = q.user.filter(|u| !u.trim().is_empty());
    let query = AuditQuery { environment, action, user, before: q.before, limit: q.limit.unwrap_or(100) };
    let events = app.engine.grants().audit(&query, &principal.requester()).await?;
    Ok(Json(events).into_response())
}
