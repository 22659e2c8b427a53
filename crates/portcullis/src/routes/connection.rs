//! `POST|DELETE /connection` (the authenticating security group's API): an authenticated caller opens or closes access for the
//! address it calls from, for its environment's `time_to_expire`.
//!
//! POST: added → 201, already present (refreshed, expiry renewed) → 200. DELETE: removed → 200,
//! not present → 404. Not authenticated → 401; not allowed → 403; too many → 429; every target
//! failed → 502 (the grant stays stored and the reconcile keeps retrying). GET says who the
//! caller is, where from, and whether that address is open (the console's "My access").

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::{Cidr, Description, Environment, Grant, GrantKey, Source, TargetId, Ttl};
use portcullis_engine::{AddRequest, Failure, ReconcileReport};
use serde::{Deserialize, Serialize};
use time::format_description::well_known::Rfc3339;
use utoipa::{IntoParams, ToSchema};

use crate::app::{ApiError, App, Charge, CommonErrors, ErrorBody, environment};
use crate::auth::{Principal, client_address};

/// The rule description of self-service grants.
const DESCRIPTION: &str = "self-service";

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EnvQuery {
    /// The environment (default: the server's default environment).
    env: Option<String>,
}

/// The environment, in the body instead of the query (an empty body is fine).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct EnvBody {
    env: Option<String>,
}

/// One security group's part in the answer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TargetView {
    pub region: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    pub outcome: GroupResult,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What happened to one group, as the answer names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum GroupResult {
    Authorized,
    Revoked,
    Updated,
    /// Nothing needed doing (or the group was not part of this change).
    Unchanged,
    Failed,
}

/// The environment from `?env=E`, else a JSON body `{"env": "E"}` (an empty body is fine).
fn requested_environment(query: EnvQuery, body: &Bytes) -> Result<Option<String>, ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", m);
    let from_body = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let parsed: EnvBody =
            serde_json::from_slice(body).map_err(|e| invalid(format!("the body must be empty or {{\"env\": \"E\"}}: {e}")))?;
        parsed.env
    };
    match (query.env, from_body) {
        (Some(q), Some(b)) if q != b => Err(invalid(format!("?env={q} and the body's env {b:?} differ"))),
        (q, b) => Ok(q.or(b)),
    }
}

/// Each group of the environment with what happened to it; groups in regions that could not be
/// reached are `failed`.
fn targets(app: &App, env: &Environment, report: Option<&ReconcileReport>) -> Vec<TargetView> {
    let mut views: BTreeMap<(String, Option<String>), TargetView> = BTreeMap::new();
    for (id, ports) in app.engine.grants().known_targets(env) {
        let TargetId { region, group_id } = id.clone();
        let outcome = report.and_then(|r| r.outcomes.iter().find(|o| o.target == id));
        let (outcome, error) = match outcome {
            Some(o) if o.error.is_some() => (GroupResult::Failed, o.error.clone()),
            Some(o) => match o.applied {
                Some(a) if a.authorized > 0 => (GroupResult::Authorized, None),
                Some(a) if a.revoked > 0 => (GroupResult::Revoked, None),
                Some(a) if a.updated > 0 => (GroupResult::Updated, None),
                _ => (GroupResult::Unchanged, None),
            },
            None => (GroupResult::Unchanged, None),
        };
        views.insert(
            (region.clone(), Some(group_id.clone())),
            TargetView { region, group_id: Some(group_id), ports: Some(ports.to_string()), outcome, error },
        );
    }
    for f in report.map(|r| r.observe_failures.as_slice()).unwrap_or_default() {
        let mut marked = false;
        for ((region, group), view) in views.iter_mut() {
            if *region == f.region && (f.group_id.is_none() || *group == f.group_id) {
                view.outcome = GroupResult::Failed;
                view.error = Some(f.error.clone());
                marked = true;
            }
        }
        if !marked {
            views.insert(
                (f.region.clone(), f.group_id.clone()),
                TargetView {
                    region: f.region.clone(),
                    group_id: f.group_id.clone(),
                    ports: None,
                    outcome: GroupResult::Failed,
                    error: Some(f.error.clone()),
                },
            );
        }
    }
    views.into_values().collect()
}

/// 502 when there were targets and every one failed; else `ok`.
fn status_for(ok: StatusCode, targets: &[TargetView]) -> StatusCode {
    if !targets.is_empty() && targets.iter().all(|t| t.outcome == GroupResult::Failed) { StatusCode::BAD_GATEWAY } else { ok }
}

