//! The engine's error: what every `Engine` call can fail with.

use portcullis_core::ValidationError;
use portcullis_store::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Validation(#[from] ValidationError),
    #[error(transparent)]
    Store(StoreError),
    /// The firewall could not be read where nothing can be decided without it (guard).
    #[error("the security groups could not be read: {0}")]
    Firewall(crate::FirewallError),
}

impl From<StoreError> for EngineError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Validation(v) => EngineError::Validation(v),
            other => EngineError::Store(other),
        }
    }
}
