//! The HTTP routes, over [`App`]: `/v1` (admin tokens), `/connection` (any token or IAM login),
//! `/slack/commands` and `/slack/interactions` (Slack's signature), `/healthz`, the OpenAPI
//! contract of `/v1` and `/connection` at `/openapi.json`, and the operators' console at `/`.
//! `serve` and Lambda run the same router.

mod connection;
mod console;
pub mod interactions;
pub mod slack;
mod v1;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use utoipa::OpenApi;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::{ApiError, App, BODY_LIMIT};

pub use connection::{GroupResult, TargetView};
pub use console::CONTENT_SECURITY_POLICY;
pub use interactions::outcome_message;

type AppState = Arc<App>;

/// The contract's frame: what it is, and how callers authenticate. The paths and schemas come
/// from the handlers themselves (`api`).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "portcullis",
        description = "Time-boxed, audited network allowlisting for AWS security groups: `/connection` \
            opens and closes access for the caller's own address (any valid token or IAM login), `/v1` \
            manages grants, the audit log and guard's change requests (admin tokens). Every error is \
            `{\"error\": {\"code\", \"message\"}}`; bodies over 64 KiB are refused (413).",
        license(name = "Apache-2.0")
    ),
    modifiers(&Security),
    tags((name = "v1", description = "Administration: admin tokens only"),
         (name = "connection", description = "Self-service access for the caller's own address"))
)]
struct ApiDoc;

struct Security;

impl utoipa::Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let bearer = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("An API token from `portcullis token create`"))
            .build();
        components.add_security_scheme("token", SecurityScheme::Http(bearer));
        // `Authorization: PortcullisIAM <base64 JSON>`: a signed, unsent sts:GetCallerIdentity.
        let iam = ApiKey::Header(ApiKeyValue::with_description(
            "Authorization",
            "`PortcullisIAM <base64 JSON>`: a signed, unsent sts:GetCallerIdentity, as `portcullis open --aws` sends it",
        ));
        components.add_security_scheme("iam", SecurityScheme::ApiKey(iam));
    }
}

/// The routes the contract describes, with the contract they make.
fn api(app: &AppState) -> (Router<AppState>, utoipa::openapi::OpenApi) {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(v1::routes(app.clone()))
        .routes(routes!(connection::whoami, connection::open_connection, connection::close_connection))
        .split_for_parts()
}

/// Every route, with `/openapi.json` (the OpenAPI 3.1 contract of `/v1` and `/connection`)
/// made from the same routes. Build it once per process and clone it per request: making the
/// contract walks every handler's schemas.
pub fn router(app: Arc<App>) -> Router {
    let (api, contract) = api(&app);
    let contract: Arc<str> = contract.to_json().expect("the OpenAPI document serialises").into();
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(api)
        .route("/openapi.json", get(move || async move { ([(header::CONTENT_TYPE, "application/json")], contract.to_string()) }))
        .route("/slack/commands", post(slack::command))
        .route("/slack/interactions", post(interactions::interaction))
        .merge(console::routes())
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), bounded_body))
        .layer(axum::middleware::from_fn(json_errors))
        .layer(axum::middleware::from_fn_with_state(app.clone(), count_requests))
        .layer(axum::middleware::map_response(crate::headers::nosniff))
        .with_state(app)
}

/// Counts every answer for `/metrics`, by the route's pattern (never the raw path, so
/// addresses and ids in paths do not become labels), method and status.
async fn count_requests(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let method = match request.method().as_str() {
        m @ ("GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let response = next.run(request).await;
    let labels = crate::metrics::HttpLabels { route, method, status: response.status().as_u16() };
    app.http_requests.get_or_create(&labels).inc();
    response
}

/// Reads every request's body before any handler sees it: a declared `Content-Length` over
/// the limit is answered 413 at once, without reading; a body that does not arrive within
/// the configured time is answered 408, so a client cannot hold a request open by sending
/// its body a byte at a time (or never).
async fn bounded_body(
    axum::extract::State(app): axum::extract::State<Arc<App>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let too_large = || {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "body_too_large", format!("bodies are limited to {} KiB", BODY_LIMIT / 1024))
    };
    if declared.is_some_and(|n| n > BODY_LIMIT as u64) {
        return unread(too_large());
    }
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(app.body_read_timeout, axum::body::to_bytes(body, BODY_LIMIT)).await {
        Err(_) => {
            let secs = app.body_read_timeout.as_secs();
            unread(ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!("the request body did not arrive within {secs} s"),
            ))
        }
        Ok(Err(err)) if err.to_string().contains("length limit") => unread(too_large()),
        Ok(Err(err)) => {
            unread(ApiError::new(StatusCode::BAD_REQUEST, "invalid_body", format!("could not read the request body: {err}")))
        }
        Ok(Ok(bytes)) => next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await,
    }
}

/// An answer given before the request's body was read to its end: the connection cannot carry
/// another request, so the answer says it closes (`Connection: close`) and no client reuses it.
fn unread(error: ApiError) -> Response {
    let mut response = error.into_response();
    response.headers_mut().insert(header::CONNECTION, axum::http::HeaderValue::from_static("close"));
    response
}

/// The one rejection handler: every error answer is `{"error": {"code", "message"}}`,
/// whoever made it (axum's extractors answer 400, 405, 413 and 415 in plain text or not at
/// all). Slack's own conventions (a 200 with a message for a mistake) are not errors, so
/// they pass through.
async fn json_errors(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 16 * 1024).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_lowercase() } else { text };
    let code = match status {
        StatusCode::BAD_REQUEST => "invalid_request",
        StatusCode::UNAUTHORIZED => "unauthenticated",
        StatusCode::FORBIDDEN => "not_allowed",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::REQUEST_TIMEOUT => "request_timeout",
        StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::TOO_MANY_REQUESTS => "rate_limited",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        s if s.is_server_error() => "internal",
        _ => "invalid_request",
    };
    let mut answer = ApiError::new(status, code, message).into_response();
    for name in [header::ALLOW, header::RETRY_AFTER, header::WWW_AUTHENTICATE] {
        if let Some(value) = parts.headers.get(&name) {
            answer.headers_mut().insert(name, value.clone());
        }
    }
    answer
}
