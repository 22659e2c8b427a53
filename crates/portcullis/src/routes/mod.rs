//! The HTTP routes, over [`App`]: `/v1` (admin tokens), `/connection` (any token or IAM login),
//! `/slack/commands` and `/slack/interactions` (Slack's signature) and `/healthz`. `serve` and Lambda run the same router.

mod connection;
pub mod interactions;
pub mod slack;
mod v1;

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::app::{ApiError, App, BODY_LIMIT};

pub use connection::{GroupResult, TargetView};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(v1::routes(app.clone()))
        .route("/connection", post(connection::handle).delete(connection::handle))
        .route("/slack/commands", post(slack::command))
        .route("/slack/interactions", post(interactions::interaction))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(app.clone(), bounded_body))
        .layer(axum::middleware::from_fn(json_errors))
        .with_state(app)
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
