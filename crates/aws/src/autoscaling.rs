//! Auto Scaling groups as the engine's [`Membership`]: an ASG's members with their addresses
//! (one `DescribeAutoScalingGroups`, then `DescribeInstances` by id, 1,000 ids a call), and
//! `CompleteLifecycleAction`.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use aws_config::SdkConfig;
use aws_sdk_autoscaling::error::ProvideErrorMetadata;
use aws_sdk_ec2::config::Region;
use portcullis_core::{Instance, Route};
use portcullis_engine::{LifecycleAction, LifecycleResult, Membership, MembershipError};

use crate::CallCounter;

/// Instance ids per `DescribeInstances`.
const IDS_PER_DESCRIBE: usize = 1000;
/// The tag Auto Scaling puts on each instance it launches: its group's name.
const ASG_TAG: &str = "aws:autoscaling:groupName";

/// Auto Scaling and EC2 instances, per route (region, endpoint, role).
pub struct AsgMembership {
    base: SdkConfig,
    counter: CallCounter,
    clients: Mutex<HashMap<Route, (aws_sdk_autoscaling::Client, aws_sdk_ec2::Client)>>,
}

fn membership_error<E, R>(err: aws_sdk_autoscaling::error::SdkError<E, R>) -> MembershipError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (code, message) = crate::errors::error_parts(&err);
    MembershipError { code, message }
}

impl AsgMembership {
    pub fn new(base: &SdkConfig) -> AsgMembership {
        AsgMembership { base: base.clone(), counter: CallCounter::default(), clients: Mutex::default() }
    }

    /// Counts of the Auto Scaling and EC2 operations made.
    pub fn calls(&self) -> &CallCounter {
        &self.counter
    }

    async fn clients(&self, route: &Route) -> (aws_sdk_autoscaling::Client, aws_sdk_ec2::Client) {
        if let Some(clients) = self.clients.lock().expect("client cache poisoned").get(route) {
            return clients.clone();
        }
        let region = Region::new(route.region.clone());
        let credentials = match &route.role_arn {
            // One provider for both clients, so they share the assumed role's credentials.
            Some(role) => Some(aws_credential_types::provider::SharedCredentialsProvider::new(
                aws_config::sts::AssumeRoleProvider::builder(role)
                    .session_name("portcullis")
                    .region(region.clone())
                    .configure(&self.base)
                    .build()
                    .await,
            )),
            None => None,
        };
        let mut asg =
            aws_sdk_autoscaling::config::Builder::from(&self.base).region(region.clone()).interceptor(self.counter.clone());
        let mut ec2 = aws_sdk_ec2::config::Builder::from(&self.base).region(region).interceptor(self.counter.clone());
        if let Some(url) = &route.endpoint_url {
            asg = asg.endpoint_url(url);
            ec2 = ec2.endpoint_url(url);
        }
        if let Some(provider) = credentials {
            asg = asg.credentials_provider(provider.clone());
            ec2 = ec2.credentials_provider(provider);
        }
        let clients = (aws_sdk_autoscaling::Client::from_conf(asg.build()), aws_sdk_ec2::Client::from_conf(ec2.build()));
        self.clients.lock().expect("client cache poisoned").entry(route.clone()).or_insert(clients).clone()
    }

    /// The instances with these ids and their addresses, 1,000 ids a call. An id EC2 no longer
    /// knows is left out.
    async fn addresses(&self, ec2: &aws_sdk_ec2::Client, ids: &[String]) -> Result<Vec<Instance>, MembershipError> {
        let mut out = Vec::new();
        for chunk in ids.chunks(IDS_PER_DESCRIBE) {
            let mut token = None;
            loop {
                let answer = ec2.describe_instances().set_instance_ids(Some(chunk.to_vec())).set_next_token(token).send().await;
                let answer = match answer {
                    Ok(a) => a,
                    // One unknown id fails the whole call: ask for the others one by one.
                    Err(err) if err.code() == Some("InvalidInstanceID.NotFound") && chunk.len() > 1 => {
                        for id in chunk {
                            out.extend(Box::pin(self.addresses(ec2, std::slice::from_ref(id))).await?);
                        }
                        break;
                    }
                    Err(err) if err.code() == Some("InvalidInstanceID.NotFound") => break,
                    Err(err) => return Err(membership_error(err)),
                };
                for instance in answer.reservations().iter().flat_map(|r| r.instances()) {
                    let parse = |ip: Option<&str>| ip.and_then(|ip| ip.parse().ok());
                    let mut ipv6: Vec<std::net::IpAddr> = instance
                        .network_interfaces()
                        .iter()
                        .flat_map(|n| n.ipv6_addresses())
                        .filter_map(|a| parse(a.ipv6_address()))
                        .collect();
                    ipv6.extend(parse(instance.ipv6_address()));
                    ipv6.sort();
                    ipv6.dedup();
                    out.push(Instance {
                        id: instance.instance_id().unwrap_or_default().to_string(),
                        lifecycle_state: String::new(),
                        public_ipv4: parse(instance.public_ip_address()),
                        private_ipv4: parse(instance.private_ip_address()),
                        ipv6,
                        asg: instance
                            .tags()
                            .iter()
                            .find(|t| t.key() == Some(ASG_TAG))
                            .and_then(|t| t.value())
                            .map(str::to_string),
                    });
                }
                token = answer.next_token().filter(|t| !t.is_empty()).map(str::to_string);
                if token.is_none() {
                    break;
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl Membership for AsgMembership {
    async fn instances(&self, route: &Route, asg: &str) -> Result<Option<Vec<Instance>>, MembershipError> {
        let (autoscaling, ec2) = self.clients(route).await;
        let answer =
            autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(asg).send().await.map_err(membership_error)?;
        let Some(group) = answer.auto_scaling_groups().iter().find(|g| g.auto_scaling_group_name() == Some(asg)) else {
            return Ok(None);
        };
        let states: HashMap<String, String> = group
            .instances()
            .iter()
            .filter_map(|i| Some((i.instance_id()?.to_string(), i.lifecycle_state()?.as_str().to_string())))
            .collect();
        let ids: Vec<String> = states.keys().cloned().collect();
        let mut instances = self.addresses(&ec2, &ids).await?;
        for instance in &mut instances {
            instance.lifecycle_state = states.get(&instance.id).cloned().unwrap_or_default();
        }
        instances.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(Some(instances))
    }

    async fn describe(&self, route: &Route, ids: &[String]) -> Result<Vec<Instance>, MembershipError> {
        let (_, ec2) = self.clients(route).await;
        self.addresses(&ec2, ids).await
    }

    async fn complete(&self, route: &Route, action: &LifecycleAction, result: LifecycleResult) -> Result<(), MembershipError> {
        let (autoscaling, _) = self.clients(route).await;
        autoscaling
            .complete_lifecycle_action()
            .auto_scaling_group_name(&action.asg)
            .lifecycle_hook_name(&action.hook)
            .lifecycle_action_token(&action.token)
            .instance_id(&action.instance_id)
            .lifecycle_action_result(result.as_str())
            .send()
            .await
            .map_err(membership_error)?;
        Ok(())
    }
}
