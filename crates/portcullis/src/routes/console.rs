//! The operators' console at `/`: a page, a script, a stylesheet and an icon, embedded in the
//! binary (no CDN, no build step), served with a Content-Security-Policy that allows no inline
//! script and no other host. Everything it shows comes from `/connection` and `/v1` with the
//! token the user pastes, which it keeps in `sessionStorage` (never a cookie or a URL).

use axum::Router;
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

const INDEX: &str = include_str!("../../console/index.html");
const SCRIPT: &str = include_str!("../../console/console.js");
const STYLE: &str = include_str!("../../console/console.css");
const ICON: &str = include_str!("../../console/icon.svg");

/// Only this origin's own files, no inline script or style, no frames, no plugins, no forms
/// posted anywhere: a description that carries markup can never run.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/` and the console's files.
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { asset("text/html; charset=utf-8", INDEX) }))
        .route("/console/console.js", get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }))
        .route("/console/console.css", get(|| async { asset("text/css; charset=utf-8", STYLE) }))
        .route("/console/icon.svg", get(|| async { asset("image/svg+xml", ICON) }))
}

/// One embedded file with the headers every console answer carries. Nothing is cached: the
/// files are small, and an upgraded server's console must not run an old script.
fn asset(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    ];
    (headers, body).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_files_and_runs_no_inline_script() {
        for (name, text) in [("index.html", INDEX), ("console.js", SCRIPT), ("console.css", STYLE)] {
            for other_host in ["http://", "https://", "//cdn", "@import"] {
                assert!(!text.contains(other_host), "{name} names another host ({other_host})");
            }
        }
        // Every <script> has a src and no body; no element carries an inline handler or style.
        for (i, part) in INDEX.split("<script").enumerate().skip(1) {
            let tag = part.split('>').next().unwrap_or_default();
            assert!(tag.contains("src=\"/console/"), "script {i} is inline");
            assert!(part.trim_start_matches(|c| c != '>').starts_with("></script>"), "script {i} has a body");
        }
        for inline in [" onclick=", " onload=", " onerror=", " style=", "javascript:"] {
            assert!(!INDEX.contains(inline), "index.html carries {inline}");
        }
        // The script never writes HTML from text.
        for sink in ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"] {
            assert!(!SCRIPT.contains(sink), "console.js uses {sink}");
        }
        assert!(!SCRIPT.contains("localStorage") && !SCRIPT.contains("document.cookie"), "the token stays in sessionStorage");
        // Text reaches the page through setText alone, which shows bidirectional and
        // zero-width characters as code points.
        assert_eq!(SCRIPT.matches(".textContent =").count(), 1, "only setText writes textContent");
        assert!(SCRIPT.contains("node.textContent = visible(text)"));
    }

    #[test]
    fn the_audit_filter_offers_every_action() {
        for action in portcullis_core::Action::ALL {
            assert!(SCRIPT.contains(&format!("\"{}\"", action.as_str())), "console.js's ACTIONS lacks {}", action.as_str());
        }
    }
}
