//! Builds the engine's real adapters from the configuration.

use std::io::Write;
use std::sync::Arc;

use portcullis_aws::Ec2Firewall;
use portcullis_engine::{DryRunFirewall, Engine, Firewall, Settings, SystemClock};
use portcullis_store::{SqliteStore, Store};

use crate::config::{Config, FirewallKind, StoreSpec};

/// An error that stops the command before it does anything.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("{0}")]
    Unsupported(String),
    #[error(transparent)]
    Store(#[from] portcullis_store::StoreError),
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
            let sdk = portcullis_aws::load_sdk_config().await;
            let aws: Arc<dyn Firewall> = Arc::new(Ec2Firewall::new(&sdk));
            if dry_run {
                Arc::new(DryRunFirewall::new(Some(aws), sink))
            } else {
                aws
            }
        }
    }
}

pub async fn engine(config: &Config, dry_run: bool, json: bool) -> Result<Engine, WiringError> {
    let store = open_store(config)?;
    let firewall = firewall(config, dry_run, json).await;
    Ok(Engine::new(
        store,
        firewall,
        Arc::new(SystemClock),
        Settings {
            specs: config.specs.clone(),
            policies: config.policies.clone(),
            marker: config.marker.clone(),
            quota: config.quota,
        },
    ))
}
