//! `portcullis open`: the client of `/connection`. Opens access for this machine, renews it
//! before it lapses while it runs, and closes it on Ctrl-C or SIGTERM.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use portcullis_engine::Clock;

use serde_json::Value;

use crate::auth::iam_header;

/// How the client proves who it is.
#[derive(Debug, Clone)]
pub enum Credentials {
    Token(String),
    /// Sign `sts:GetCallerIdentity` with this machine's AWS credentials.
    Aws {
        server_id: String,
        sts_endpoint: String,
    },
}

#[derive(Clone)]
pub struct OpenOptions {
    /// The server's base URL, e.g. `https://portcullis.example.com`.
    pub server: String,
    pub environment: Option<String>,
    pub credentials: Credentials,
    /// Open and exit, without renewing or closing.
    pub once: bool,
    /// Renew this often; default: when half the grant's time is left.
    pub renew_every: Option<Duration>,
    pub json: bool,
    /// What an IAM login is dated with.
    pub clock: Arc<dyn Clock>,
}

/// A failed request, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// 400/404, a bad `--server`: fix the request.
    #[error("{0}")]
    Invalid(String),
    /// 401/403/409/422: the server refused the credentials, or its policy the request.
    #[error("{0}")]
    Refused(String),
    /// Network, 429, 5xx: may work later.
    #[error("{0}")]
    Failed(String),
}

/// The default server id: the authority (`host[:port]`) of the server URL, so a signed login
/// is bound to the server this client meant to talk to.
pub fn default_server_id(server: &str) -> Option<String> {
    let rest = server.split_once("://")?.1;
    rest.split(['/', '?', '#']).next().filter(|h| !h.is_empty()).map(str::to_ascii_lowercase)
}

/// The STS endpoint the SDK would use: `AWS_ENDPOINT_URL_STS`, `AWS_ENDPOINT_URL`, else AWS's.
pub fn default_sts_endpoint(env: &dyn Fn(&str) -> Option<String>) -> String {
    env("AWS_ENDPOINT_URL_STS")
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "https://sts.amazonaws.com".into())
}

struct Client {
    http: reqwest::Client,
    options: OpenOptions,
    url: String,
}

impl Client {
    fn new(options: OpenOptions) -> Result<Client, OpenError> {
        let base = options.server.trim_end_matches('/');
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(OpenError::Invalid(format!("--server {base:?} is not an http(s) URL")));
        }
        let mut url = format!("{base}/connection");
        if let Some(env) = &options.environment {
            url = format!("{url}?{}", serde_urlencoded::to_string([("env", env)]).unwrap_or_default());
        }
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("portcullis-open/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OpenError::Failed(e.to_string()))?;
        Ok(Client { http, options, url })
    }

    async fn authorization(&self) -> Result<String, OpenError> {
        match &self.options.credentials {
            Credentials::Token(t) => Ok(format!("Bearer {t}")),
            Credentials::Aws { server_id, sts_endpoint } => {
                let sdk = portcullis_aws::shared_sdk_config().await;
                let login =
                    portcullis_aws::iam::sign_login(sdk, sts_endpoint, server_id, SystemTime::from(self.options.clock.now()))
                        .await
                        .map_err(|e| OpenError::Invalid(e.to_string()))?;
                Ok(iam_header(&login))
            }
        }
    }

    /// One request; a fresh signature each time (a login is good for one use).
    async fn send(&self, method: reqwest::Method) -> Result<(u16, Value), OpenError> {
        let response = self
            .http
            .request(method, &self.url)
            .header("authorization", self.authorization().await?)
            .send()
            .await
            .map_err(|e| OpenError::Failed(format!("cannot reach {}: {e}", self.options.server)))?;
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").and_then(|v| v.to_str().ok()).map(str::to_string);
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let message = body["error"]["message"].as_str().unwrap_or("").to_string();
        match status {
            200 | 201 => Ok((status, body)),
            401 => Err(OpenError::Refused(format!("not authenticated: {message}"))),
            403 => Err(OpenError::Refused(format!("not allowed: {message}"))),
            404 if body["error"]["code"] == "no_such_grant" => Ok((status, body)),
            429 => Err(OpenError::Failed(format!(
                "rate-limited by the server: try again in {} s",
                retry_after.as_deref().unwrap_or("a few")
            ))),
            409 | 422 => Err(OpenError::Refused(format!("refused ({status}): {message}"))),
            400..=499 => Err(OpenError::Invalid(format!("invalid ({status}): {message}"))),
            502 => Err(OpenError::Failed(format!("every security group failed: {}", failures(&body)))),
            _ => Err(OpenError::Failed(format!("server error ({status}): {message}"))),
        }
    }
}

