//! The HTTP routes, over [`App`]: `/v1` (admin tokens), `/connection` (any token or IAM login),
//! `/slack/commands` (Slack's signature) and `/healthz`. `serve` and Lambda run the same router.

mod connection;
mod slack;
mod v1;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;

use crate::app::{ApiError, App, BODY_LIMIT};

pub use connection::{GroupResult, TargetView};

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .merge(v1::routes(app.clone()))
        .route("/connection", post(connection::handle).delete(connection::handle))
        .route("/slack/commands", post(slack::command))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(app)
}

