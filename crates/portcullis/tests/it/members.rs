//! Auto Scaling members (lifecycle hooks and true-ups, as the AWS Auto Scaling sync did) end to end: `portcullis invoke --event` with the fixture
//! events, against an ASG on moto, groups in two regions, and the loopback proxy answering
//! `CompleteLifecycleAction` (which moto lacks) and counting every call.

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_ec2::config::Region;
use serde_json::{Value, json};

use crate::aws_proxy::{Proxy, start_proxy};
use crate::support::{REGION, World, fixture, rules_of, sdk_config, text, unique, within};

const WEST: &str = "eu-west-1";

/// An ASG on moto, groups in us-east-1 (tcp:443) and eu-west-1 (tcp:80, tcp:443) for
/// environment prod, and a configuration admitting the ASG's members there.
struct Fleet {
    world: World,
    proxy: Proxy,
    asg_name: String,
    autoscaling: aws_sdk_autoscaling::Client,
    east: String,
    west: String,
    west_ec2: aws_sdk_ec2::Client,
    config: PathBuf,
}

async fn fleet(desired: i32, address: &str) -> Fleet {
    let world = World::new().await;
    let proxy = start_proxy().await;
    let sdk = sdk_config().await;
    let autoscaling = aws_sdk_autoscaling::Client::new(&sdk);
    let west_ec2 = aws_sdk_ec2::Client::from_conf(aws_sdk_ec2::config::Builder::from(&sdk).region(Region::new(WEST)).build());
    let asg_name = unique("web");
    let template = unique("lt");
    let image = world.ec2.describe_images().send().await.unwrap().images()[0].image_id().unwrap().to_string();
    world
        .ec2
        .create_launch_template()
        .launch_template_name(&template)
        .launch_template_data(
            aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
                .image_id(image)
                .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let subnet = if address == "ipv6" { dual_stack_subnet(&world.ec2).await } else { public_subnet(&world.ec2).await };
    autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&asg_name)
        .launch_template(
            aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder().launch_template_name(&template).build(),
        )
        .min_size(0)
        .max_size(10)
        .desired_capacity(desired)
        .vpc_zone_identifier(&subnet)
        .send()
        .await
        .unwrap();
    let east = world.group(false, &[]).await;
    let west = crate::connection::group_in(WEST).await;
    let config = world.dir.path().join("portcullis.toml");
    let toml = format!(
        r#"
        default_environment = "prod"
        # One period a year: two scheduled runs of a test never straddle a period's end.
        member_sync_secs = 31536000
        [environments.prod]
        [[environments.prod.targets]]
        region = "{REGION}"
        group_ids = ["{east}"]
        ports = "tcp:443"
        [[environments.prod.targets]]
        region = "{WEST}"
        group_ids = ["{west}"]
        ports = "tcp:80,tcp:443"
        [[environments.prod.members]]
        asg = "{asg_name}"
        region = "{REGION}"
        address = "{address}"
        "#
    );
    std::fs::write(&config, toml).unwrap();
    Fleet { world, proxy, asg_name, autoscaling, east, west, west_ec2, config }
}

/// A default-VPC subnet, which maps public IPv4 addresses on launch.
async fn public_subnet(ec2: &aws_sdk_ec2::Client) -> String {
    let subnets = ec2.describe_subnets().send().await.unwrap();
    subnets.subnets().iter().find(|s| s.map_public_ip_on_launch() == Some(true)).unwrap().subnet_id().unwrap().to_string()
}

/// A subnet of a new VPC with an Amazon-provided IPv6 block (moto assigns IPv6 addresses only
/// on a subnet that has one).
async fn dual_stack_subnet(ec2: &aws_sdk_ec2::Client) -> String {
    let vpc = ec2.create_vpc().cidr_block("10.42.0.0/16").amazon_provided_ipv6_cidr_block(true).send().await.unwrap();
    let vpc = vpc.vpc().unwrap();
    let block = vpc.ipv6_cidr_block_association_set()[0].ipv6_cidr_block().unwrap().replace("/56", "/64");
    let subnet = ec2.create_subnet().vpc_id(vpc.vpc_id().unwrap()).cidr_block("10.42.1.0/24").ipv6_cidr_block(block).send().await;
    subnet.unwrap().subnet().unwrap().subnet_id().unwrap().to_string()
}

