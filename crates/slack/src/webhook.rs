//! Announcements to a Slack incoming webhook.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use portcullis_core::AuditEvent;
use portcullis_engine::{Notifier, NotifyError};
use reqwest::StatusCode;

use crate::messages::notification;

/// A Slack secret's value that cannot be used, or cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the secret is neither a bare value nor JSON: {0}")]
    NotJson(String),
    #[error("the secret's JSON has no {0:?} string")]
    MissingKey(String),
    #[error("the secret is empty")]
    Empty,
    #[error("the webhook URL must start with https://")]
    NotAUrl,
    /// Where the secret is kept could not be read (Secrets Manager).
    #[error("{0}")]
    Unreadable(String),
}

/// Where the webhook's URL comes from: given outright, or a secret that may be rotated. It is
/// asked once, and again whenever Slack refuses a post to the URL it gave.
#[async_trait]
pub trait UrlSource: Send + Sync {
    async fn url(&self) -> Result<String, SecretError>;
}

/// A URL from the configuration (`SLACK_WEBHOOK_URL`).
pub struct FixedUrl(pub String);

#[async_trait]
impl UrlSource for FixedUrl {
    async fn url(&self) -> Result<String, SecretError> {
        Ok(self.0.clone())
    }
}

/// A secret's value as Slack secrets are kept in Secrets Manager: the bare value, or JSON with
/// the value under `key`.
pub fn secret_field(raw: &str, key: &str) -> Result<String, SecretError> {
    let raw = raw.trim();
    let value = if raw.starts_with('{') {
        let json: serde_json::Value = serde_json::from_str(raw).map_err(|e| SecretError::NotJson(e.to_string()))?;
        json.get(key).and_then(|v| v.as_str()).ok_or_else(|| SecretError::MissingKey(key.to_string()))?.trim().to_string()
    } else {
        raw.to_string()
    };
    if value.is_empty() {
        return Err(SecretError::Empty);
    }
    Ok(value)
}

/// Reads a webhook secret's value: the bare URL, or JSON with a `webhook_url` key.
pub fn webhook_url_from_secret(value: &str) -> Result<String, SecretError> {
    let url = secret_field(value, "webhook_url")?;
    if url.starts_with("https://") || url.starts_with("http://") { Ok(url) } else { Err(SecretError::NotAUrl) }
}

/// Posts the IP Whitelist Manager's notification texts to an incoming webhook.
pub struct Webhook {
    client: reqwest::Client,
    source: Arc<dyn UrlSource>,
    cached: Mutex<Option<String>>,
}

/// The longest `Retry-After` honoured; a larger one is clamped.
const MAX_RETRY_AFTER: i64 = 3600;

impl Webhook {
    pub fn new(source: Arc<dyn UrlSource>) -> Webhook {
        Webhook { client: http_client(), source, cached: Mutex::new(None) }
    }

    /// The cached URL, or (with `reread`, or none cached) the source's current one.
    async fn url(&self, reread: bool) -> Result<String, NotifyError> {
        if !reread && let Some(url) = self.cached.lock().expect("webhook mutex poisoned").clone() {
            return Ok(url);
        }
        let url = self.source.url().await.map_err(|e| NotifyError::Transient(format!("webhook URL: {e}")))?;
        *self.cached.lock().expect("webhook mutex poisoned") = Some(url.clone());
        Ok(url)
    }

    async fn post(&self, url: &str, body: &serde_json::Value) -> Result<(), (Option<StatusCode>, NotifyError)> {
        let response = self
            .client
            .post(url)
            .json(body)
            .send()
            .await
            .map_err(|e| (None, NotifyError::Transient(format!("webhook post failed: {}", error_chain(e)))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<i64>().ok());
        let text: String = response.text().await.unwrap_or_default().chars().take(200).collect();
        let error = match status {
            StatusCode::TOO_MANY_REQUESTS => NotifyError::RateLimited {
                retry_after: time::Duration::seconds(retry_after.unwrap_or(1).clamp(1, MAX_RETRY_AFTER)),
            },
            StatusCode::BAD_REQUEST => NotifyError::Permanent(format!("webhook refused the message: {status} {text}")),
            _ => NotifyError::Transient(format!("webhook answered {status} {text}")),
        };
        Err((Some(status), error))
    }
}

#[async_trait]
impl Notifier for Webhook {
    async fn announce(&self, event: &AuditEvent) -> Result<(), NotifyError> {
        let Some(text) = notification(event) else { return Ok(()) };
        self.send(&serde_json::json!({ "text": text })).await
    }

    /// Incoming webhooks accept about one message a second.
    fn min_interval(&self) -> time::Duration {
        time::Duration::seconds(1)
    }
}

impl Webhook {
    /// Posts one message body (text or Block Kit) to the webhook.
    pub async fn send(&self, body: &serde_json::Value) -> Result<(), NotifyError> {
        let body = body.clone();
        let url = self.url(false).await?;
        match self.post(&url, &body).await {
            Ok(()) => Ok(()),
            // A revoked or rotated webhook: read the secret again, and retry once if it changed.
            Err((Some(StatusCode::FORBIDDEN | StatusCode::NOT_FOUND | StatusCode::GONE), err)) => {
                let fresh = self.url(true).await?;
                if fresh == url {
                    return Err(err);
                }
                tracing::info!("webhook URL changed; posting to the new one");
                self.post(&fresh, &body).await.map_err(|(_, e)| e)
            }
            Err((_, err)) => Err(err),
        }
    }
}

/// The client every Slack call uses: rustls, short timeouts, no redirects to follow.
pub(crate) fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("portcullis/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("the HTTP client's configuration is valid")
}

/// An HTTP error and its causes on one line (reqwest hides the useful part in the source
/// chain), without the URL: webhook and `response_url` URLs are credentials.
pub(crate) fn error_chain(err: reqwest::Error) -> String {
    let err = err.without_url();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    crate::url::redact_urls_in(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_post_never_names_the_webhook_url() {
        // A port nothing listens on: the post fails at the connection, where HTTP clients
        // name the URL they tried.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let url = format!("http://127.0.0.1:{port}/services/T0/B0/SECRETPART");
        let webhook = Webhook::new(Arc::new(FixedUrl(url)));
        let added = crate::messages::tests::grant("x");
        let event = crate::messages::tests::event(portcullis_core::Action::Added, None, Some(added));
        let err = webhook.announce(&event).await.unwrap_err().to_string();
        assert!(!err.contains("SECRETPART") && !err.contains("/services/"), "{err}");
        assert!(err.contains(&format!("http://127.0.0.1:{port}/…")) || !err.contains("http"), "{err}");
    }

    #[test]
    fn secret_values() {
        let url = "https://hooks.slack.com/services/T/B/x";
        assert_eq!(webhook_url_from_secret(url).unwrap(), url);
        assert_eq!(webhook_url_from_secret(&format!(" {url}\n")).unwrap(), url);
        assert_eq!(webhook_url_from_secret(&format!(r#"{{"webhook_url": "{url}"}}"#)).unwrap(), url);
        assert!(webhook_url_from_secret(r#"{"url": "x"}"#).unwrap_err().to_string().contains("webhook_url"));
        assert!(webhook_url_from_secret("hooks.slack.com").is_err());
        assert_eq!(secret_field(r#"{"signing_secret": "abc"}"#, "signing_secret").unwrap(), "abc");
        assert_eq!(secret_field("abc\n", "signing_secret").unwrap(), "abc");
        assert!(secret_field("  ", "signing_secret").is_err());
        assert!(secret_field("{not json", "signing_secret").is_err());
    }
}
