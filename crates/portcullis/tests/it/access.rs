//! Who may do what over HTTP, and what it costs them: a token's environments on every `/v1`
//! route, refused requests against the rate limit, and changes that carry their own route.

use portcullis_aws::Ec2Firewall;
use portcullis_core::{Environment, Role};
use serde_json::Value;

use crate::connection::{Conn, WEST, bearer, ec2_as};
use crate::support::{sdk_config, unique};

#[tokio::test]
async fn a_change_carries_its_route_so_applying_needs_no_observe_first() {
    use portcullis_core::{AppliedRule, Cidr, GroupChange, PortRange, Protocol, Route, TargetId};
    use portcullis_engine::Firewall;
    let role = "arn:aws:iam::210987654321:role/portcullis";
    let other = ec2_as(role, WEST).await;
    let group = other
        .create_security_group()
        .group_name(unique("sg"))
        .description("other account")
        .send()
        .await
        .unwrap()
        .group_id
        .unwrap();
    // A fresh firewall that has observed nothing: the route must come from the change itself.
    let firewall = Ec2Firewall::new(&sdk_config().await);
    let rule = AppliedRule {
        cidr: Cidr::parse("198.51.100.9").unwrap(),
        ec2_cidr: "198.51.100.9/32".into(),
        ports: PortRange { protocol: Protocol::Tcp, from: 443, to: 443 },
        description: "pc:dev routed".into(),
    };
    let change = GroupChange {
        list: None,
        target: TargetId { region: WEST.into(), group_id: group.clone() },
        route: Route { region: WEST.into(), endpoint_url: None, role_arn: Some(role.into()) },
        environment: Environment::parse("dev").unwrap(),
        authorize: vec![rule],
        revoke: vec![],
        update_descriptions: vec![],
    };
    let applied = firewall.apply(&change).await.expect("applied through the change's role");
    assert_eq!(applied.authorized, 1);
    let out = other.describe_security_groups().group_ids(&group).send().await.unwrap();
    let cidrs: Vec<&str> =
        out.security_groups()[0].ip_permissions().iter().flat_map(|p| p.ip_ranges()).filter_map(|r| r.cidr_ip()).collect();
    assert_eq!(cidrs, ["198.51.100.9/32"]);
}

#[tokio::test]
async fn an_admin_tokens_environments_bound_every_v1_route() {
    use reqwest::Method;
    let c = Conn::start("default_environment = \"dev\"\n[environments.dev]\n[environments.prod]\n[environments.stage]\n").await;
    let (root, _) = c.token("root", Role::Admin, &[], None).await;
    let (alice, alice_id) = c.token("alice", Role::Admin, &["dev"], None).await;
    for (i, env) in ["dev", "prod", "stage"].iter().enumerate() {
        let body = serde_json::json!({"cidr": format!("198.51.100.{}", i + 1), "env": env, "ttl": "1h"});
        let (status, answer) = c.v1(Method::POST, "/grants", &root, Some(body)).await;
        assert_eq!(status, 201, "{answer}");
    }
    let refused = |status: u16, answer: &Value, env: &str| {
        assert_eq!(status, 403, "{answer}");
        assert_eq!(answer["error"]["code"], "not_allowed", "{answer}");
        let message = answer["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("token {alice_id} is not valid for environment {env}")), "{answer}");
    };

    // Changes outside the token's environments are refused, and change nothing.
    let body = serde_json::json!({"cidr": "198.51.100.171", "env": "prod", "ttl": "1h"});
    let (status, answer) = c.v1(Method::POST, "/grants", &alice, Some(body)).await;
    refused(status, &answer, "prod");
    let (status, answer) = c.v1(Method::DELETE, "/grants/prod/198.51.100.2", &alice, None).await;
    refused(status, &answer, "prod");
    let (_, prod) = c.v1(Method::GET, "/grants?env=prod", &root, None).await;
    let prod: Vec<&str> = prod.as_array().unwrap().iter().map(|g| g["cidr"].as_str().unwrap()).collect();
    assert_eq!(prod, ["198.51.100.2/32"], "prod is as it was");

    // Reads too.
    let (status, answer) = c.v1(Method::GET, "/grants?env=stage", &alice, None).await;
    refused(status, &answer, "stage");
    let (status, answer) = c.v1(Method::GET, "/audit?env=stage", &alice, None).await;
    refused(status, &answer, "stage");
    // `all` is every environment the token may see.
    let (status, all) = c.v1(Method::GET, "/grants?all=true", &alice, None).await;
    assert_eq!(status, 200, "{all}");
    let envs: Vec<&str> = all.as_array().unwrap().iter().map(|g| g["environment"].as_str().unwrap()).collect();
    assert_eq!(envs, ["dev"], "{all}");
    let (status, audit) = c.v1(Method::GET, "/audit", &alice, None).await;
    assert_eq!(status, 200, "{audit}");
    assert!(!audit.as_array().unwrap().is_empty());
    assert!(audit.as_array().unwrap().iter().all(|e| e["environment"] == "dev"), "{audit}");
    let (status, body) = c.v1(Method::GET, "/status", &alice, None).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("last_reconcile").is_none(), "a limited token sees no summary of every environment: {body}");

    // Inside its environment the token works as before.
    let body = serde_json::json!({"cidr": "198.51.100.9", "env": "dev", "ttl": "1h"});
    assert_eq!(c.v1(Method::POST, "/grants", &alice, Some(body)).await.0, 201);
    assert_eq!(c.v1(Method::DELETE, "/grants/dev/198.51.100.9", &alice, None).await.0, 200);

    // Every refusal was audited, where an unlimited token can see it.
    let (_, audit) = c.v1(Method::GET, "/audit?limit=1000", &root, None).await;
    let refusals = audit.as_array().unwrap().iter().filter(|e| e["action"] == "refused" && e["actor"] == "alice").count();
    assert_eq!(refusals, 4, "{audit}");
}

