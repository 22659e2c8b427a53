//! Work a Lambda invocation hands to another invocation of the same function: `Invoke` with
//! `InvocationType=Event` (Lambda queues it and answers at once). A Lambda cannot work after it
//! answers, so what must not delay the answer (Slack allows 3 s) is done there.

use aws_config::SdkConfig;
use aws_sdk_lambda::Client;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::InvocationType;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("could not hand work to another invocation of {function}: {message}")]
pub struct InvokeError {
    pub function: String,
    pub message: String,
}

/// Invokes one function asynchronously.
#[derive(Clone)]
pub struct AsyncInvoke {
    client: Client,
    function: String,
}

impl AsyncInvoke {
    /// Invokes `function` (a name or ARN); the endpoint follows the standard configuration
    /// (`AWS_ENDPOINT_URL_LAMBDA` or `AWS_ENDPOINT_URL` where set).
    pub fn new(config: &SdkConfig, function: &str) -> AsyncInvoke {
        let config = aws_sdk_lambda::config::Builder::from(config).interceptor(crate::CallCounter::default()).build();
        AsyncInvoke { client: Client::from_conf(config), function: function.to_string() }
    }

    /// Queues one invocation with `payload`; Lambda answers 202 once it is queued.
    pub async fn invoke(&self, payload: &serde_json::Value) -> Result<(), InvokeError> {
        let call = self
            .client
            .invoke()
            .function_name(&self.function)
            .invocation_type(InvocationType::Event)
            .payload(Blob::new(payload.to_string()));
        call.send()
            .await
            .map(|_| ())
            .map_err(|e| InvokeError { function: self.function.clone(), message: crate::errors::error_parts(&e).1 })
    }
}
