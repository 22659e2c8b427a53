//! Figures for the README (`scripts/bench`): the calls a true-up of an Auto Scaling group
//! costs, beside the AWS Auto Scaling sync's method. An ASG of 200 members on moto; its members admitted to a
//! group in each of two regions; then 20 launches and 20 terminations behind our back and one
//! true-up. Auto Scaling and instance describes go to moto (counted by the SDK interceptor); the
//! groups are in memory, as moto holds at most 60 rules a group and EC2 (raised) 1,000.
//! Prints call counts; asserts nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use aws_config::BehaviorVersion;
use aws_sdk_ec2::config::{Credentials, Region};
use portcullis_aws::AsgMembership;
use portcullis_core::{
    AddressKind, AppliedRule, Environment, GroupChange, Interface, Marker, MemberSource, Policy, PortRange, PortSet, Protocol,
    Route, RuleQuota, TargetId, TargetSelector, TargetSpec,
};
use portcullis_engine::{Clock, Engine, Firewall, MemberEvent, MemoryFirewall, Settings, SystemClock};
use portcullis_store::{SqliteStore, Store};

const REGIONS: [&str; 2] = ["us-east-1", "eu-west-1"];
const MEMBERS: i32 = 200;
const CHURN: usize = 20;

/// The in-memory groups: portcullis's, and the ones the AWS Auto Scaling sync's method changes.
fn group(region: &str, seed: bool) -> String {
    let n = REGIONS.iter().position(|r| *r == region).unwrap();
    format!("sg-0{}{n}", if seed { "5eed" } else { "aaaa" })
}

fn prod() -> Environment {
    Environment::parse("prod").unwrap()
}

async fn sdk(moto: &str) -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(moto)
        .region(Region::new(REGIONS[0]))
        .credentials_provider(Credentials::new("test", "test", None, None, "bench"))
        .load()
        .await
}

/// An ASG of `MEMBERS` instances on moto; its name.
async fn asg(sdk: &aws_config::SdkConfig) -> String {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let autoscaling = aws_sdk_autoscaling::Client::new(sdk);
    let name = format!("bench-{}", std::process::id());
    let image = ec2.describe_images().send().await.unwrap().images()[0].image_id().unwrap().to_string();
    let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
        .image_id(image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .build();
    ec2.create_launch_template().launch_template_name(&name).launch_template_data(data).send().await.unwrap();
    let subnets = ec2.describe_subnets().send().await.unwrap();
    let subnet = subnets.subnets().iter().find(|s| s.map_public_ip_on_launch() == Some(true)).unwrap().subnet_id().unwrap();
    autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&name)
        .launch_template(aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder().launch_template_name(&name).build())
        .min_size(0)
        .max_size(MEMBERS + CHURN as i32)
        .desired_capacity(MEMBERS)
        .vpc_zone_identifier(subnet)
        .send()
        .await
        .unwrap();
    name
}

/// 20 instances launched and 20 others detached, behind portcullis's back.
async fn churn(sdk: &aws_config::SdkConfig, name: &str) {
    let autoscaling = aws_sdk_autoscaling::Client::new(sdk);
    let out = autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
    let old: Vec<String> =
        out.auto_scaling_groups()[0].instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    autoscaling
        .set_desired_capacity()
        .auto_scaling_group_name(name)
        .desired_capacity(MEMBERS + CHURN as i32)
        .send()
        .await
        .unwrap();
    autoscaling
        .detach_instances()
        .auto_scaling_group_name(name)
        .set_instance_ids(Some(old[..CHURN].to_vec()))
        .should_decrement_desired_capacity(true)
        .send()
        .await
        .unwrap();
}

