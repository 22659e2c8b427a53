//! The Slack endpoint's state: the signing secret (re-read when rotated), the `response_url`
//! responder, the per-user rate limit, the user-group directory and the commands still being
//! worked on after their acknowledgement. The handler is `routes::slack`.

use std::sync::{Arc, Mutex};

use portcullis_slack::{Directory, Responder, SecretError, SignatureError, SigningSecrets};
use tokio::task::JoinSet;

use crate::config::SlackConfig;
use crate::ratelimit::RateLimiter;

/// Reads the signing secret again (it may have been rotated in Secrets Manager).
#[async_trait::async_trait]
pub trait SecretReload: Send + Sync {
    async fn reload(&self) -> Result<SigningSecrets, SecretError>;
}

/// An approval's apply, handed to another invocation of the Lambda: Slack wants its answer
/// within 3 s, and a Lambda cannot work after it answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeferredApply {
    /// The approved request.
    pub request: String,
    /// Where the clicked message is replaced once the change is applied (or failed).
    pub response_url: Option<String>,
}

/// The key of a [`DeferredApply`] event.
pub const DEFERRED: &str = "portcullis_deferred_apply";

impl DeferredApply {
    /// The Lambda event that hands this job to another invocation.
    pub fn event(&self) -> serde_json::Value {
        serde_json::json!({ DEFERRED: self })
    }
}

/// Hands a [`DeferredApply`] to another invocation.
#[async_trait::async_trait]
pub trait Defer: Send + Sync {
    async fn defer(&self, job: &DeferredApply) -> Result<(), String>;
}

/// The least time between two re-reads of the signing secret, so requests with bad signatures
/// cannot make the server hammer Secrets Manager.
const RELOAD_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// The Slack side of the server.
pub struct SlackEndpoint {
    secret: std::sync::RwLock<SigningSecrets>,
    reload: Option<Arc<dyn SecretReload>>,
    reloaded_at: Mutex<Option<std::time::Instant>>,
    /// Answer changes in the response itself (Lambda, where nothing runs after the response),
    /// instead of acknowledging them and posting the outcome to `response_url`.
    pub(crate) inline: bool,
    pub(crate) command: String,
    pub(crate) responder: Responder,
    pub(crate) limiter: RateLimiter,
    pub(crate) directory: Option<Directory>,
    /// Where an approval's apply goes when the answer cannot wait for it (Lambda).
    pub(crate) deferred: Option<Arc<dyn Defer>>,
    /// Commands still being worked on after their acknowledgement.
    in_flight: Mutex<JoinSet<()>>,
}

impl SlackEndpoint {
    pub fn new(config: &SlackConfig, secret: SigningSecrets, bot_token: Option<String>) -> SlackEndpoint {
        SlackEndpoint {
            secret: std::sync::RwLock::new(secret),
            reload: None,
            reloaded_at: Mutex::new(None),
            inline: false,
            command: config.command.clone(),
            responder: Responder::new(config.response_url_prefixes.clone()),
            limiter: RateLimiter::new(config.rate_limit_per_minute),
            directory: bot_token.map(|t| Directory::new(&config.api_url, t)),
            deferred: None,
            in_flight: Mutex::new(JoinSet::new()),
        }
    }

    /// Re-reads the signing secret through `reload` when a signature does not verify.
    pub fn with_reload(mut self, reload: Arc<dyn SecretReload>) -> SlackEndpoint {
        self.reload = Some(reload);
        self
    }

    /// Answers changes in the HTTP response (for Lambda).
    pub fn inline(mut self) -> SlackEndpoint {
        self.inline = true;
        self
    }

    /// Hands approvals' applies to `defer` instead of making the answer wait for them.
    pub fn deferring(mut self, defer: Arc<dyn Defer>) -> SlackEndpoint {
        self.deferred = Some(defer);
        self
    }

    /// Verifies a request; on failure, re-reads a rotated secret (at most once a minute) and
    /// tries again.
    pub(crate) async fn verify(
        &self,
        timestamp: Option<&str>,
        signature: Option<&str>,
        body: &[u8],
        now: i64,
    ) -> Result<(), SignatureError> {
        let first = self.secret.read().expect("secret lock poisoned").verify(timestamp, signature, body, now);
        let Err(err) = first else { return Ok(()) };
        let Some(reload) = &self.reload else { return Err(err) };
        {
            let mut at = self.reloaded_at.lock().expect("reload mutex poisoned");
            if at.is_some_and(|t| t.elapsed() < RELOAD_EVERY) {
                return Err(err);
            }
            *at = Some(std::time::Instant::now());
        }
        match reload.reload().await {
            Ok(fresh) => {
                let result = fresh.verify(timestamp, signature, body, now);
                if result.is_ok() {
                    tracing::info!("the Slack signing secret was rotated; using the new one");
                }
                *self.secret.write().expect("secret lock poisoned") = fresh;
                result
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not re-read the Slack signing secret");
                Err(err)
            }
        }
    }

    /// Waits (at most `budget`) for acknowledged commands to post their answers.
    pub async fn drain(&self, budget: std::time::Duration) {
        let mut tasks = std::mem::take(&mut *self.in_flight.lock().expect("in-flight mutex poisoned"));
        let _ = tokio::time::timeout(budget, async { while tasks.join_next().await.is_some() {} }).await;
    }

    pub(crate) fn spawn(&self, work: impl Future<Output = ()> + Send + 'static) {
        let mut tasks = self.in_flight.lock().expect("in-flight mutex poisoned");
        while tasks.try_join_next().is_some() {}
        tasks.spawn(work);
    }
}
