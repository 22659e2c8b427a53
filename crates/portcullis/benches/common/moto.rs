//! What the benchmarks on moto share: the SDK configuration and a discovered environment.

use aws_config::{BehaviorVersion, SdkConfig};
use aws_sdk_ec2::config::{Credentials, Region};
use portcullis_core::{Environment, PortSet, TargetSelector, TargetSpec};

pub const REGION: &str = "us-east-1";

/// The SDK pointed at moto on loopback.
pub async fn sdk(moto: &str) -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(moto)
        .region(Region::new(REGION))
        .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
        .load()
        .await
}

/// `dev`'s groups: those tagged `tag_key=true` in [`REGION`], on `ports`.
pub fn discovered(tag_key: &str, ports: PortSet) -> TargetSpec {
    TargetSpec {
        region: REGION.into(),
        selector: TargetSelector::Discovery { tag_key: tag_key.into(), tag_value: "true".into() },
        environment: Environment::parse("dev").unwrap(),
        default_ports: ports,
        endpoint_url: None,
        role_arn: None,
    }
}