#[tokio::test]
async fn refused_requests_do_not_use_up_a_callers_changes() {
    let c = Conn::start(
        "default_environment = \"dev\"\n[connection]\nrate_limit_per_minute = 2\n[environments.dev]\n[environments.prod]\n",
    )
    .await;
    let (secret, _) = c.token("ci", Role::SelfService, &["dev"], None).await;
    // Three refusals (a token for dev, asking for prod)…
    for _ in 0..3 {
        let (status, body) = c.call(reqwest::Method::POST, "?env=prod", Some(bearer(&secret)), &[]).await;
        assert_eq!(status, 403, "{body}");
    }
    // …leave both changes of the minute.
    assert_eq!(c.post(&bearer(&secret)).await.0, 201);
    assert_eq!(c.delete(&bearer(&secret)).await.0, 200);
    let (status, body) = c.post(&bearer(&secret)).await;
    assert_eq!(status, 429, "the third change of the minute: {body}");
    // Refusals have a cap of their own (four per change allowed): 8 a minute, then 429.
    c.clock.advance(time::Duration::seconds(61));
    for _ in 0..8 {
        assert_eq!(c.call(reqwest::Method::DELETE, "?env=prod", Some(bearer(&secret)), &[]).await.0, 403);
    }
    let (status, body) = c.call(reqwest::Method::DELETE, "?env=prod", Some(bearer(&secret)), &[]).await;
    assert_eq!(status, 429, "{body}");
    assert!(body["error"]["message"].as_str().unwrap_or_default().contains("refused requests"), "{body}");
}

