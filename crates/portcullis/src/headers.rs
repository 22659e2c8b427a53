//! What every HTTP answer carries, on every listener: `X-Content-Type-Options: nosniff`, so no
//! browser reads a JSON answer (or the metrics' text) as something else.

use axum::http::{HeaderValue, header};
use axum::response::Response;

/// Sets `X-Content-Type-Options: nosniff` on an answer that does not say it already.
pub async fn nosniff(mut response: Response) -> Response {
    response.headers_mut().entry(header::X_CONTENT_TYPE_OPTIONS).or_insert(HeaderValue::from_static("nosniff"));
    response
}
