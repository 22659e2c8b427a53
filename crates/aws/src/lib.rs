//! The only crate that talks to AWS: security groups, the DynamoDB store and its streams, and
//! Secrets Manager, Auto Scaling group members (`autoscaling`), asynchronous invocations of the
//! Lambda itself (`invoke`), through the official SDK for Rust; and IAM authentication (`iam`: a
//! signed `sts:GetCallerIdentity`, checked and forwarded to STS).
//!
//! One `DescribeSecurityGroups` (paginated) per region per observation; per group at most one
//! Revoke, one UpdateSecurityGroupRuleDescriptionsIngress and one Authorize call, each carrying
//! every rule of its kind. `InvalidPermission.Duplicate` / `NotFound` mean already done; the
//! batch is then retried rule by rule so the rest still lands. Throttling is the SDK's retry
//! configuration's job (adaptive, with backoff).

mod autoscaling;
mod counter;
mod dynamo;
mod ec2;
mod errors;
mod guard;
pub mod iam;
mod invoke;
mod prefix_list;
mod secrets;
mod streams;

pub use autoscaling::AsgMembership;
pub use counter::{ApiCall, CallCounter, api_calls};
pub use dynamo::{DynamoStore, InitReport, TableNames, from_sdk};
pub use ec2::Ec2Firewall;
pub use errors::classify;
pub use invoke::{AsyncInvoke, InvokeError};
pub use secrets::{SecretError, Secrets};
pub use streams::{Batch, StreamTail};

use std::time::Duration;

use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Loads AWS configuration the standard way (environment, profiles, instance roles;
/// `AWS_ENDPOINT_URL` honoured), with adaptive retries for throttling and bounded timeouts.
pub async fn load_sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .retry_config(RetryConfig::adaptive().with_max_attempts(5))
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(3))
                .operation_attempt_timeout(Duration::from_secs(20))
                .build(),
        )
        .load()
        .await
}

/// The standard configuration, loaded once per process and shared by every client.
pub async fn shared_sdk_config() -> &'static SdkConfig {
    static SDK: tokio::sync::OnceCell<SdkConfig> = tokio::sync::OnceCell::const_new();
    SDK.get_or_init(load_sdk_config).await
}

/// The region the standard configuration names (`AWS_REGION`, profile), if any.
pub fn configured_region(config: &SdkConfig) -> Option<String> {
    config.region().map(|r| r.to_string())
}