/// Finds the environment and the caller's address.
fn prepare(app: &App, peer: SocketAddr, query: EnvQuery, headers: &HeaderMap, body: &Bytes) -> Result<GrantKey, ApiError> {
    let env = environment(app, requested_environment(query, body)?.as_deref())?;
    let address = client_address(peer.ip(), headers, &app.connection.trusted_proxies)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_forwarding", e.to_string()))?;
    if address.is_unspecified() {
        return Err(ApiError::new(StatusCode::BAD_REQUEST, "no_source_address", "the request carries no source address"));
    }
    // Whether the principal may act here is the engine's to decide, in add and remove.
    Ok(GrantKey { cidr: Cidr::host(address), environment: env })
}

/// Opens access for the caller's own address (as the server sees it) in the environment, for
/// the environment's `time_to_expire`: 201 when added, 200 when it was there (its expiry is
/// renewed).
#[utoipa::path(post, path = "/connection", tag = "connection", security(("token" = []), ("iam" = [])), params(EnvQuery),
    request_body(content = Option<EnvBody>),
    responses(
        (status = 201, body = ConnectionAnswer, description = "Added"),
        (status = 200, body = ConnectionAnswer, description = "Already open: refreshed"),
        (status = 400, body = ErrorBody, description = "A malformed body or environment, or no usable source address"),
        (status = 403, body = ErrorBody, description = "Not allowed in this environment"),
        (status = 404, body = ErrorBody, description = "Unknown environment"),
        (status = 409, body = ErrorBody, description = "A group is full, or the user holds too many grants"),
        (status = 502, body = ConnectionAnswer, description = "Every group failed (the grant stays stored; the reconcile retries)"),
        CommonErrors,
    ))]
pub(super) async fn open_connection(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<EnvQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    change(&app, peer, query, &headers, &body, Change::Open).await
}

/// Closes the caller's access: 200 when removed, 404 when it was not open.
#[utoipa::path(delete, path = "/connection", tag = "connection", security(("token" = []), ("iam" = [])), params(EnvQuery),
    request_body(content = Option<EnvBody>),
    responses(
        (status = 200, body = ConnectionAnswer, description = "Removed"),
        (status = 400, body = ErrorBody, description = "A malformed request"),
        (status = 403, body = ErrorBody, description = "Not allowed"),
        (status = 404, body = ErrorBody, description = "Not open, or an unknown environment"),
        (status = 502, body = ConnectionAnswer, description = "Every group failed (the reconcile retries)"),
        CommonErrors,
    ))]
pub(super) async fn close_connection(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<EnvQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    change(&app, peer, query, &headers, &body, Change::Close).await
}

#[derive(Clone, Copy)]
enum Change {
    Open,
    Close,
}

/// Authenticates the caller (a change: counted against its rate limit), finds its address and
/// environment, opens or closes, and settles the charge by the answer.
async fn change(
    app: &App,
    peer: SocketAddr,
    query: EnvQuery,
    headers: &HeaderMap,
    body: &Bytes,
    change: Change,
) -> Result<Response, ApiError> {
    let principal = app.principal(headers, Charge::Change).await?;
    if principal.is_events() {
        app.settle(&principal, StatusCode::FORBIDDEN);
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "not_allowed",
            "an events token may only send AWS events (POST /v1/events)",
        ));
    }
    let answer = match (prepare(app, peer, query, headers, body), change) {
        (Ok(key), Change::Open) => open(app, &principal, key).await,
        (Ok(key), Change::Close) => close(app, &principal, key).await,
        (Err(err), _) => Err(err),
    };
    app.settle(&principal, answer.as_ref().map_or_else(ApiError::status, |r| r.status()));
    answer
}

/// What opening or closing did.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConnectionAnswer {
    /// `added`, `refreshed` or `removed`.
    result: &'static str,
    #[schema(value_type = String, example = "203.0.113.7/32")]
    address: Cidr,
    #[schema(value_type = String)]
    environment: Environment,
    /// Who asked: the token's user or the IAM principal.
    principal: String,
    /// When access closes (an open only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    expires_in_seconds: Option<i64>,
    /// The environment's `time_to_expire` (an open only).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "1h")]
    ttl: Option<Ttl>,
    targets: Vec<TargetView>,
    failures: Vec<String>,
}