impl Fleet {
    /// The ASG's instance ids, sorted.
    async fn instances(&self) -> Vec<String> {
        let out = self.autoscaling.describe_auto_scaling_groups().auto_scaling_group_names(&self.asg_name).send().await.unwrap();
        let mut ids: Vec<String> =
            out.auto_scaling_groups()[0].instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
        ids.sort();
        ids
    }

    /// An instance's public (or private) address.
    async fn address(&self, id: &str, private: bool) -> String {
        let out = self.world.ec2.describe_instances().instance_ids(id).send().await.unwrap();
        let instance = &out.reservations()[0].instances()[0];
        let ip = if private { instance.private_ip_address() } else { instance.public_ip_address() };
        format!("{}/32", ip.unwrap())
    }

    /// Runs `portcullis invoke --event` with this event, through the proxy.
    async fn invoke(&self, event: &Value) -> (i32, Value, String) {
        let path = self.world.dir.path().join(format!("{}.json", unique("event")));
        std::fs::write(&path, event.to_string()).unwrap();
        let mut cmd = self.world.command(&["invoke", "--event", path.to_str().unwrap()]);
        cmd.env("AWS_ENDPOINT_URL", &self.proxy.url)
            .env("PORTCULLIS_CONFIG", &self.config)
            .env("ENVIRONMENT", "prod")
            .env_remove("ENABLE_SG_DISCOVERY");
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap()).await.unwrap();
        let answer = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.code().unwrap_or(-1), answer, text(&out))
    }

    /// The addresses of our rules (with the marker) on each group: (east, west), each as
    /// (cidr, port) pairs.
    async fn ours(&self) -> (Vec<(String, i32)>, Vec<(String, i32)>) {
        let east = self.world.rules(&self.east).await;
        let west = rules_of(&self.west_ec2, &self.west).await;
        let mine = |rules: Vec<(String, i32, Option<String>)>| {
            rules
                .into_iter()
                .filter(|(_, _, d)| d.as_deref().is_some_and(|d| d.starts_with("pc:")))
                .map(|(c, p, _)| (c, p))
                .collect()
        };
        (mine(east), mine(west))
    }
}