fn failures(body: &Value) -> String {
    body["failures"].as_array().map(|f| f.iter().filter_map(Value::as_str).collect::<Vec<_>>().join("; ")).unwrap_or_default()
}

fn describe(body: &Value) -> String {
    let mut out = format!(
        "{} {} in {}",
        body["result"].as_str().unwrap_or("?"),
        body["address"].as_str().unwrap_or("?"),
        body["environment"].as_str().unwrap_or("?"),
    );
    if let Some(at) = body["expires_at"].as_str() {
        out.push_str(&format!(" until {at}"));
    }
    for t in body["targets"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "\n  {} ({}) {}: {}",
            t["group_id"].as_str().unwrap_or("-"),
            t["region"].as_str().unwrap_or("?"),
            t["ports"].as_str().unwrap_or(""),
            t["outcome"].as_str().unwrap_or("?"),
        ));
        if let Some(e) = t["error"].as_str() {
            out.push_str(&format!(" ({e})"));
        }
    }
    out
}

fn report(options: &OpenOptions, body: &Value) {
    if options.json {
        crate::outln!("{body}");
    } else {
        crate::outln!("{}", describe(body));
    }
}

/// How long to wait before renewing: the option, else half the time left (at least 5 s).
fn renew_delay(options: &OpenOptions, body: &Value) -> Duration {
    options.renew_every.unwrap_or_else(|| {
        let left = body["expires_in_seconds"].as_i64().unwrap_or(120).max(10) as u64;
        Duration::from_secs((left / 2).max(5))
    })
}

/// Opens access, then (unless `once`) renews until a signal, then closes it.
pub async fn run(options: OpenOptions) -> Result<(), OpenError> {
    let client = Client::new(options.clone())?;
    let (_, body) = client.send(reqwest::Method::POST).await?;
    report(&options, &body);
    if options.once {
        return Ok(());
    }
    let mut delay = renew_delay(&options, &body);
    let stop = crate::serve::shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tokio::time::sleep(delay) => {
                match client.send(reqwest::Method::POST).await {
                    Ok((_, body)) => {
                        if !options.json {
                            crate::outln!("renewed: {}", describe(&body).lines().next().unwrap_or_default());
                        } else {
                            report(&options, &body);
                        }
                        delay = renew_delay(&options, &body);
                    }
                    // A refusal will not go away by retrying (revoked token, removed principal).
                    Err(err @ (OpenError::Refused(_) | OpenError::Invalid(_))) => return Err(err),
                    Err(OpenError::Failed(m)) => {
                        eprintln!("warning: renewal failed, retrying in 5 s: {m}");
                        delay = Duration::from_secs(5);
                    }
                }
            }
        }
    }
    let (status, body) = client.send(reqwest::Method::DELETE).await?;
    if status == 404 {
        crate::outln!("closed: access had already ended");
    } else if options.json {
        crate::outln!("{body}");
    } else {
        crate::outln!("closed: {}", describe(&body).lines().next().unwrap_or_default());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_renew_every_it_renews_when_half_the_time_is_left() {
        let options = |every: Option<u64>| OpenOptions {
            server: "http://127.0.0.1:1".into(),
            environment: None,
            credentials: Credentials::Token("pct_x".into()),
            once: false,
            renew_every: every.map(Duration::from_secs),
            json: false,
            clock: Arc::new(portcullis_engine::SystemClock),
        };
        let answer = |left: i64| serde_json::json!({"expires_in_seconds": left});
        assert_eq!(renew_delay(&options(None), &answer(3600)), Duration::from_secs(1800));
        assert_eq!(renew_delay(&options(None), &answer(120)), Duration::from_secs(60));
        // Never a busy loop: a grant about to end is renewed in 5 s, not at once.
        assert_eq!(renew_delay(&options(None), &answer(3)), Duration::from_secs(5));
        assert_eq!(renew_delay(&options(Some(7)), &answer(3600)), Duration::from_secs(7), "the option wins");
    }

    #[test]
    fn server_ids() {
        assert_eq!(default_server_id("https://Portcullis.example.com/x").as_deref(), Some("portcullis.example.com"));
        assert_eq!(default_server_id("http://127.0.0.1:8080").as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(default_server_id("nonsense"), None);
        assert_eq!(default_sts_endpoint(&|_| None), "https://sts.amazonaws.com");
        assert_eq!(
            default_sts_endpoint(&|k| (k == "AWS_ENDPOINT_URL").then(|| "http://127.0.0.1:5000".into())),
            "http://127.0.0.1:5000"
        );
    }
}