/// Every route of the OpenAPI contract, called with an admin token limited to `dev`: nothing of
/// `prod`, and no change request on a group outside `dev`, is seen or changed. A route the
/// contract gains fails this test until it is added here, so no route escapes the bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_of_the_contract_is_bounded_by_a_token_s_environments() {
    use aws_sdk_ec2::types::{IpPermission, IpRange};
    use reqwest::Method;

    use crate::support::{REGION, World};

    let w = World::new().await;
    let (dev_group, prod_group, foreign) = (w.group(false, &[]).await, w.group(false, &[]).await, w.group(false, &[]).await);
    let c = Conn::start(&format!(
        r#"
        default_environment = "dev"
        [environments.dev]
        [[environments.dev.targets]]
        region = "{REGION}"
        group_ids = ["{dev_group}"]
        ports = "tcp:443"
        [environments.prod]
        [[environments.prod.targets]]
        region = "{REGION}"
        group_ids = ["{prod_group}"]
        ports = "tcp:443"
        [guard]
        groups = ["{dev_group}", "{prod_group}", "{foreign}"]
        approvers = ["root", "alice"]
        [[guard.targets]]
        region = "{REGION}"
        "#
    ))
    .await;
    let (root, _) = c.token("root", Role::Admin, &[], None).await;
    let (alice, _) = c.token("alice", Role::Admin, &["dev"], None).await;
    for (cidr, env) in [("198.51.100.1", "dev"), ("198.51.100.2", "prod")] {
        let (status, answer) =
            c.v1(Method::POST, "/grants", &root, Some(serde_json::json!({"cidr": cidr, "env": env, "ttl": "1h"}))).await;
        assert_eq!(status, 201, "{answer}");
    }
    c.engine
        .guard()
        .unwrap()
        .record_baseline(false, &portcullis_engine::Requester::named("ops", portcullis_core::Interface::Cli))
        .await
        .unwrap();
    // One change request on each group, filed from its CloudTrail event.
    let mut requests = std::collections::BTreeMap::new();
    for group in [&dev_group, &prod_group, &foreign] {
        let range = IpRange::builder().cidr_ip("203.0.113.0/24").build();
        let perm = IpPermission::builder().ip_protocol("tcp").from_port(22).to_port(22).ip_ranges(range).build();
        let out = w.ec2.authorize_security_group_ingress().group_id(group.as_str()).ip_permissions(perm).send().await.unwrap();
        let id = out.security_group_rules()[0].security_group_rule_id().unwrap().to_string();
        let event = crate::guard::added(group, &id, "203.0.113.0/24", 22, crate::guard::ALICE);
        let Some(Ok(read)) = portcullis::events::read(&event) else { panic!("an event") };
        let answer = portcullis::events::handle(&c.engine, read, portcullis_core::Interface::Http).await.unwrap();
        requests.insert(group.clone(), answer["request"]["id"].as_str().unwrap().to_string());
    }

    let contract: Value = reqwest::get(format!("{}/openapi.json", c.base)).await.unwrap().json().await.unwrap();
    let mut walked = 0;
    for (path, operations) in contract["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            walked += 1;
            match (path.as_str(), method.as_str()) {
                ("/v1/grants", "get") => {
                    let (status, all) = c.v1(Method::GET, "/grants?all=true", &alice, None).await;
                    assert_eq!(status, 200, "{all}");
                    assert!(all.as_array().unwrap().iter().all(|g| g["environment"] == "dev"), "{all}");
                    assert_eq!(c.v1(Method::GET, "/grants?env=prod", &alice, None).await.0, 403);
                }
                ("/v1/grants", "post") => {
                    let body = serde_json::json!({"cidr": "198.51.100.3", "env": "prod", "ttl": "1h"});
                    assert_eq!(c.v1(Method::POST, "/grants", &alice, Some(body)).await.0, 403);
                }
                ("/v1/grants/{env}/{cidr}", "delete") => {
                    assert_eq!(c.v1(Method::DELETE, "/grants/prod/198.51.100.2%2F32", &alice, None).await.0, 403);
                }
                ("/v1/grants/{env}/{address}/{prefix}", "delete") => {
                    assert_eq!(c.v1(Method::DELETE, "/grants/prod/198.51.100.2/32", &alice, None).await.0, 403);
                }
                ("/v1/audit", "get") => {
                    let (status, audit) = c.v1(Method::GET, "/audit?limit=1000", &alice, None).await;
                    assert_eq!(status, 200, "{audit}");
                    assert!(audit.as_array().unwrap().iter().all(|e| e["environment"] == "dev"), "{audit}");
                    assert_eq!(c.v1(Method::GET, "/audit?env=prod", &alice, None).await.0, 403);
                }
                ("/v1/status", "get") => {
                    let (status, body) = c.v1(Method::GET, "/status", &alice, None).await;
                    assert_eq!(status, 200, "{body}");
                    assert!(body.get("last_reconcile").is_none(), "{body}");
                    assert!(!body.to_string().contains("198.51.100.2"), "nothing of prod: {body}");
                }
                ("/v1/events", "post") => {
                    let event = crate::guard::event("cloudtrail-authorize-ingress.json", &prod_group);
                    assert_eq!(c.v1(Method::POST, "/events", &alice, Some(event)).await.0, 403);
                }
                ("/v1/requests", "get") => {
                    let (status, listed) = c.v1(Method::GET, "/requests?status=all", &alice, None).await;
                    assert_eq!(status, 200, "{listed}");
                    let groups: Vec<&str> = listed.as_array().unwrap().iter().map(|r| r["group_id"].as_str().unwrap()).collect();
                    assert_eq!(groups, [dev_group.as_str()], "only the request on dev's group");
                    let (_, every) = c.v1(Method::GET, "/requests?status=all", &root, None).await;
                    assert_eq!(every.as_array().unwrap().len(), 3, "{every}");
                }
                ("/v1/requests/{id}/approve" | "/v1/requests/{id}/deny", "post") => {
                    let verb = path.rsplit('/').next().unwrap();
                    for group in [&prod_group, &foreign] {
                        let (status, answer) =
                            c.v1(Method::POST, &format!("/requests/{}/{verb}", requests[group]), &alice, None).await;
                        assert_eq!(status, 404, "{verb} on {group}: {answer}");
                    }
                }
                ("/connection", "get" | "post" | "delete") => {
                    let m = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
                    assert_eq!(c.call(m, "?env=prod", Some(bearer(&alice)), &[]).await.0, 403, "{method} /connection");
                }
                other => panic!("{other:?} is in the contract but not in this test: say how a token for dev is bounded there"),
            }
        }
    }
    assert_eq!(walked, 13, "every operation of the contract was walked");
    // Nothing outside dev changed: prod's grant, and the other groups' requests, are as they were.
    let (_, prod) = c.v1(Method::GET, "/grants?env=prod", &root, None).await;
    assert_eq!(prod.as_array().unwrap().len(), 1, "{prod}");
    let (_, every) = c.v1(Method::GET, "/requests?status=all", &root, None).await;
    assert!(every.as_array().unwrap().iter().all(|r| r["status"] == "pending"), "{every}");
}

