//! Where `serve` listens (`listen`), how long it waits for a client (`[http]`), and the
//! metrics' own listener (`[metrics]`).

use std::net::SocketAddr;

use serde::Deserialize;

use super::{ConfigError, Env, FileConfig, Overrides, error};

/// `[metrics]`: where `serve` answers `/metrics` (off unless given).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileMetrics {
    pub(super) listen: Option<String>,
}

/// `[http]`: how long `serve` waits for a client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileHttp {
    pub(super) header_read_timeout_secs: Option<u64>,
    pub(super) body_read_timeout_secs: Option<u64>,
}

/// How long the HTTP server waits for a client.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// For a request's headers (also how long an idle keep-alive connection is kept).
    pub header_read_timeout: std::time::Duration,
    /// For a request's body, once its headers are in.
    pub body_read_timeout: std::time::Duration,
}

pub(super) fn listen(file: &FileConfig, overrides: &Overrides, env: Env<'_>) -> Result<SocketAddr, ConfigError> {
    let text = overrides
        .listen
        .clone()
        .or_else(|| env("PORTCULLIS_LISTEN"))
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    text.parse().map_err(|_| error("listen", format!("{text:?} is not an address:port")))
}

/// `[metrics] listen` (or `PORTCULLIS_METRICS_LISTEN`): an address apart from the public one.
pub(super) fn metrics_listen(file: &FileMetrics, env: Env<'_>, public: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
    let (key, text) = match env("PORTCULLIS_METRICS_LISTEN").filter(|t| !t.trim().is_empty()) {
        Some(text) => ("PORTCULLIS_METRICS_LISTEN", text),
        None => match &file.listen {
            Some(text) => ("metrics.listen", text.clone()),
            None => return Ok(None),
        },
    };
    let address: SocketAddr =
        text.trim().parse().map_err(|_| error(key, format!("{text:?} is not an address:port, e.g. 127.0.0.1:9464")))?;
    if address == public && address.port() != 0 {
        return Err(error(key, format!("{address} is the public listener's address; metrics need one of their own")));
    }
    Ok(Some(address))
}

pub(super) fn http(file: &FileHttp) -> Result<HttpConfig, ConfigError> {
    let secs = |key: &str, value: Option<u64>, default: u64| match value.unwrap_or(default) {
        n @ 1..=3600 => Ok(std::time::Duration::from_secs(n)),
        _ => Err(error(format!("http.{key}"), "must be from 1 to 3600 seconds")),
    };
    Ok(HttpConfig {
        header_read_timeout: secs("header_read_timeout_secs", file.header_read_timeout_secs, 10)?,
        body_read_timeout: secs("body_read_timeout_secs", file.body_read_timeout_secs, 30)?,
    })
}