fn lifecycle(name: &str, asg: &str, instance: &str) -> Value {
    let mut event = fixture(name);
    event["detail"]["AutoScalingGroupName"] = json!(asg);
    event["detail"]["EC2InstanceId"] = json!(instance);
    event["detail"]["LifecycleActionToken"] = json!(format!("token-{instance}"));
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_launch_opens_both_regions_on_each_groups_ports_then_continues_and_a_terminate_closes_them() {
    within(async {
        let f = fleet(1, "public").await;
        let id = f.instances().await.remove(0);
        let ip = f.address(&id, false).await;

        let (code, answer, out) = f.invoke(&lifecycle("asg-launch.json", &f.asg_name, &id)).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(answer["lifecycle"], "CONTINUE", "{answer}");
        let (east, west) = f.ours().await;
        assert_eq!(east, [(ip.clone(), 443)]);
        assert_eq!(west, [(ip.clone(), 80), (ip.clone(), 443)]);
        let completed = f.proxy.completed();
        assert_eq!(completed.len(), 1, "{completed:?}");
        let c = &completed[0];
        assert_eq!(c["AutoScalingGroupName"], f.asg_name);
        assert_eq!(c["LifecycleHookName"], "portcullis-launch");
        assert_eq!(c["LifecycleActionToken"], format!("token-{id}"));
        assert_eq!(c["InstanceId"], id);
        assert_eq!(c["LifecycleActionResult"], "CONTINUE");
        let list = |json: bool| {
            let args: &[&str] = if json { &["list", "--all", "--json"] } else { &["list", "--all"] };
            f.world.command(args).env("PORTCULLIS_CONFIG", &f.config).env("ENVIRONMENT", "prod").output().unwrap().stdout
        };
        let listed: Value = serde_json::from_slice(&list(true)).unwrap();
        assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
        assert_eq!(
            (&listed[0]["source"], &listed[0]["instance"], &listed[0]["owner"]["name"]),
            (&json!("asg-member"), &json!(id), &json!(format!("asg:{REGION}/{}", f.asg_name))),
            "{listed}"
        );
        let text = String::from_utf8(list(false)).unwrap();
        assert!(text.contains("asg-member") && text.contains(&id), "{text}");

        let (code, answer, out) = f.invoke(&lifecycle("asg-terminate.json", &f.asg_name, &id)).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(answer["lifecycle"], "CONTINUE", "{answer}");
        assert_eq!(f.ours().await, (vec![], vec![]));
        assert_eq!(f.proxy.completed()[1]["LifecycleActionResult"], "CONTINUE");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_asgs_own_region_failing_continues_or_abandons_as_configured_and_another_region_failing_continues() {
    within(async {
        let f = fleet(3, "public").await;
        let ids = f.instances().await;

        // By default, as the AWS Auto Scaling sync did: CONTINUE, the failure reported.
        f.proxy.fail_region(REGION, true);
        let (code, answer, out) = f.invoke(&lifecycle("asg-launch.json", &f.asg_name, &ids[2])).await;
        assert_eq!((code, answer["lifecycle"].as_str()), (1, Some("CONTINUE")), "{answer}\n{out}");
        assert!(answer["failures"].to_string().contains(REGION), "{answer}");
        assert_eq!(f.proxy.completed()[0]["LifecycleActionResult"], "CONTINUE");
        // `on_failure = "abandon"` keeps the stricter answer.
        let toml = std::fs::read_to_string(&f.config).unwrap();
        std::fs::write(&f.config, format!("{toml}\non_failure = \"abandon\"\n")).unwrap();
        let (_, answer, out) = f.invoke(&lifecycle("asg-launch.json", &f.asg_name, &ids[0])).await;
        assert_eq!(answer["lifecycle"], "ABANDON", "{answer}\n{out}");
        assert_eq!(f.proxy.completed()[1]["LifecycleActionResult"], "ABANDON");
        f.proxy.fail_region(REGION, false);

        f.proxy.fail_region(WEST, true);
        let (code, answer, out) = f.invoke(&lifecycle("asg-launch.json", &f.asg_name, &ids[1])).await;
        assert_eq!(answer["lifecycle"], "CONTINUE", "{answer}\n{out}");
        assert_eq!(code, 1, "a failure is reported: {out}");
        assert!(answer["failures"].to_string().contains(WEST), "{answer}");
        assert_eq!(f.proxy.completed()[2]["LifecycleActionResult"], "CONTINUE");
        let ip = f.address(&ids[1], false).await;
        assert!(f.ours().await.0.contains(&(ip, 443)), "the own region holds the rule");

        let audit = f
            .world
            .command(&["audit", "--json"])
            .env("PORTCULLIS_CONFIG", &f.config)
            .env("ENVIRONMENT", "prod")
            .output()
            .unwrap();
        let audit = String::from_utf8_lossy(&audit.stdout).to_string();
        assert!(audit.contains("lifecycle-completed") && audit.contains("ABANDON"), "{audit}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_true_up_after_changes_behind_our_back_converges_exactly_in_one_describe_each() {
    within(async {
        let f = fleet(3, "public").await;
        f.world.hand_rule(&f.east, "203.0.113.9/32", 443, "office").await;
        let (code, answer, out) = f.invoke(&json!({"trueup": true})).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(answer["granted"].as_array().unwrap().len(), 3, "{answer}");

        // Behind our back: one more instance, one detached.
        let before = f.instances().await;
        f.autoscaling.set_desired_capacity().auto_scaling_group_name(&f.asg_name).desired_capacity(4).send().await.unwrap();
        f.autoscaling
            .detach_instances()
            .auto_scaling_group_name(&f.asg_name)
            .instance_ids(&before[0])
            .should_decrement_desired_capacity(true)
            .send()
            .await
            .unwrap();
        let members = f.instances().await;
        assert_eq!(members.len(), 3);
        let calls_before = f.proxy.calls().len();
        let (code, answer, out) = f.invoke(&fixture_trueup(&f.asg_name)).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(answer["removed"].as_array().unwrap().len(), 1, "{answer}");
        let mut want = Vec::new();
        for id in &members {
            want.push(f.address(id, false).await);
        }
        want.sort();
        let (east, west) = f.ours().await;
        assert_eq!(east.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(), want);
        assert_eq!(west.len(), 2 * want.len());
        assert!(
            f.world.rules(&f.east).await.contains(&("203.0.113.9/32".into(), 443, Some("office".into()))),
            "hand-made rule kept"
        );

        let calls: Vec<(String, String, String)> = f.proxy.calls()[calls_before..].to_vec();
        let count = |service: &str, action: &str| calls.iter().filter(|(_, s, a)| s == service && a == action).count();
        assert_eq!(count("autoscaling", "DescribeAutoScalingGroups"), 1, "{calls:?}");
        assert_eq!(count("ec2", "DescribeInstances"), 1, "{calls:?}");
        // Per group at most one authorize and one revoke.
        assert_eq!(count("ec2", "AuthorizeSecurityGroupIngress"), 2, "{calls:?}");
        assert_eq!(count("ec2", "RevokeSecurityGroupIngress"), 2, "{calls:?}");
    })
    .await;
}

fn fixture_trueup(asg: &str) -> Value {
    let mut event = fixture("asg-trueup.json");
    event["detail"]["AutoScalingGroupName"] = json!(asg);
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_private_option_admits_private_addresses() {
    within(async {
        let f = fleet(1, "private").await;
        let id = f.instances().await.remove(0);
        let (code, _, out) = f.invoke(&fixture_trueup(&f.asg_name)).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(f.ours().await.0, [(f.address(&id, true).await, 443)]);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ipv6_option_admits_each_of_an_instance_s_ipv6_addresses_and_follows_them() {
    within(async {
        let f = fleet(1, "ipv6").await;
        let id = f.instances().await.remove(0);
        let (code, answer, out) = f.invoke(&fixture_trueup(&f.asg_name)).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(answer["skipped"][0]["instance_id"], id, "no IPv6 address yet: skipped and reported, {answer}");
        assert_eq!(f.ours().await, (vec![], vec![]));

        let described = f.world.ec2.describe_instances().instance_ids(&id).send().await.unwrap();
        let eni = described.reservations()[0].instances()[0].network_interfaces()[0].network_interface_id().unwrap().to_string();
        let assigned = f.world.ec2.assign_ipv6_addresses().network_interface_id(&eni).ipv6_address_count(2).send().await.unwrap();
        let mut hosts: Vec<String> = assigned.assigned_ipv6_addresses().iter().map(|a| format!("{a}/128")).collect();
        hosts.sort();
        assert_eq!(hosts.len(), 2);
        let (code, _, out) = f.invoke(&fixture_trueup(&f.asg_name)).await;
        assert_eq!(code, 0, "{out}");
        let (east, west) = f.ours().await;
        assert_eq!(east, hosts.iter().map(|h| (h.clone(), 443)).collect::<Vec<_>>());
        let mut want_west: Vec<(String, i32)> = hosts.iter().flat_map(|h| [(h.clone(), 80), (h.clone(), 443)]).collect();
        want_west.sort();
        assert_eq!(west, want_west);

        let dropped = assigned.assigned_ipv6_addresses()[0].to_string();
        f.world.ec2.unassign_ipv6_addresses().network_interface_id(&eni).ipv6_addresses(&dropped).send().await.unwrap();
        let (code, _, out) = f.invoke(&fixture_trueup(&f.asg_name)).await;
        assert_eq!(code, 0, "{out}");
        let kept: Vec<(String, i32)> =
            hosts.iter().filter(|h| !h.starts_with(&format!("{dropped}/"))).map(|h| (h.clone(), 443)).collect();
        assert_eq!(f.ours().await.0, kept, "the unassigned address's rule is gone, the other stays");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconfigured_asgs_test_notifications_and_malformed_events_change_nothing() {
    within(async {
        let f = fleet(1, "public").await;
        let id = f.instances().await.remove(0);
        let (code, answer, out) = f.invoke(&lifecycle("asg-launch.json", "not-listed", &id)).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(answer["success"], false);
        assert!(answer["ignored"].as_str().unwrap().contains("not-listed"), "{answer}");

        let test = json!({"source": "aws.autoscaling", "detail-type": "EC2 Instance-launch Lifecycle Action",
            "detail": {"LifecycleTransition": "autoscaling:TEST_NOTIFICATION", "AutoScalingGroupName": f.asg_name}});
        let (code, answer, _) = f.invoke(&test).await;
        assert_eq!((code, answer["success"].clone()), (0, json!(true)));

        let mut malformed = lifecycle("asg-launch.json", &f.asg_name, &id);
        malformed["detail"].as_object_mut().unwrap().remove("LifecycleActionToken");
        let (code, _, out) = f.invoke(&malformed).await;
        assert_eq!(code, 2, "{out}");
        assert!(out.contains("LifecycleActionToken is missing"), "{out}");

        assert!(f.proxy.completed().is_empty());
        assert_eq!(f.ours().await, (vec![], vec![]));
    })
    .await;
}

/// The binary's router in process over a fleet (EC2 and Auto Scaling through the proxy).
#[derive(Clone)]
struct Served {
    base: String,
    store: std::sync::Arc<dyn portcullis_store::Store>,
}

impl Served {
    /// Stores a token for `envs` (none: every environment) with `role`; its secret.
    async fn token(&self, role: portcullis_core::Role, envs: &[&str]) -> String {
        use portcullis_core::{Environment, Timestamp};
        let envs = envs.iter().map(|e| Environment::parse(e).unwrap()).collect();
        let (secret, token) = portcullis::auth::issue("ops", role, envs, Timestamp::now_utc(), None, "test").unwrap();
        let actor = portcullis_store::Actor { name: "test".into(), interface: portcullis_core::Interface::Cli };
        self.store.create_token(token, &actor).await.unwrap();
        secret
    }

    async fn post(&self, secret: &str, path: &str, body: &Value) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let response = reqwest::Client::new().post(url).bearer_auth(secret).json(body).send().await.unwrap();
        (response.status().as_u16(), response.json::<Value>().await.unwrap_or(Value::Null))
    }
}

impl Fleet {
    /// Serves the binary's router in process over this fleet, its configuration with `extra`
    /// appended.
    async fn serve(&self, extra: &str) -> Served {
        use std::sync::Arc;

        use portcullis::app::App;
        use portcullis::config::{Config, Overrides};
        use portcullis::routes::router;
        use portcullis_core::Timestamp;

        use portcullis_store::{SqliteStore, Store};

        let path = self.world.dir.path().join(format!("{}.toml", unique("served")));
        std::fs::write(&path, format!("{}\n{extra}", std::fs::read_to_string(&self.config).unwrap())).unwrap();
        let overrides = Overrides { config_file: Some(path), ..Overrides::default() };
        let config = Config::load(&overrides, &|_| None).unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(self.world.store_path()).unwrap());
        let through_proxy = crate::aws_proxy::sdk_config_at(&self.proxy.url).await;
        let firewall = Arc::new(portcullis_aws::Ec2Firewall::new(&through_proxy));
        let clock = Arc::new(portcullis_engine::ManualClock::new(Timestamp::now_utc()));
        let membership = Arc::new(portcullis_aws::AsgMembership::new(&through_proxy));
        let engine =
            portcullis::wiring::builder(&config, store.clone(), firewall, clock, Arc::new(portcullis_engine::LogNotifier))
                .members(config.members.clone(), config.member_ttl, membership)
                .build();
        let app = Arc::new(App::new(Arc::new(engine), &config, None));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            axum::serve(listener, router(app).into_make_service_with_connect_info::<std::net::SocketAddr>()).await.unwrap()
        });
        Served { base, store }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_v1_events_takes_the_same_events_from_an_admin_token_for_every_environment() {
    use portcullis_core::Role;

    within(async {
        let f = fleet(2, "public").await;
        let served = f.serve("").await;
        let admin = served.token(Role::Admin, &[]).await;
        let limited = served.token(Role::Admin, &["prod"]).await;
        let base = served.base.clone();
        let post = |secret: String, body: Value| {
            let served = &served;
            async move { served.post(&secret, "/v1/events", &body).await }
        };

        let (status, answer) = post(admin.clone(), fixture_trueup(&f.asg_name)).await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["granted"].as_array().map(Vec::len), Some(2), "{answer}");
        assert_eq!(f.ours().await.0.len(), 2);
        let listed: Value = reqwest::Client::new()
            .get(format!("{base}/v1/grants?all=true"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut instances: Vec<&str> = listed.as_array().unwrap().iter().filter_map(|g| g["instance"].as_str()).collect();
        instances.sort_unstable();
        let mut members = f.instances().await;
        members.sort_unstable();
        assert_eq!(instances, members, "/v1/grants names each member's instance: {listed}");
        let (status, answer) = post(limited, json!({"trueup": true})).await;
        assert_eq!(status, 403, "{answer}");
        let mut malformed = lifecycle("asg-launch.json", &f.asg_name, "i-0a1b2c3d4e5f67890");
        malformed["detail"].as_object_mut().unwrap().remove("LifecycleHookName");
        let (status, answer) = post(admin.clone(), malformed).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (400, Some("invalid_event")), "{answer}");
        let (status, _) = post(admin, fixture("event-add.json")).await;
        assert_eq!(status, 400, "an IP Whitelist Manager action is for the Lambda and invoke");
        assert!(f.proxy.completed().is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scheduled_event_trues_up_once_per_member_sync_period() {
    within(async {
        let f = fleet(2, "public").await;
        let scheduled = json!({"detail-type": "Scheduled Event", "source": "aws.events", "detail": {}});
        let (code, answer, out) = f.invoke(&scheduled).await;
        assert_eq!(code, 0, "{out}");
        assert_eq!(answer["members"]["granted"].as_array().map(Vec::len), Some(2), "{answer}");
        assert_eq!(f.ours().await.0.len(), 2);
        // The next minute's run, in the same period, leaves the members to the next period's.
        let (code, answer, out) = f.invoke(&scheduled).await;
        assert_eq!(code, 0, "{out}");
        assert!(answer.get("members").is_none(), "{answer}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_trues_up_the_members_of_every_configured_asg() {
    within(async {
        let f = fleet(2, "public").await;
        let config = f.config.display().to_string();
        let env = [("AWS_ENDPOINT_URL", f.proxy.url.as_str()), ("PORTCULLIS_CONFIG", config.as_str()), ("ENVIRONMENT", "prod")];
        let _server = crate::serve::Server::start(&f.world, &env);
        let mut want = Vec::new();
        for id in f.instances().await {
            want.push((f.address(&id, false).await, 443));
        }
        want.sort();
        crate::support::eventually(Duration::from_secs(60), "serve's first true-up", || async {
            let (east, west) = f.ours().await;
            east == want && west.len() == 2 * want.len()
        })
        .await;
        let calls = f.proxy.calls();
        assert_eq!(calls.iter().filter(|(_, _, a)| a == "DescribeAutoScalingGroups").count(), 1, "{calls:?}");
    })
    .await;
}

/// Finding 8: Auto Scaling events are not a person's changes (a limit of their own, none for an
/// `events` token); a burst of launches is described together; a launch naming an instance
/// that is not the group's is abandoned and audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_events_have_their_own_limit_are_described_together_and_a_stranger_is_abandoned() {
    use portcullis_core::Role;

    within(async {
        let f = fleet(10, "private").await;
        let served = f.serve("[connection]\nrate_limit_per_minute = 2\nevents_per_minute = 45\n").await;
        let admin = served.token(Role::Admin, &[]).await;
        let machine = served.token(Role::Events, &[]).await;

        // A stranger: an instance of no Auto Scaling group, named in a launch of ours.
        let image = f.world.ec2.describe_images().send().await.unwrap().images()[0].image_id().unwrap().to_string();
        let run = f.world.ec2.run_instances().image_id(image).min_count(1).max_count(1).send().await.unwrap();
        let stranger = run.instances()[0].instance_id().unwrap().to_string();
        let (status, answer) = served.post(&admin, "/v1/events", &lifecycle("asg-launch.json", &f.asg_name, &stranger)).await;
        assert_eq!((status, answer["lifecycle"].as_str()), (200, Some("ABANDON")), "{answer}");
        assert!(answer["failures"][0].as_str().unwrap().contains("is not a member of"), "{answer}");
        assert_eq!(f.proxy.completed().last().unwrap()["LifecycleActionResult"], "ABANDON");
        let audit = served.store.audit(None, 20).await.unwrap();
        let completed = audit.iter().find(|e| e.action == portcullis_core::Action::LifecycleCompleted).unwrap();
        assert!(completed.reason.contains("not a member"), "{}", completed.reason);

        // Ten launches at once: one DescribeInstances names them all.
        let describes = |proxy: &Proxy| proxy.calls().iter().filter(|c| c.2 == "DescribeInstances").count();
        let before = describes(&f.proxy);
        let instances = f.instances().await;
        let launches: Vec<_> = instances
            .iter()
            .map(|id| {
                let (served, admin, event) = (served.clone(), admin.clone(), lifecycle("asg-launch.json", &f.asg_name, id));
                tokio::spawn(async move { served.post(&admin, "/v1/events", &event).await })
            })
            .collect();
        for launch in launches {
            let (status, answer) = launch.await.unwrap();
            assert_eq!((status, answer["lifecycle"].as_str()), (200, Some("CONTINUE")), "{answer}");
        }
        let launched = describes(&f.proxy) - before;
        assert!(launched <= 2, "10 launches cost {launched} DescribeInstances calls");

        // 45 events a minute for an admin token (11 so far), and a person's changes untouched.
        for i in 0..34 {
            let (status, answer) = served.post(&admin, "/v1/events", &json!({"trueup": true})).await;
            assert_eq!(status, 200, "event {i}: {answer}");
        }
        let (status, answer) = served.post(&admin, "/v1/events", &json!({"trueup": true})).await;
        assert_eq!((status, answer["error"]["code"].as_str()), (429, Some("rate_limited")), "{answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains("AWS events"), "{answer}");
        let grant = json!({"cidr": "198.51.100.250", "env": "prod", "ttl": "1h"});
        assert_eq!(served.post(&admin, "/v1/grants", &grant).await.0, 201, "the person's changes are their own");
        // An events token has no limit, and may do nothing else.
        for _ in 0..5 {
            assert_eq!(served.post(&machine, "/v1/events", &json!({"trueup": true})).await.0, 200);
        }
        assert_eq!(served.post(&machine, "/v1/grants", &grant).await.0, 403);
    })
    .await;
}