/// An Auto Scaling group in another account is read through the member source's role: its
/// instances and their addresses are that account's, and the same name here finds nothing.
#[tokio::test]
async fn an_asg_in_another_account_is_read_through_its_role() {
    use aws_config::sts::AssumeRoleProvider;
    use portcullis_core::Route;
    use portcullis_engine::Membership;
    let role = "arn:aws:iam::210987654322:role/portcullis-members";
    let base = sdk_config().await;
    let provider = aws_credential_types::provider::SharedCredentialsProvider::new(
        AssumeRoleProvider::builder(role).session_name("test").configure(&base).build().await,
    );
    let region = aws_sdk_ec2::config::Region::new(WEST);
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&base).region(region.clone()).credentials_provider(provider.clone()).build(),
    );
    let autoscaling = aws_sdk_autoscaling::Client::from_conf(
        aws_sdk_autoscaling::config::Builder::from(&base).region(region).credentials_provider(provider).build(),
    );
    let image = ec2.describe_images().send().await.unwrap().images()[0].image_id().unwrap().to_string();
    let template = unique("lt");
    let data = aws_sdk_ec2::types::RequestLaunchTemplateData::builder()
        .image_id(image)
        .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
        .build();
    ec2.create_launch_template().launch_template_name(&template).launch_template_data(data).send().await.unwrap();
    let subnets = ec2.describe_subnets().send().await.unwrap();
    let subnet = subnets.subnets()[0].subnet_id().unwrap().to_string();
    let asg = unique("web");
    let spec = aws_sdk_autoscaling::types::LaunchTemplateSpecification::builder().launch_template_name(&template).build();
    autoscaling
        .create_auto_scaling_group()
        .auto_scaling_group_name(&asg)
        .launch_template(spec)
        .min_size(0)
        .max_size(4)
        .desired_capacity(2)
        .vpc_zone_identifier(&subnet)
        .send()
        .await
        .unwrap();

    let membership = portcullis_aws::AsgMembership::new(&base);
    let routed = Route { region: WEST.into(), endpoint_url: None, role_arn: Some(role.into()) };
    let instances = membership.instances(&routed, &asg).await.unwrap().expect("the ASG, in the role's account");
    assert_eq!(instances.len(), 2, "{instances:?}");
    let described = ec2.describe_instances().send().await.unwrap();
    let theirs: Vec<String> =
        described.reservations().iter().flat_map(|r| r.instances()).filter_map(|i| i.instance_id().map(str::to_string)).collect();
    assert!(instances.iter().all(|i| theirs.contains(&i.id)), "the other account's instances: {instances:?}");
    let here = Route { region: WEST.into(), endpoint_url: None, role_arn: None };
    assert_eq!(membership.instances(&here, &asg).await.unwrap(), None, "without the role, this account has no such ASG");
}
