//! Builds the engine's real adapters from the configuration.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use portcullis_aws::{Ec2Firewall, Secrets};
use portcullis_engine::{
    Clock, DryRunFirewall, Engine, Firewall, LogNotifier, Notifier, Outbox, Pacing, Settings, SystemClock,
};
use portcullis_slack::{webhook_url_from_secret, FixedUrl, UrlSource, Webhook};
use portcullis_store::{SqliteStore, Store};

use crate::config::{Config, FirewallKind, Secret, StoreSpec};

/// An error that stops the command before it does anything.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] portcullis_store::StoreError),
    #[error("{0}")]
    Secret(String),
}

pub fn open_store(config: &Config) -> Result<Arc<dyn Store>, WiringError> {
    match &config.store {
        StoreSpec::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path)?)),
        StoreSpec::Dynamodb(table) => Err(WiringError::Unsupported(format!(
            "store dynamodb:{table}: the DynamoDB store is not available in this version; use sqlite:PATH"
        ))),
    }
}

/// The firewall the config names. With `dry_run`, changes are printed, never made; an `aws`
/// firewall is still used to observe, so the printout is exactly what would be done.
pub async fn firewall(config: &Config, dry_run: bool, json: bool) -> Arc<dyn Firewall> {
    let sink: Box<dyn Write + Send> = if json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    match config.firewall {
        FirewallKind::DryRun => Arc::new(DryRunFirewall::new(None, sink)),
        FirewallKind::Aws => {
            let aws: Arc<dyn Firewall> = Arc::new(Ec2Firewall::new(portcullis_aws::shared_sdk_config().await));
            if dry_run {
                Arc::new(DryRunFirewall::new(Some(aws), sink))
            } else {
                aws
            }
        }
    }
}

/// A secret's value: given outright, or read from Secrets Manager.
pub async fn secret_value(secret: &Secret) -> Result<String, WiringError> {
    match secret {
        Secret::Value(v) => Ok(v.clone()),
        Secret::Arn(arn) => {
            Secrets::new(portcullis_aws::shared_sdk_config().await).read(arn).await.map_err(|e| WiringError::Secret(e.to_string()))
        }
    }
}

/// The webhook URL kept in Secrets Manager, read when first needed and again when Slack
/// refuses a post (the webhook may have been rotated).
struct SecretUrl {
    arn: String,
}

#[async_trait]
impl UrlSource for SecretUrl {
    async fn url(&self) -> Result<String, String> {
        let value = secret_value(&Secret::Arn(self.arn.clone())).await.map_err(|e| e.to_string())?;
        webhook_url_from_secret(&value).map_err(|e| format!("secret {}: {e}", self.arn))
    }
}

/// Where announcements go: the Slack webhook when one is configured, else the log alone.
pub fn notifier(config: &Config) -> Arc<dyn Notifier> {
    let source: Arc<dyn UrlSource> = match &config.slack.webhook {
        None => return Arc::new(LogNotifier),
        Some(Secret::Value(url)) => Arc::new(FixedUrl(url.clone())),
        Some(Secret::Arn(arn)) => Arc::new(SecretUrl { arn: arn.clone() }),
    };
    Arc::new(Webhook::new(source))
}

/// The engine over the configured store and firewall, announcing through the outbox.
pub async fn engine(config: &Config, dry_run: bool, json: bool) -> Result<Engine, WiringError> {
    let store = open_store(config)?;
    let firewall = firewall(config, dry_run, json).await;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    Ok(engine_with(config, store, firewall, clock, notifier(config)))
}

/// The engine over given adapters (tests and benchmarks pass their own).
pub fn engine_with(
    config: &Config,
    store: Arc<dyn Store>,
    firewall: Arc<dyn Firewall>,
    clock: Arc<dyn Clock>,
    notifier: Arc<dyn Notifier>,
) -> Engine {
    let outbox = Arc::new(Outbox::new(store.clone(), notifier, clock.clone(), Pacing::default()));
    Engine::new(
        store,
        firewall,
        clock,
        Settings {
            specs: config.specs.clone(),
            policies: config.policies.clone(),
            marker: config.marker.clone(),
            quota: config.quota,
        },
    )
    .with_outbox(outbox)
}