/// The AWS Auto Scaling sync's method for the same true-up: one ASG describe, one instance describe per
/// member, then each changed address added or removed on its own, on every group.
async fn seed_method(
    sdk: &aws_config::SdkConfig,
    name: &str,
    before: &BTreeSet<String>,
    firewall: &MemoryFirewall,
) -> (u64, u64) {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let autoscaling = aws_sdk_autoscaling::Client::new(sdk);
    let out = autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(name).send().await.unwrap();
    let mut asg_calls = 1;
    let mut now = BTreeSet::new();
    for instance in out.auto_scaling_groups()[0].instances() {
        let described = ec2.describe_instances().instance_ids(instance.instance_id().unwrap()).send().await.unwrap();
        asg_calls += 1;
        if let Some(ip) = described.reservations()[0].instances()[0].public_ip_address() {
            now.insert(format!("{ip}/32"));
        }
    }
    let mut sg_calls = 0;
    let rule = |cidr: &str| AppliedRule {
        cidr: portcullis_core::Cidr::parse(cidr).unwrap(),
        ec2_cidr: cidr.to_string(),
        ports: PortRange::single(Protocol::Tcp, 443),
        description: "seed".into(),
    };
    for region in REGIONS {
        let target = TargetId { region: region.into(), group_id: group(region, true) };
        let route = Route { region: region.into(), endpoint_url: None, role_arn: None };
        for (cidr, add) in now.difference(before).map(|c| (c, true)).chain(before.difference(&now).map(|c| (c, false))) {
            let change = GroupChange {
                list: None,
                target: target.clone(),
                route: route.clone(),
                environment: prod(),
                authorize: if add { vec![rule(cidr)] } else { vec![] },
                revoke: if add { vec![] } else { vec![rule(cidr)] },
                update_descriptions: vec![],
            };
            let _ = firewall.apply(&change).await;
            sg_calls += 1;
        }
    }
    (asg_calls, sg_calls)
}

async fn members_on_moto(moto: &str) {
    let sdk = sdk(moto).await;
    let name = asg(&sdk).await;
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path().join("bench.db")).unwrap());
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let firewall = Arc::new(MemoryFirewall::new(clock.clone()));
    for region in REGIONS {
        firewall.put_group(region, &group(region, false), &[]);
        firewall.put_group(region, &group(region, true), &[]);
    }
    let specs = REGIONS
        .iter()
        .map(|r| TargetSpec {
            region: r.to_string(),
            selector: TargetSelector::Ids(vec![portcullis_core::GroupId::parse(&group(r, false)).unwrap()]),
            environment: prod(),
            default_ports: PortSet::parse("tcp:443").unwrap(),
            endpoint_url: None,
            role_arn: None,
        })
        .collect();
    let settings = Settings {
        specs,
        policies: BTreeMap::from([(prod(), Policy::default())]),
        marker: Marker::default(),
        quota: RuleQuota { ipv4: 1000, ipv6: 1000 },
    };
    let membership = Arc::new(AsgMembership::new(&sdk));
    let source = MemberSource {
        environment: prod(),
        asg: name.clone(),
        route: Route { region: REGIONS[0].into(), endpoint_url: None, role_arn: None },
        address: AddressKind::Public,
        on_failure: portcullis_core::OnFailure::Continue,
    };
    let engine = Engine::builder(store, firewall.clone(), clock, settings)
        .members(vec![source], portcullis_engine::DEFAULT_MEMBER_TTL, membership.clone())
        .build();
    let true_up = || MemberEvent::TrueUp { asg: None, region: None };
    let first = engine.member_event(true_up(), Interface::Cli).await.unwrap();
    let before: BTreeSet<String> = first.granted.iter().map(|g| g.cidr.to_string()).collect();
    churn(&sdk, &name).await;

    let (asg_before, sg_before) = (membership.calls().snapshot(), firewall.calls().len());
    let outcome = engine.member_event(true_up(), Interface::Cli).await.unwrap();
    let asg_calls: BTreeMap<String, u64> = membership
        .calls()
        .snapshot()
        .into_iter()
        .map(|(k, v)| (k.clone(), v - asg_before.get(&k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect();
    let mut sg_calls: BTreeMap<&str, u64> = BTreeMap::new();
    for call in &firewall.calls()[sg_before..] {
        *sg_calls.entry(call.action).or_default() += 1;
    }
    let (seed_asg, seed_sg) = seed_method(&sdk, &name, &before, &firewall).await;
    println!(
        "true-up: ASG of {MEMBERS} members, groups in {} regions, after {CHURN} launches and {CHURN} terminations",
        REGIONS.len()
    );
    println!(
        "  portcullis: {} addresses granted or renewed, {} removed, {} members without a public address",
        outcome.granted.len(),
        outcome.removed.len(),
        outcome.skipped.len()
    );
    println!("    Auto Scaling + instance calls {asg_calls:?}");
    println!("    security-group calls {sg_calls:?}");
    println!(
        "  the sync's method: {seed_asg} Auto Scaling + instance calls (1 + one describe per member), {seed_sg} security-group calls (one per changed address per group)"
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    match std::env::var("PORTCULLIS_TEST_MOTO") {
        Ok(moto) => runtime.block_on(members_on_moto(&moto)),
        Err(_) => println!("members on moto: skipped (PORTCULLIS_TEST_MOTO is not set; run scripts/bench)"),
    }
}
