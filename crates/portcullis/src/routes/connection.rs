//! `POST|DELETE /connection` (seed 001): an authenticated caller opens or closes access for the
//! address it calls from, for its environment's `time_to_expire`.
//!
//! POST: added → 201, already present (refreshed, expiry renewed) → 200. DELETE: removed → 200,
//! not present → 404. Not authenticated → 401; not allowed → 403; too many → 429; every target
//! failed → 502 (the grant stays stored and the reconcile keeps retrying).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::{Cidr, Description, Environment, GrantKey, Source, TargetId};
use portcullis_engine::{AddRequest, ReconcileReport};
use serde::{Deserialize, Serialize};

use crate::app::{ApiError, App, environment};
use crate::auth::{Principal, client_address};

/// The rule description of self-service grants.
const DESCRIPTION: &str = "self-service";

#[derive(Debug, Default, Deserialize)]
pub struct EnvQuery {
    env: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvBody {
    env: Option<String>,
}

/// One security group's part in the answer.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
    for (id, ports) in app.engine.known_targets(env) {
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

/// `POST /connection` opens, `DELETE /connection` closes.
pub(super) async fn handle(
    State(app): State<Arc<App>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    method: Method,
    Query(query): Query<EnvQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let principal = app.principal(&headers, true).await?;
    let answer = match prepare(&app, peer, query, &headers, &body) {
        Ok(key) if method == Method::DELETE => close(&app, &principal, key).await,
        Ok(key) => open(&app, &principal, key).await,
        Err(err) => Err(err),
    };
    app.settle(&principal, answer.as_ref().map_or_else(ApiError::status, |r| r.status()));
    answer
}

async fn open(app: &App, principal: &Principal, key: GrantKey) -> Result<Response, ApiError> {
    let ttl = app.engine.policy(&key.environment)?.connection_ttl();
    let request = AddRequest {
        cidr: key.cidr,
        environment: key.environment.clone(),
        ttl: Some(ttl),
        description: Description::parse(DESCRIPTION)?,
        source: Source::SelfService,
        by: principal.requester(),
    };
    let outcome = app.engine.add(request).await?;
    let targets = targets(app, &key.environment, outcome.report.as_ref());
    let status = status_for(if outcome.refreshed { StatusCode::OK } else { StatusCode::CREATED }, &targets);
    let now = app.engine.clock().now();
    let body = serde_json::json!({
        "result": if outcome.refreshed { "refreshed" } else { "added" },
        "address": key.cidr,
        "environment": key.environment,
        "principal": principal.id(),
        "expires_at": outcome.grant.expires_at.and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok()),
        "expires_in_seconds": outcome.grant.expires_at.map(|t| (t - now).whole_seconds()),
        "ttl": ttl,
        "targets": targets,
        "failures": outcome.report.as_ref().map(|r| r.failure_messages()).unwrap_or_default(),
    });
    Ok((status, Json(body)).into_response())
}

async fn close(app: &App, principal: &Principal, key: GrantKey) -> Result<Response, ApiError> {
    let outcome = app.engine.remove(&key, &principal.requester()).await?;
    let targets = targets(app, &key.environment, Some(&outcome.report));
    let body = serde_json::json!({
        "result": "removed",
        "address": key.cidr,
        "environment": key.environment,
        "principal": principal.id(),
        "targets": targets,
        "failures": outcome.report.failure_messages(),
    });
    Ok((status_for(StatusCode::OK, &targets), Json(body)).into_response())
}
