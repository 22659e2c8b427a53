use super::*;
use portcullis_core::{AddressKind, GroupId, PrefixListId};

#[test]
fn a_target_may_name_prefix_lists() {
    let load = |toml: &str| Config::from_toml(toml, "portcullis.toml", &Overrides::default(), &|_| None);
    let c = load("[[environments.dev.targets]]\nregion = \"us-east-1\"\nprefix_list_ids = [\"pl-0abc\"]\n").unwrap();
    assert_eq!(c.specs[0].selector, TargetSelector::PrefixLists(vec![PrefixListId::parse("pl-0abc").unwrap()]));
    let c = load("[[environments.dev.targets]]\nregion = \"us-east-1\"\ndiscovery = true\nprefix_lists = true\n").unwrap();
    let tagged = TargetSelector::TaggedPrefixLists { tag_key: "WhitelistManaged".into(), tag_value: "true".into() };
    assert_eq!(c.specs[0].selector, tagged);
    for (bad, says) in [
        ("prefix_list_ids = [\"sg-0abc\"]", "invalid prefix list id"),
        ("prefix_list_ids = []", "is empty"),
        ("prefix_list_ids = [\"pl-1\"]\ngroup_ids = [\"sg-1\"]", "give one of"),
        ("group_ids = [\"sg-1\"]\nprefix_lists = true", "needs discovery = true"),
    ] {
        let err = load(&format!("[[environments.dev.targets]]\nregion = \"us-east-1\"\n{bad}\n")).unwrap_err().to_string();
        assert!(err.contains(says), "{bad}: {err}");
    }
}

fn load(toml_text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_toml(toml_text, "file", &Overrides::default(), &|k| vars.get(k).cloned())
}

#[test]
fn metrics_listen_only_where_given_and_never_on_the_public_address() {
    assert_eq!(load("", &[]).unwrap().metrics_listen, None, "off by default");
    let on = load("[metrics]\nlisten = \"127.0.0.1:9464\"\n", &[]).unwrap();
    assert_eq!(on.metrics_listen, Some("127.0.0.1:9464".parse().unwrap()));
    let env = load("[metrics]\nlisten = \"127.0.0.1:9464\"\n", &[("PORTCULLIS_METRICS_LISTEN", "0.0.0.0:9000")]).unwrap();
    assert_eq!(env.metrics_listen, Some("0.0.0.0:9000".parse().unwrap()), "the environment wins");
    for (text, says) in [
        ("[metrics]\nlisten = \"9464\"\n", "metrics.listen: \"9464\" is not an address:port"),
        ("listen = \"127.0.0.1:8080\"\n[metrics]\nlisten = \"127.0.0.1:8080\"\n", "one of their own"),
        ("[metrics]\nport = 1\n", "unknown field"),
    ] {
        let err = load(text, &[]).unwrap_err().to_string();
        assert!(err.contains(says), "{text}: {err}");
    }
}

