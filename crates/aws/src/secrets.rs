//! Secrets Manager: the Slack signing secret and webhook URL, by ARN.

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::Client;
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use thiserror::Error;

#[derive(Debug, Error)]
#[error("secret {arn}: {message}")]
pub struct SecretError {
    pub arn: String,
    pub message: String,
}

/// Reads secrets' current values.
#[derive(Clone)]
pub struct Secrets {
    client: Client,
}

impl Secrets {
    pub fn new(config: &SdkConfig) -> Secrets {
        let config = aws_sdk_secretsmanager::config::Builder::from(config).interceptor(crate::CallCounter::default()).build();
        Secrets { client: Client::from_conf(config) }
    }

    /// The secret's current string value (a binary secret is read as UTF-8).
    pub async fn read(&self, arn: &str) -> Result<String, SecretError> {
        let err = |message: String| SecretError { arn: arn.to_string(), message };
        let out =
            self.client.get_secret_value().secret_id(arn).send().await.map_err(|e| err(DisplayErrorContext(&e).to_string()))?;
        if let Some(text) = out.secret_string {
            return Ok(text);
        }
        let bytes = out.secret_binary.ok_or_else(|| err("has no value".into()))?;
        String::from_utf8(bytes.into_inner()).map_err(|_| err("is binary, not text".into()))
    }
}
