//! The engine's error: what every `Engine` call can fail with.

use portcullis_core::{InvalidInput, NotFound, PermissionRefusal, PolicyRefusal, Rejection};
use portcullis_store::StoreError;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum EngineError {
    /// The domain says no: bad input, something not found, or a refusal by policy or
    /// permission (audited where an environment is known).
    #[error(transparent)]
    Rejected(Rejection),
    #[error(transparent)]
    Store(StoreError),
    /// The firewall could not be read where nothing can be decided without it (guard).
    #[error("the security groups could not be read: {0}")]
    Firewall(crate::FirewallError),
}

impl From<StoreError> for EngineError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Refused(v) => EngineError::Rejected(v.into()),
            other => EngineError::Store(other),
        }
    }
}

/// Each kind of rejection is the engine's error as it is.
macro_rules! rejected {
    ($($kind:ty),*) => {$(
        impl From<$kind> for EngineError {
            fn from(err: $kind) -> Self {
                EngineError::Rejected(err.into())
            }
        }
    )*};
}
rejected!(Rejection, InvalidInput, NotFound, PermissionRefusal, PolicyRefusal);