async fn open(app: &App, principal: &Principal, key: GrantKey) -> Result<Response, ApiError> {
    let ttl = app.engine.grants().policy(&key.environment)?.connection_ttl();
    let request = AddRequest {
        cidr: key.cidr,
        environment: key.environment.clone(),
        ttl: Some(ttl),
        description: Description::parse(DESCRIPTION)?,
        source: Source::SelfService,
        by: principal.requester(),
    };
    let outcome = app.engine.grants().add(request).await?;
    let targets = targets(app, &key.environment, outcome.report.as_ref());
    let status = status_for(if outcome.refreshed { StatusCode::OK } else { StatusCode::CREATED }, &targets);
    let now = app.engine.clock().now();
    let answer = ConnectionAnswer {
        result: if outcome.refreshed { "refreshed" } else { "added" },
        address: key.cidr,
        environment: key.environment,
        principal: principal.id().to_string(),
        expires_at: outcome.grant.expires_at.and_then(|t| t.format(&Rfc3339).ok()),
        expires_in_seconds: outcome.grant.expires_at.map(|t| (t - now).whole_seconds()),
        ttl: Some(ttl),
        targets,
        failures: outcome.report.as_ref().map(|r| Failure::lines(&r.failures())).unwrap_or_default(),
    };
    Ok((status, Json(answer)).into_response())
}

async fn close(app: &App, principal: &Principal, key: GrantKey) -> Result<Response, ApiError> {
    let outcome = app.engine.grants().remove(&key, &principal.requester()).await?;
    let targets = targets(app, &key.environment, Some(&outcome.report));
    let status = status_for(StatusCode::OK, &targets);
    let answer = ConnectionAnswer {
        result: "removed",
        address: key.cidr,
        environment: key.environment,
        principal: principal.id().to_string(),
        expires_at: None,
        expires_in_seconds: None,
        ttl: None,
        targets,
        failures: Failure::lines(&outcome.report.failures()),
    };
    Ok((status, Json(answer)).into_response())
}

/// Who the caller is and where it calls from: what the console's "My access" shows.
#[derive(Debug, Serialize, ToSchema)]
pub struct Whoami {
    /// The caller's address as the server sees it (the peer, or `X-Forwarded-For` from a
    /// trusted proxy).
    #[schema(value_type = String, example = "203.0.113.7/32")]
    address: Cidr,
    /// The environment asked about.
    #[schema(value_type = String)]
    environment: Environment,
    /// Every environment this credential may see.
    #[schema(value_type = Vec<String>)]
    environments: Vec<Environment>,
    /// The token's user or the IAM principal.
    principal: String,
    /// Whether the credential may use `/v1`.
    admin: bool,
    /// How long an open lasts here (`time_to_expire`).
    #[schema(value_type = String, example = "1h")]
    ttl: Ttl,
    /// The caller's live grant for this address, if open.
    grant: Option<Grant>,
    /// Seconds until it closes.
    expires_in_seconds: Option<i64>,
}

/// Says who the caller is, the address it calls from as the server sees it, and whether that
/// address is open now; changes nothing. Without `env`: the default environment, or the first
/// one the credential may see.
#[utoipa::path(get, path = "/connection", tag = "connection", security(("token" = []), ("iam" = [])), params(EnvQuery),
    responses(
        (status = 200, body = Whoami, description = "OK"),
        (status = 400, body = ErrorBody, description = "A malformed environment, or no usable source address"),
        (status = 403, body = ErrorBody, description = "Not allowed in this environment"),
        (status = 404, body = ErrorBody, description = "Unknown environment"),
        CommonErrors,
    ))]
pub(super) async fn whoami(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<EnvQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = app.principal(&headers, Charge::Nothing).await?;
    let by = principal.requester();
    let environments: Vec<Environment> = app.engine.grants().visible_environments(&by).into_iter().collect();
    let query = match query.env {
        Some(env) => EnvQuery { env: Some(env) },
        // The default environment, else the first this credential may see.
        None if environments.contains(&app.default_environment) || environments.is_empty() => EnvQuery::default(),
        None => EnvQuery { env: environments.first().map(|e| e.to_string()) },
    };
    let key = prepare(&app, peer, query, &headers, &Bytes::new())?;
    let grant = app.engine.grants().live_grant(&key, &by).await?;
    let now = app.engine.clock().now();
    let answer = Whoami {
        address: key.cidr,
        ttl: app.engine.grants().policy(&key.environment)?.connection_ttl(),
        environment: key.environment,
        environments,
        principal: principal.id().to_string(),
        admin: principal.is_admin(),
        expires_in_seconds: grant.as_ref().and_then(|g| g.expires_at).map(|t| (t - now).whole_seconds()),
        grant,
    };
    Ok(Json(answer).into_response())
}