#[test]
fn members_are_read_with_their_defaults_and_checked() {
    let c = load(
        r#"
        default_environment = "prod"
        member_ttl = "12h"
        [environments.prod]
        [[environments.prod.members]]
        asg = "web"
        region = "us-east-1"
        [[environments.prod.members]]
        asg = "web"
        region = "eu-west-1"
        address = "ipv6"
        role_arn = "arn:aws:iam::210987654321:role/portcullis"
        on_failure = "abandon"
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(c.members.len(), 2);
    assert_eq!((c.members[0].address, c.members[0].owner().id.as_str()), (AddressKind::Public, "asg:us-east-1/web"));
    assert_eq!(c.members[1].route.role_arn.as_deref(), Some("arn:aws:iam::210987654321:role/portcullis"));
    let answers = (c.members[0].on_failure, c.members[1].on_failure);
    assert_eq!(answers, (portcullis_core::OnFailure::Continue, portcullis_core::OnFailure::Abandon), "CONTINUE by default");
    assert_eq!(c.member_ttl, time::Duration::hours(12));
    assert_eq!(c.member_sync_interval, time::Duration::minutes(5));
    let refused = |toml: &str| load(toml, &[]).unwrap_err().to_string();
    let env = "default_environment = \"prod\"\n[environments.prod]\n";
    assert!(
        refused(&format!("{env}[[environments.prod.members]]\nasg = \"web\"\nregion = \"us-east-1\"\naddress = \"elastic\"\n"))
            .contains("is not public, private or ipv6")
    );
    let bad =
        refused(&format!("{env}[[environments.prod.members]]\nasg = \"web\"\nregion = \"us-east-1\"\non_failure = \"retry\"\n"));
    assert!(bad.contains("members[0].on_failure") && bad.contains("is not \"continue\" or \"abandon\""), "{bad}");
    assert!(
        refused(&format!("{env}[[environments.prod.members]]\nasg = \"\"\nregion = \"us-east-1\"\n")).contains("members[0].asg")
    );
    let private = "default_environment = \"prod\"\n[environments.prod]\nrefuse_special_purpose = true\n\
                   [[environments.prod.members]]\nasg = \"web\"\nregion = \"us-east-1\"\naddress = \"private\"\n";
    assert!(refused(private).contains("refuse_special_purpose"));
    assert!(refused("member_sync_secs = 0\n").contains("member_sync_secs"));
}

#[test]
fn a_syntax_error_names_its_line() {
    // The error starts the third line: a count of `lines()` before it would say line 2.
    let err = load("rule_quota_ipv4 = 60\nrule_quota_ipv6 = 60\n= 1\n", &[]).unwrap_err();
    assert!(err.to_string().contains("file line 3"), "{err}");
    let err = load("rule_quota_ipv4 = 60\nrule_quota_ipv6 = \"x\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("file line 2"), "{err}");
}

#[test]
fn defaults_without_a_file() {
    let c = load("", &[]).unwrap();
    assert_eq!(c.store, StoreSpec::Sqlite("portcullis.db".into()));
    assert_eq!(c.firewall, FirewallKind::DryRun);
    assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
    assert_eq!(c.default_environment.as_str(), "dev");
    assert_eq!(c.policies.len(), 1);
    assert!(c.specs.is_empty());
}

#[test]
fn seed_variables() {
    let c = load(
        "",
        &[("ENVIRONMENT", "staging"), ("MANAGED_SECURITY_GROUP_IDS", r#"["sg-1", "sg-2"]"#), ("AWS_REGION", "eu-west-1")],
    )
    .unwrap();
    assert_eq!(c.default_environment.as_str(), "staging");
    assert_eq!(c.specs[0].selector, TargetSelector::Ids(vec![GroupId::parse("sg-1").unwrap(), GroupId::parse("sg-2").unwrap()]));
    // The IP Whitelist Manager's variables alone never switch AWS on.
    assert_eq!(c.firewall, FirewallKind::DryRun);
    let c = load("", &[("ENABLE_SG_DISCOVERY", "true"), ("SG_DISCOVERY_TAG_KEY", "K"), ("AWS_REGION", "eu-west-1")]).unwrap();
    assert_eq!(c.specs[0].selector, TargetSelector::Discovery { tag_key: "K".into(), tag_value: "true".into() });
    let err = load("", &[("MANAGED_SECURITY_GROUP_IDS", "sg-1")]).unwrap_err();
    assert_eq!(err.key, "MANAGED_SECURITY_GROUP_IDS");
    let err = load("", &[("ENABLE_SG_DISCOVERY", "true")]).unwrap_err();
    assert_eq!(err.key, "AWS_REGION");
}

#[test]
fn errors_name_the_key() {
    let err = load("[environments.dev]\nmax_ttl = \"9y\"\n", &[]).unwrap_err();
    assert_eq!(err.key, "environments.dev.max_ttl");
    let err = load("[environments.dev]\n[[environments.dev.targets]]\nregion = \"us-east-1\"\n", &[]).unwrap_err();
    assert_eq!(err.key, "environments.dev.targets[0]");
    let err = load(
        "[environments.dev]\n[[environments.dev.targets]]\nregion = \"r\"\ngroup_ids = [\"sg-1\"]\nports = \"tcp:22\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "environments.dev.targets[0].ports");
    let err = load("[environments.prod]\n", &[]).unwrap_err();
    assert_eq!(err.key, "ENVIRONMENT");
    assert!(toml::from_str::<FileConfig>("colour = 1").unwrap_err().message().contains("colour"));
}

#[test]
fn a_full_file() {
    let c = load(
        r#"
        firewall = "aws"
        marker_prefix = "pcx"
        rule_quota_ipv4 = 50
        [environments.dev]
        [[environments.dev.targets]]
        region = "us-east-1"
        discovery = true
        [environments.prod]
        users = ["alice", "U0ALICE"]
        user_groups = ["S0SRE"]
        max_ttl = "7d"
        [[environments.prod.targets]]
        region = "eu-west-1"
        group_ids = ["sg-0abc"]
        ports = "nlb"
        "#,
        &[],
    )
    .unwrap();
    assert_eq!(c.firewall, FirewallKind::Aws);
    assert_eq!(c.specs.len(), 2);
    assert_eq!(c.quota.ipv4, 50);
    let prod = &c.policies[&Environment::parse("prod").unwrap()];
    assert_eq!(prod.max_ttl().to_string(), "7d");
    assert!(prod.rules().allowed_users.as_ref().unwrap().contains("alice"));
    assert!(prod.allowed_groups().contains("S0SRE"));
    assert_eq!(c.slack.command, "/infra");
    assert_eq!(c.slack.rate_limit_per_minute, 20);
    assert_eq!(c.slack.signing_secret, None);
}

#[test]
fn a_target_belongs_to_one_environment_and_the_refusal_names_both() {
    let two = |region_b: &str| {
        format!(
            "[environments.dev]\n[[environments.dev.targets]]\nregion = \"us-east-1\"\ngroup_ids = [\"sg-1\"]\n\
             [environments.prod]\n[[environments.prod.targets]]\nregion = \"{region_b}\"\ngroup_ids = [\"sg-1\"]\n"
        )
    };
    let err = load(&two("us-east-1"), &[]).unwrap_err().to_string();
    assert!(err.contains("sg-1 (us-east-1) is also a target of environment dev") && err.contains("environments.prod"), "{err}");
    assert!(load(&two("eu-west-1"), &[]).is_ok(), "the same id in another region is another group");
}

#[test]
fn connection_and_iam_settings() {
    let c = load(
        r#"
        [connection]
        trusted_proxies = ["10.0.0.0/8"]
        rate_limit_per_minute = 5
        [auth.iam]
        server_id = "portcullis.example.com"
        [environments.dev]
        time_to_expire = 120
        principals = ["arn:aws:iam::123456789012:user/*"]
        [[environments.dev.targets]]
        region = "us-west-2"
        group_ids = ["sg-1"]
        ports = "tcp:80"
        role_arn = "arn:aws:iam::210987654321:role/portcullis"
        "#,
        &[],
    )
    .unwrap();
    let dev = &c.policies[&Environment::parse("dev").unwrap()];
    assert_eq!(dev.connection_ttl().to_string(), "2m");
    assert!(dev.admits_principal("arn:aws:iam::123456789012:user/alice"));
    assert_eq!(c.connection.rate_limit_per_minute, 5);
    assert_eq!(c.connection.trusted_proxies.len(), 1);
    let iam = c.iam.unwrap();
    assert_eq!(iam.sts_endpoint, "https://sts.amazonaws.com");
    assert_eq!(c.specs[0].role_arn.as_deref(), Some("arn:aws:iam::210987654321:role/portcullis"));
    // Defaults: 1h, 30 a minute, no proxies, IAM off.
    let c = load("", &[]).unwrap();
    assert_eq!(c.policies.values().next().unwrap().connection_ttl().to_string(), "1h");
    assert_eq!(c.connection.rate_limit_per_minute, 30);
    assert!(c.connection.trusted_proxies.is_empty() && c.iam.is_none());
    for (text, key) in [
        ("[environments.dev]\ntime_to_expire = 59\n", "environments.dev.time_to_expire"),
        ("[environments.dev]\ntime_to_expire = \"2w\"\n", "environments.dev.time_to_expire"),
        ("[environments.dev]\nmax_ttl = \"1h\"\ntime_to_expire = \"2h\"\n", "environments.dev.time_to_expire"),
        ("[environments.dev]\nprincipals = [\"alice\"]\n", "environments.dev.principals"),
        ("[connection]\ntrusted_proxies = [\"nope\"]\n", "connection.trusted_proxies"),
        ("[connection]\ntrusted_proxies = [\"0.0.0.0/0\"]\n", "connection.trusted_proxies"),
        ("[connection]\ntrusted_proxies = [\"::/0\"]\n", "connection.trusted_proxies"),
        ("[connection]\ntrusted_proxies = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n", "connection.trusted_proxies"),
        (
            "[connection]\ntrusted_proxies = [\"0.0.0.0/2\", \"64.0.0.0/2\", \"128.0.0.0/2\", \"192.0.0.0/2\"]\n",
            "connection.trusted_proxies",
        ),
        ("[connection]\ntrusted_proxies = [\"2000::/3\", \"0.0.0.0/1\"]\n", "connection.trusted_proxies"),
        ("[connection]\ntrusted_proxies = [\"8.0.0.0/6\"]\n", "connection.trusted_proxies"),
        ("[connection]\ntrusted_proxies_max_share = 1.0\n", "connection.trusted_proxies_max_share"),
        ("[connection]\nevents_per_minute = 0\n", "connection.events_per_minute"),
        (
            "[environments.dev]\n[[environments.dev.targets]]\nregion = \"r\"\ngroup_ids = [\"sg-1\"]\n\
             [environments.prod]\n[[environments.prod.targets]]\nregion = \"r\"\ngroup_ids = [\"sg-2\", \"sg-1\"]\n",
            "environments.prod.targets",
        ),
        (
            "[environments.dev]\n[[environments.dev.targets]]\nregion = \"r\"\nprefix_list_ids = [\"pl-1\"]\n\
             [environments.prod]\n[[environments.prod.targets]]\nregion = \"r\"\nprefix_list_ids = [\"pl-1\"]\n",
            "environments.prod.targets",
        ),
        ("[auth.iam]\nserver_id = \"\"\n", "auth.iam.server_id"),
        ("[auth.iam]\nserver_id = \"x\"\nsts_endpoint = \"sts.amazonaws.com\"\n", "auth.iam.sts_endpoint"),
        (
            "[environments.dev]\n[[environments.dev.targets]]\nregion = \"r\"\ngroup_ids = [\"sg-1\"]\nrole_arn = \"x\"\n",
            "environments.dev.targets[0].role_arn",
        ),
    ] {
        assert_eq!(load(text, &[]).unwrap_err().key, key, "{text}");
    }
}

#[test]
fn slack_settings() {
    let c = load(
        "[slack]\ncommand = \"/access\"\nresponse_url_prefixes = [\"http://127.0.0.1:9/\"]\nwebhook_secret_arn = \"arn:x\"\n",
        &[("SLACK_SIGNING_SECRET", "s3cret")],
    )
    .unwrap();
    assert_eq!(c.slack.command, "/access");
    assert_eq!(c.slack.signing_secret, Some(Secret::Value("s3cret".into())));
    assert_eq!(c.slack.webhook, Some(Secret::Arn("arn:x".into())));
    assert!(!format!("{:?}", c.slack).contains("s3cret"), "secrets never reach logs");
    let c = load("", &[("SLACK_SIGNING_SECRET", "s3cret"), ("SLACK_SIGNING_SECRET_NEXT", "n3xt")]).unwrap();
    assert_eq!(c.slack.next_signing_secret, Some(Secret::Value("n3xt".into())));
    assert!(!format!("{:?}", c.slack).contains("n3xt"), "nor does the next one");
    let err = load("", &[("SLACK_SIGNING_SECRET", "a"), ("SLACK_SIGNING_SECRET_ARN", "b")]).unwrap_err();
    assert_eq!(err.key, "SLACK_SIGNING_SECRET");
    let err = load("[slack]\nresponse_url_prefixes = [\"https://hooks.slack.com\"]\n", &[]).unwrap_err();
    assert_eq!(err.key, "slack.response_url_prefixes");
    let err = load("", &[("SLACK_WEBHOOK_URL", "hooks.slack.com/x")]).unwrap_err();
    assert_eq!(err.key, "SLACK_WEBHOOK_URL");
    let err = load("[slack]\ncommand = \"infra\"\n", &[]).unwrap_err();
    assert_eq!(err.key, "slack.command");
}
