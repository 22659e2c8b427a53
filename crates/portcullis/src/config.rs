//! Configuration: an optional TOML file, the seed's environment variables, and flags.
//!
//! Precedence: command-line flag, then environment variable, then file, then the defaults in
//! DESIGN.md. Every error names the key it is about.
//!
//! tidy: long file — the whole configuration format (every key, its default and its error)
//! and its tests in one place, which is what an operator reading it wants.

mod guard;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis_core::{
    AddressKind, Environment, GroupId, Marker, MemberSource, Policy, PolicyRules, PortSet, PrefixListId, PrincipalPattern, Route,
    RuleQuota, TargetSelector, TargetSpec, Ttl,
};
use portcullis_slack::UrlPrefix;
use serde::Deserialize;
use thiserror::Error;

pub use guard::GuardConfig;

#[derive(Debug, Error)]
#[error("invalid configuration: {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn error(key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError { key: key.into(), message: message.to_string() }
}

/// The file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    store: Option<String>,
    /// portcullis's own DynamoDB table (default `{grants table}-portcullis`).
    own_table: Option<String>,
    firewall: Option<String>,
    listen: Option<String>,
    default_environment: Option<String>,
    marker_prefix: Option<String>,
    rule_quota_ipv4: Option<usize>,
    rule_quota_ipv6: Option<usize>,
    reconcile_interval_secs: Option<u64>,
    /// How long a member grant lives unless a true-up confirms it (TTL text or seconds).
    member_ttl: Option<TtlOrSeconds>,
    /// How often `serve` (and Lambda's scheduled event) runs a true-up of every ASG.
    member_sync_secs: Option<u64>,
    default_ports: Option<String>,
    discovery_tag_key: Option<String>,
    discovery_tag_value: Option<String>,
    #[serde(default)]
    environments: BTreeMap<String, FileEnvironment>,
    /// Out-of-band changes to guarded groups (seed 003).
    guard: Option<guard::FileGuard>,
    #[serde(default)]
    slack: FileSlack,
    #[serde(default)]
    connection: FileConnection,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    http: FileHttp,
    #[serde(default)]
    metrics: FileMetrics,
}

/// `[metrics]`: where `serve` answers `/metrics` (off unless given).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMetrics {
    listen: Option<String>,
}

/// `[http]`: how long `serve` waits for a client.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHttp {
    header_read_timeout_secs: Option<u64>,
    body_read_timeout_secs: Option<u64>,
}

/// `[connection]`: the self-service endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConnection {
    trusted_proxies: Option<Vec<String>>,
    trusted_proxies_max_share: Option<f64>,
    rate_limit_per_minute: Option<u32>,
    events_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    iam: Option<FileIam>,
}

/// `[auth.iam]`: AWS IAM authentication by a signed `sts:GetCallerIdentity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIam {
    server_id: String,
    sts_endpoint: Option<String>,
    max_skew_secs: Option<u64>,
}

/// A duration given as TTL text (`1h`) or whole seconds (`3600`), as seed 001 does.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum TtlOrSeconds {
    Seconds(i64),
    Text(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSlack {
    command: Option<String>,
    rate_limit_per_minute: Option<u32>,
    response_url_prefixes: Option<Vec<String>>,
    api_url: Option<String>,
    signing_secret_arn: Option<String>,
    webhook_secret_arn: Option<String>,
    bot_token_secret_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileEnvironment {
    max_ttl: Option<String>,
    max_grants_per_user: Option<usize>,
    min_prefix_v4: Option<u8>,
    min_prefix_v6: Option<u8>,
    allowed_ports: Option<String>,
    users: Option<Vec<String>>,
    user_groups: Option<Vec<String>>,
    refuse_special_purpose: Option<bool>,
    /// IAM principals (ARNs, `*` wildcards) that may authenticate here.
    principals: Option<Vec<String>>,
    /// How long `/connection` grants last (seed 001).
    time_to_expire: Option<TtlOrSeconds>,
    #[serde(default)]
    targets: Vec<FileTarget>,
    /// Auto Scaling groups whose members are admitted (seed 002).
    #[serde(default)]
    members: Vec<FileMember>,
}

/// One `[[environments.NAME.members]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileMember {
    asg: String,
    region: String,
    address: Option<String>,
    role_arn: Option<String>,
    endpoint_url: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTarget {
    region: String,
    #[serde(default)]
    discovery: bool,
    group_ids: Option<Vec<String>>,
    /// Managed prefix lists whose entries are the grants (the groups reference them).
    prefix_list_ids: Option<Vec<String>>,
    /// With `discovery = true`: discover managed prefix lists by the discovery tag, not groups.
    #[serde(default)]
    prefix_lists: bool,
    ports: Option<String>,
    endpoint_url: Option<String>,
    /// A role to assume for these groups (another account).
    role_arn: Option<String>,
}

/// Which firewall applies changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirewallKind {
    Aws,
    DryRun,
}

impl FirewallKind {
    pub fn parse(text: &str) -> Option<FirewallKind> {
        match text {
            "aws" => Some(FirewallKind::Aws),
            "dry-run" => Some(FirewallKind::DryRun),
            _ => None,
        }
    }
}

/// Where the store lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    Dynamodb(String),
}

impl StoreSpec {
    pub fn parse(text: &str) -> Option<StoreSpec> {
        if let Some(path) = text.strip_prefix("sqlite:") {
            (!path.is_empty()).then(|| StoreSpec::Sqlite(PathBuf::from(path)))
        } else {
            text.strip_prefix("dynamodb:").filter(|t| !t.is_empty()).map(|t| StoreSpec::Dynamodb(t.to_string()))
        }
    }
}

/// A secret given outright (from the environment) or by its Secrets Manager ARN.
#[derive(Clone, PartialEq, Eq)]
pub enum Secret {
    Value(String),
    Arn(String),
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secret::Value(_) => f.write_str("Secret::Value(..)"),
            Secret::Arn(arn) => write!(f, "Secret::Arn({arn:?})"),
        }
    }
}

/// The Slack app: its slash command, its secrets, and how it is paced.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// The slash command this server answers, e.g. `/infra`.
    pub command: String,
    /// Mutating commands per user per minute.
    pub rate_limit_per_minute: u32,
    /// `response_url`s must start with one of these.
    pub response_url_prefixes: Vec<UrlPrefix>,
    /// Slack's Web API, for user-group membership.
    pub api_url: String,
    /// `SLACK_SIGNING_SECRET` / `SLACK_SIGNING_SECRET_ARN`: without it `/slack/commands` is off.
    pub signing_secret: Option<Secret>,
    /// `SLACK_SIGNING_SECRET_NEXT`: while rotating, a request signed with it verifies too.
    pub next_signing_secret: Option<Secret>,
    /// `SLACK_WEBHOOK_URL` / `SLACK_WEBHOOK_SECRET_ARN`: without it changes are only logged.
    pub webhook: Option<Secret>,
    /// `SLACK_BOT_TOKEN` / `SLACK_BOT_TOKEN_SECRET_ARN`: needed to check `user_groups`.
    pub bot_token: Option<Secret>,
    /// `APPROVAL_WEBHOOK_URL` / `_SECRET_ARN`: guard's approval messages (else `webhook`).
    pub approval_webhook: Option<Secret>,
    /// `MONITORING_WEBHOOK_URL` / `_SECRET_ARN`: guard's notices (else `webhook`).
    pub monitoring_webhook: Option<Secret>,
}

/// `POST|DELETE /connection`.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Peers whose `X-Forwarded-For`/`Forwarded` is believed.
    pub trusted_proxies: Vec<portcullis_core::Cidr>,
    /// Mutating requests per principal per minute (all of `/connection` and `/v1`).
    pub rate_limit_per_minute: u32,
    /// AWS events (`POST /v1/events`) per principal per minute: a limit of their own, so a
    /// burst of lifecycle events never uses up a person's changes (a token with the `events`
    /// role is not limited).
    pub events_per_minute: u32,
}

/// How long the HTTP server waits for a client.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// For a request's headers (also how long an idle keep-alive connection is kept).
    pub header_read_timeout: std::time::Duration,
    /// For a request's body, once its headers are in.
    pub body_read_timeout: std::time::Duration,
}

/// AWS IAM authentication.
#[derive(Debug, Clone)]
pub struct IamConfig {
    /// The value clients must sign into `X-Portcullis-Server-ID`.
    pub server_id: String,
    /// The STS endpoint requests are forwarded to (and must be signed for).
    pub sts_endpoint: String,
    /// How far a request's `X-Amz-Date` may be from now.
    pub max_skew: time::Duration,
}

/// Everything the process runs with, resolved and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub store: StoreSpec,
    /// With the DynamoDB store: portcullis's own table, when not the default.
    pub own_table: Option<String>,
    pub firewall: FirewallKind,
    pub listen: SocketAddr,
    pub default_environment: Environment,
    pub policies: BTreeMap<Environment, Policy>,
    pub specs: Vec<TargetSpec>,
    pub marker: Marker,
    pub quota: RuleQuota,
    pub reconcile_interval: time::Duration,
    /// The Auto Scaling groups whose members are admitted, in every environment.
    pub members: Vec<MemberSource>,
    pub member_ttl: time::Duration,
    pub member_sync_interval: time::Duration,
    /// `None`: guard is off.
    pub guard: Option<GuardConfig>,
    pub slack: SlackConfig,
    pub connection: ConnectionConfig,
    /// `None`: IAM authentication is off.
    pub iam: Option<IamConfig>,
    pub http: HttpConfig,
    /// Where `serve` answers `/metrics` in Prometheus text, apart from the public listener;
    /// `None` (the default): no metrics listener.
    pub metrics_listen: Option<SocketAddr>,
}

/// What the command line says, before the environment and file are consulted.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub config_file: Option<PathBuf>,
    pub store: Option<String>,
    pub firewall: Option<String>,
    pub listen: Option<String>,
    /// The firewall when nothing names one (`aws` in Lambda mode; else dry-run).
    pub default_firewall: Option<FirewallKind>,
}

/// Reads environment variables through a function, so tests can pass their own.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

impl Config {
    pub fn load(overrides: &Overrides, env: Env<'_>) -> Result<Config, ConfigError> {
        let file_path = overrides.config_file.clone().or_else(|| env("PORTCULLIS_CONFIG").map(PathBuf::from));
        let file = match &file_path {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::resolve(file, overrides, env)
    }

    /// A configuration from a file's text (as `load` reads it), with the command line and
    /// environment over it.
    pub fn from_toml(text: &str, origin: &str, overrides: &Overrides, env: Env<'_>) -> Result<Config, ConfigError> {
        Config::resolve(parse_file(text, origin)?, overrides, env)
    }

    fn resolve(file: FileConfig, overrides: &Overrides, env: Env<'_>) -> Result<Config, ConfigError> {
        let store = store(&file, overrides, env)?;
        let firewall = firewall(&file, overrides, env)?;
        let listen = listen(&file, overrides, env)?;
        let marker_prefix = file.marker_prefix.clone().unwrap_or_else(|| "pc".into());
        let marker =
            Marker::new(&marker_prefix).ok_or_else(|| error("marker_prefix", "use 1-16 characters from a-z A-Z 0-9 _ -"))?;
        let quota = RuleQuota {
            ipv4: positive("rule_quota_ipv4", file.rule_quota_ipv4.unwrap_or(60))?,
            ipv6: positive("rule_quota_ipv6", file.rule_quota_ipv6.unwrap_or(60))?,
        };
        let interval = file.reconcile_interval_secs.unwrap_or(60);
        if interval == 0 {
            return Err(error("reconcile_interval_secs", "must be at least 1"));
        }
        let defaults = TargetDefaults {
            ports: match &file.default_ports {
                Some(text) => PortSet::parse(text).map_err(|e| error("default_ports", e))?,
                None => PortSet::alb(),
            },
            discovery: TargetSelector::Discovery {
                tag_key: env("SG_DISCOVERY_TAG_KEY")
                    .or(file.discovery_tag_key.clone())
                    .unwrap_or_else(|| "WhitelistManaged".into()),
                tag_value: env("SG_DISCOVERY_TAG_VALUE").or(file.discovery_tag_value.clone()).unwrap_or_else(|| "true".into()),
            },
        };
        let default_env_text = env("ENVIRONMENT").or(file.default_environment.clone()).unwrap_or_else(|| "dev".into());
        let default_environment = Environment::parse(&default_env_text)
            .map_err(|e| error(if env("ENVIRONMENT").is_some() { "ENVIRONMENT" } else { "default_environment" }, e))?;
        let (policies, mut specs) = environments(&file.environments, &defaults, &default_environment)?;
        let members = members(&file.environments, &policies)?;
        let member_ttl = match &file.member_ttl {
            None => portcullis_engine::DEFAULT_MEMBER_TTL,
            Some(TtlOrSeconds::Seconds(n)) => Ttl::from_seconds(u64::try_from(*n).unwrap_or(0))
                .map_err(|_| error("member_ttl", "seconds must be from 60 to 31536000 (365 days)"))?
                .duration(),
            Some(TtlOrSeconds::Text(text)) => Ttl::parse_or_seconds(text).map_err(|e| error("member_ttl", e))?.duration(),
        };
        let sync = file.member_sync_secs.unwrap_or(300);
        if sync == 0 {
            return Err(error("member_sync_secs", "must be at least 1"));
        }
        // The seed's variables configure the default environment when the file gives it no targets.
        if !specs.iter().any(|s| s.environment == default_environment) {
            specs.extend(seed_target(env, defaults, &default_environment)?);
        }
        let own_table = env("PORTCULLIS_OWN_TABLE").or(file.own_table.clone()).filter(|t| !t.trim().is_empty());
        check_table_names(&store, own_table.as_deref())?;
        Ok(Config {
            slack: slack(&file.slack, env)?,
            connection: connection(&file.connection)?,
            iam: file.auth.iam.as_ref().map(|i| iam(i, env)).transpose()?,
            http: http(&file.http)?,
            metrics_listen: metrics_listen(&file.metrics, env, listen)?,
            own_table,
            store,
            firewall,
            listen,
            default_environment,
            policies,
            specs,
            marker,
            quota,
            reconcile_interval: time::Duration::seconds(interval as i64),
            members,
            member_ttl,
            member_sync_interval: time::Duration::seconds(i64::try_from(sync).unwrap_or(i64::MAX)),
            guard: file.guard.as_ref().map(guard::guard).transpose()?,
        })
    }
}

/// What targets get when they say nothing themselves.
struct TargetDefaults {
    ports: PortSet,
    /// The tag discovered groups carry (`SG_DISCOVERY_TAG_KEY` / `_VALUE`).
    discovery: TargetSelector,
}

fn store(file: &FileConfig, overrides: &Overrides, env: Env<'_>) -> Result<StoreSpec, ConfigError> {
    let text = overrides
        .store
        .clone()
        .or_else(|| env("PORTCULLIS_STORE"))
        .or_else(|| env("DYNAMODB_TABLE_NAME").filter(|t| !t.trim().is_empty()).map(|t| format!("dynamodb:{}", t.trim())))
        .or(file.store.clone())
        .unwrap_or_else(|| "sqlite:portcullis.db".into());
    StoreSpec::parse(&text).ok_or_else(|| error("store", format!("{text:?} is not sqlite:PATH or dynamodb:TABLE")))
}

fn firewall(file: &FileConfig, overrides: &Overrides, env: Env<'_>) -> Result<FirewallKind, ConfigError> {
    match overrides.firewall.clone().or_else(|| env("PORTCULLIS_FIREWALL")).or(file.firewall.clone()) {
        None => Ok(overrides.default_firewall.unwrap_or(FirewallKind::DryRun)),
        Some(text) => FirewallKind::parse(&text).ok_or_else(|| error("firewall", format!("{text:?} is not aws or dry-run"))),
    }
}

fn listen(file: &FileConfig, overrides: &Overrides, env: Env<'_>) -> Result<SocketAddr, ConfigError> {
    let text = overrides
        .listen
        .clone()
        .or_else(|| env("PORTCULLIS_LISTEN"))
        .or(file.listen.clone())
        .unwrap_or_else(|| "127.0.0.1:8080".into());
    text.parse().map_err(|_| error("listen", format!("{text:?} is not an address:port")))
}

/// Every `[environments.NAME]`: its policy and its targets. Without any, the default
/// environment alone, with the default policy; else the default must be among them.
fn environments(
    file: &BTreeMap<String, FileEnvironment>,
    defaults: &TargetDefaults,
    default_environment: &Environment,
) -> Result<(BTreeMap<Environment, Policy>, Vec<TargetSpec>), ConfigError> {
    let mut policies = BTreeMap::new();
    let mut specs = Vec::new();
    for (name, fe) in file {
        let key = format!("environments.{name}");
        let environment = Environment::parse(name).map_err(|e| error(&key, e))?;
        let policy = policy(&key, fe)?;
        for (i, t) in fe.targets.iter().enumerate() {
            specs.push(target(&format!("{key}.targets[{i}]"), t, &environment, &policy, defaults)?);
        }
        policies.insert(environment, policy);
    }
    if let Some(shared) = portcullis_core::shared_target(&specs) {
        return Err(error(
            format!("environments.{}.targets", shared.second),
            format!(
                "{} ({}) is also a target of environment {}: a group or prefix list belongs to one environment only",
                shared.id, shared.region, shared.first
            ),
        ));
    }
    if policies.is_empty() {
        policies.insert(default_environment.clone(), Policy::default());
    } else if !policies.contains_key(default_environment) {
        let known = policies.keys().map(|e| e.to_string()).collect::<Vec<_>>().join(", ");
        return Err(error("ENVIRONMENT", format!("{default_environment} is not one of the configured environments ({known})")));
    }
    Ok((policies, specs))
}

/// Every `[[environments.NAME.members]]`, checked against its environment's policy.
fn members(
    file: &BTreeMap<String, FileEnvironment>,
    policies: &BTreeMap<Environment, Policy>,
) -> Result<Vec<MemberSource>, ConfigError> {
    let mut out: Vec<MemberSource> = Vec::new();
    for (name, fe) in file {
        let environment = Environment::parse(name).map_err(|e| error(format!("environments.{name}"), e))?;
        for (i, m) in fe.members.iter().enumerate() {
            let key = format!("environments.{name}.members[{i}]");
            if m.asg.trim().is_empty() || m.asg.len() > 255 {
                return Err(error(format!("{key}.asg"), "give the Auto Scaling group's name (1-255 characters)"));
            }
            if m.region.trim().is_empty() {
                return Err(error(format!("{key}.region"), "is empty"));
            }
            let address = match &m.address {
                None => AddressKind::Public,
                Some(text) => AddressKind::parse(text)
                    .ok_or_else(|| error(format!("{key}.address"), format!("{text:?} is not public, private or ipv6")))?,
            };
            if address == AddressKind::Private && policies.get(&environment).is_some_and(|p| p.rules().refuse_special_purpose) {
                return Err(error(
                    format!("{key}.address"),
                    format!(
                        "private addresses are special-purpose ranges, which environments.{name} refuses (refuse_special_purpose)"
                    ),
                ));
            }
            if let Some(role) = &m.role_arn
                && !(role.starts_with("arn:") && role.contains(":role/"))
            {
                return Err(error(
                    format!("{key}.role_arn"),
                    format!("{role:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)"),
                ));
            }
            let source = MemberSource {
                environment: environment.clone(),
                asg: m.asg.clone(),
                route: Route { region: m.region.clone(), endpoint_url: m.endpoint_url.clone(), role_arn: m.role_arn.clone() },
                address,
            };
            if out
                .iter()
                .any(|o| o.environment == source.environment && o.asg == source.asg && o.route.region == source.route.region)
            {
                return Err(error(key, format!("{} in {} is listed twice", m.asg, m.region)));
            }
            out.push(source);
        }
    }
    Ok(out)
}

/// One `[[environments.NAME.targets]]`.
fn target(
    key: &str,
    t: &FileTarget,
    environment: &Environment,
    policy: &Policy,
    defaults: &TargetDefaults,
) -> Result<TargetSpec, ConfigError> {
    let selector = match (&t.group_ids, &t.prefix_list_ids, t.discovery) {
        (None, None, false) => return Err(error(key, "give discovery = true, group_ids or prefix_list_ids")),
        (Some(ids), None, false) => TargetSelector::Ids(group_ids(&format!("{key}.group_ids"), ids)?),
        (None, Some(lists), false) => {
            let key = format!("{key}.prefix_list_ids");
            if lists.is_empty() {
                return Err(error(key, "is empty"));
            }
            let lists = lists.iter().map(|id| PrefixListId::parse(id).map_err(|e| error(key.as_str(), e)));
            TargetSelector::PrefixLists(lists.collect::<Result<_, _>>()?)
        }
        (None, None, true) => match (&defaults.discovery, t.prefix_lists) {
            (TargetSelector::Discovery { tag_key, tag_value }, true) => {
                TargetSelector::TaggedPrefixLists { tag_key: tag_key.clone(), tag_value: tag_value.clone() }
            }
            (selector, _) => selector.clone(),
        },
        _ => return Err(error(key, "give one of discovery = true, group_ids or prefix_list_ids")),
    };
    if t.prefix_lists && !t.discovery {
        return Err(error(format!("{key}.prefix_lists"), "needs discovery = true (name lists by id with prefix_list_ids)"));
    }
    let ports = match &t.ports {
        Some(text) => PortSet::parse(text).map_err(|e| error(format!("{key}.ports"), e))?,
        None => defaults.ports.clone(),
    };
    if !ports.within(policy.allowed_ports()) {
        return Err(error(format!("{key}.ports"), format!("{ports} is outside allowed_ports {}", policy.allowed_ports())));
    }
    if t.region.trim().is_empty() {
        return Err(error(format!("{key}.region"), "is empty"));
    }
    if let Some(role) = &t.role_arn
        && !(role.starts_with("arn:") && role.contains(":role/"))
    {
        return Err(error(format!("{key}.role_arn"), format!("{role:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)")));
    }
    Ok(TargetSpec {
        region: t.region.clone(),
        selector,
        environment: environment.clone(),
        default_ports: ports,
        endpoint_url: t.endpoint_url.clone(),
        role_arn: t.role_arn.clone(),
    })
}

/// The default environment's target from seed 000's variables (`ENABLE_SG_DISCOVERY`,
/// `MANAGED_SECURITY_GROUP_IDS`, `AWS_REGION`), if they name one.
fn seed_target(env: Env<'_>, defaults: TargetDefaults, environment: &Environment) -> Result<Option<TargetSpec>, ConfigError> {
    let discovery = match env("ENABLE_SG_DISCOVERY").as_deref().map(str::trim) {
        None | Some("") => false,
        Some(v) if v.eq_ignore_ascii_case("true") || v == "1" => true,
        Some(v) if v.eq_ignore_ascii_case("false") || v == "0" => false,
        Some(v) => return Err(error("ENABLE_SG_DISCOVERY", format!("{v:?} is not true or false"))),
    };
    let ids = match env("MANAGED_SECURITY_GROUP_IDS").filter(|v| !v.trim().is_empty()) {
        None => vec![],
        Some(json) => {
            let ids: Vec<String> = serde_json::from_str(&json)
                .map_err(|e| error("MANAGED_SECURITY_GROUP_IDS", format!("must be a JSON array of group ids: {e}")))?;
            group_ids("MANAGED_SECURITY_GROUP_IDS", &ids)?
        }
    };
    let selector = match (discovery, ids.is_empty()) {
        (true, _) => defaults.discovery,
        (false, false) => TargetSelector::Ids(ids),
        (false, true) => return Ok(None),
    };
    let region = env("AWS_REGION")
        .or_else(|| env("AWS_DEFAULT_REGION"))
        .ok_or_else(|| error("AWS_REGION", "is required when ENABLE_SG_DISCOVERY or MANAGED_SECURITY_GROUP_IDS is set"))?;
    Ok(Some(TargetSpec {
        region,
        selector,
        environment: environment.clone(),
        default_ports: defaults.ports,
        endpoint_url: None,
        role_arn: None,
    }))
}

fn check_table_names(store: &StoreSpec, own_table: Option<&str>) -> Result<(), ConfigError> {
    let StoreSpec::Dynamodb(table) = store else { return Ok(()) };
    for (key, name) in [("store", Some(table.replace("{env}", "x"))), ("own_table", own_table.map(str::to_string))] {
        if let Some(name) = name
            && !valid_table_name(&name)
        {
            return Err(error(
                key,
                format!(
                    "{name:?} is not a DynamoDB table name (3-255 characters from a-z A-Z 0-9 _ - .; the template may use {{env}})"
                ),
            ));
        }
    }
    Ok(())
}

fn valid_table_name(name: &str) -> bool {
    (3..=255).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

/// A secret from an environment variable (value or ARN) or the file (ARN only); giving both
/// forms is a mistake.
fn secret(
    env: Env<'_>,
    value_var: &str,
    arn_var: &str,
    file_key: &str,
    file_arn: &Option<String>,
) -> Result<Option<Secret>, ConfigError> {
    let value = env(value_var).filter(|v| !v.trim().is_empty());
    let arn = env(arn_var).filter(|v| !v.trim().is_empty());
    match (value, arn) {
        (Some(_), Some(_)) => Err(error(value_var, format!("give {value_var} or {arn_var}, not both"))),
        (Some(v), None) => Ok(Some(Secret::Value(v.trim().to_string()))),
        (None, Some(a)) => Ok(Some(Secret::Arn(a.trim().to_string()))),
        (None, None) => match file_arn {
            Some(a) if a.trim().is_empty() => Err(error(format!("slack.{file_key}"), "is empty")),
            Some(a) => Ok(Some(Secret::Arn(a.trim().to_string()))),
            None => Ok(None),
        },
    }
}

fn slack(file: &FileSlack, env: Env<'_>) -> Result<SlackConfig, ConfigError> {
    let command = file.command.clone().unwrap_or_else(|| "/infra".into());
    let valid = command.starts_with('/')
        && command.len() > 1
        && command[1..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !valid {
        return Err(error("slack.command", format!("{command:?} is not a slash command such as /infra")));
    }
    let rate = file.rate_limit_per_minute.unwrap_or(20);
    if rate == 0 {
        return Err(error("slack.rate_limit_per_minute", "must be at least 1"));
    }
    // A prefix must end its host with '/', or "https://hooks.slack.com" would also allow
    // "https://hooks.slack.com.example.net"; URLs are compared parsed, never as text.
    let prefixes = file
        .response_url_prefixes
        .clone()
        .unwrap_or_else(|| vec!["https://hooks.slack.com/".into()])
        .iter()
        .map(|p| UrlPrefix::parse(p).map_err(|e| error("slack.response_url_prefixes", e)))
        .collect::<Result<Vec<_>, _>>()?;
    if file.response_url_prefixes.as_ref().is_some_and(|p| p.is_empty()) {
        return Err(error("slack.response_url_prefixes", "must name at least one prefix"));
    }
    let api_url = file.api_url.clone().unwrap_or_else(|| "https://slack.com/api".into());
    if !(api_url.starts_with("https://") || api_url.starts_with("http://")) {
        return Err(error("slack.api_url", format!("{api_url:?} is not an http(s) URL")));
    }
    let webhook = secret(env, "SLACK_WEBHOOK_URL", "SLACK_WEBHOOK_SECRET_ARN", "webhook_secret_arn", &file.webhook_secret_arn)?;
    let approval_webhook = secret(env, "APPROVAL_WEBHOOK_URL", "APPROVAL_WEBHOOK_SECRET_ARN", "-", &None)?;
    let monitoring_webhook = secret(env, "MONITORING_WEBHOOK_URL", "MONITORING_WEBHOOK_SECRET_ARN", "-", &None)?;
    for (var, hook) in [
        ("SLACK_WEBHOOK_URL", &webhook),
        ("APPROVAL_WEBHOOK_URL", &approval_webhook),
        ("MONITORING_WEBHOOK_URL", &monitoring_webhook),
    ] {
        if let Some(Secret::Value(url)) = hook {
            portcullis_slack::webhook_url_from_secret(url).map_err(|e| error(var, e))?;
        }
    }
    Ok(SlackConfig {
        command,
        rate_limit_per_minute: rate,
        response_url_prefixes: prefixes,
        api_url,
        signing_secret: secret(
            env,
            "SLACK_SIGNING_SECRET",
            "SLACK_SIGNING_SECRET_ARN",
            "signing_secret_arn",
            &file.signing_secret_arn,
        )?,
        next_signing_secret: env("SLACK_SIGNING_SECRET_NEXT")
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .map(Secret::Value),
        webhook,
        bot_token: secret(
            env,
            "SLACK_BOT_TOKEN",
            "SLACK_BOT_TOKEN_SECRET_ARN",
            "bot_token_secret_arn",
            &file.bot_token_secret_arn,
        )?,
        approval_webhook,
        monitoring_webhook,
    })
}

/// `[metrics] listen` (or `PORTCULLIS_METRICS_LISTEN`): an address apart from the public one.
fn metrics_listen(file: &FileMetrics, env: Env<'_>, public: SocketAddr) -> Result<Option<SocketAddr>, ConfigError> {
    let (key, text) = match env("PORTCULLIS_METRICS_LISTEN").filter(|t| !t.trim().is_empty()) {
        Some(text) => ("PORTCULLIS_METRICS_LISTEN", text),
        None => match &file.listen {
            Some(text) => ("metrics.listen", text.clone()),
            None => return Ok(None),
        },
    };
    let address: SocketAddr =
        text.trim().parse().map_err(|_| error(key, format!("{text:?} is not an address:port, e.g. 127.0.0.1:9464")))?;
    if address == public && address.port() != 0 {
        return Err(error(key, format!("{address} is the public listener's address; metrics need one of their own")));
    }
    Ok(Some(address))
}

fn http(file: &FileHttp) -> Result<HttpConfig, ConfigError> {
    let secs = |key: &str, value: Option<u64>, default: u64| match value.unwrap_or(default) {
        n @ 1..=3600 => Ok(std::time::Duration::from_secs(n)),
        _ => Err(error(format!("http.{key}"), "must be from 1 to 3600 seconds")),
    };
    Ok(HttpConfig {
        header_read_timeout: secs("header_read_timeout_secs", file.header_read_timeout_secs, 10)?,
        body_read_timeout: secs("body_read_timeout_secs", file.body_read_timeout_secs, 30)?,
    })
}

/// How much of an address family `trusted_proxies` may cover by default: 1 % (a /8 of IPv4,
/// or IPv6's unique local fc00::/7, are within it).
const TRUSTED_SHARE: f64 = 0.01;

fn connection(file: &FileConnection) -> Result<ConnectionConfig, ConfigError> {
    let rate = file.rate_limit_per_minute.unwrap_or(30);
    if rate == 0 {
        return Err(error("connection.rate_limit_per_minute", "must be at least 1"));
    }
    let events = file.events_per_minute.unwrap_or(1200);
    if events == 0 {
        return Err(error("connection.events_per_minute", "must be at least 1"));
    }
    let mut trusted_proxies = Vec::new();
    for text in file.trusted_proxies.iter().flatten() {
        trusted_proxies.push(portcullis_core::Cidr::parse(text).map_err(|e| error("connection.trusted_proxies", e))?);
    }
    let max_share = file.trusted_proxies_max_share.unwrap_or(TRUSTED_SHARE);
    if !(0.0..1.0).contains(&max_share) {
        return Err(error("connection.trusted_proxies_max_share", "must be at least 0 and less than 1"));
    }
    // Trusting every peer (or a good part of the internet) would let anyone choose the address
    // they are allowed from. The networks count together: two /1s are the whole internet.
    for family in [portcullis_core::Family::Ipv4, portcullis_core::Family::Ipv6] {
        let share = portcullis_core::Cidr::share_of(family, &trusted_proxies);
        if share >= 1.0 || share > max_share {
            return Err(error(
                "connection.trusted_proxies",
                format!(
                    "together they cover {:.4} % of {family} addresses, more than trusted_proxies_max_share ({} %) allows: \
                     that would trust peers nobody controls; name your proxies' addresses",
                    share * 100.0,
                    max_share * 100.0
                ),
            ));
        }
    }
    Ok(ConnectionConfig { trusted_proxies, rate_limit_per_minute: rate, events_per_minute: events })
}

fn iam(file: &FileIam, env: Env<'_>) -> Result<IamConfig, ConfigError> {
    let server_id = file.server_id.trim();
    if server_id.is_empty() || server_id.len() > 255 || !server_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(error("auth.iam.server_id", "must be 1-255 visible ASCII characters, e.g. the server's host name"));
    }
    // Like the SDK: a service-specific endpoint variable, then the general one, then AWS's.
    let sts_endpoint = file
        .sts_endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_STS"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| "https://sts.amazonaws.com".into());
    let valid = sts_endpoint
        .split_once("://")
        .is_some_and(|(scheme, rest)| matches!(scheme, "https" | "http") && !rest.is_empty() && !rest.contains(['?', '#', '@']));
    if !valid {
        return Err(error("auth.iam.sts_endpoint", format!("{sts_endpoint:?} is not an http(s) URL")));
    }
    let skew = file.max_skew_secs.unwrap_or(300);
    if !(1..=900).contains(&skew) {
        return Err(error("auth.iam.max_skew_secs", "must be from 1 to 900"));
    }
    Ok(IamConfig {
        server_id: server_id.to_string(),
        sts_endpoint: sts_endpoint.trim_end_matches('/').to_string(),
        max_skew: time::Duration::seconds(skew as i64),
    })
}

/// The largest configuration file read; anything larger is a mistake (`--config /dev/zero`).
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// How long reading the configuration file may take (a file on a hung network mount).
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    use std::io::Read;
    let key = || path.display().to_string();
    // Only a regular file: a FIFO nobody writes to, a device or a socket would hang or never end.
    let metadata = std::fs::metadata(path).map_err(|e| error(key(), e))?;
    if !metadata.is_file() {
        return Err(error(key(), "is not a regular file (a FIFO, device or directory cannot be a configuration file)"));
    }
    let file = std::fs::File::open(path).map_err(|e| error(key(), e))?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let read = file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map(|_| bytes);
        let _ = tx.send(read);
    });
    let bytes = match rx.recv_timeout(READ_TIMEOUT) {
        Ok(read) => read.map_err(|e| error(key(), e))?,
        Err(_) => return Err(error(key(), format!("could not be read within {} s", READ_TIMEOUT.as_secs()))),
    };
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(error(key(), format!("is larger than {} KiB; is it the configuration file?", MAX_FILE_BYTES / 1024)));
    }
    let text = String::from_utf8(bytes).map_err(|_| error(key(), "is not UTF-8 text"))?;
    parse_file(&text, &key())
}

/// A configuration file's text, read; errors name `origin` and the line.
fn parse_file(text: &str, origin: &str) -> Result<FileConfig, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let message = e.message().to_string();
        let key = e
            .span()
            .map(|span| {
                // 1 + the newlines before the error (`lines()` would miss the line an error
                // starts at the very beginning of).
                let line = 1 + text.get(..span.start).unwrap_or(text).matches('\n').count();
                format!("{origin} line {line}")
            })
            .unwrap_or_else(|| origin.to_string());
        error(key, message)
    })
}

fn positive(key: &str, value: usize) -> Result<usize, ConfigError> {
    if value == 0 { Err(error(key, "must be at least 1")) } else { Ok(value) }
}

fn group_ids(key: &str, ids: &[String]) -> Result<Vec<GroupId>, ConfigError> {
    ids.iter().map(|id| GroupId::parse(id).map_err(|e| error(key, e))).collect()
}

fn policy(key: &str, fe: &FileEnvironment) -> Result<Policy, ConfigError> {
    let defaults = PolicyRules::default();
    let rules = PolicyRules {
        max_ttl: match &fe.max_ttl {
            Some(text) => Ttl::parse(text).map_err(|e| error(format!("{key}.max_ttl"), e))?,
            None => defaults.max_ttl,
        },
        max_grants_per_user: fe.max_grants_per_user.unwrap_or(defaults.max_grants_per_user),
        min_prefix_v4: fe.min_prefix_v4.unwrap_or(defaults.min_prefix_v4),
        min_prefix_v6: fe.min_prefix_v6.unwrap_or(defaults.min_prefix_v6),
        allowed_ports: match &fe.allowed_ports {
            Some(text) => PortSet::parse(text).map_err(|e| error(format!("{key}.allowed_ports"), e))?,
            None => defaults.allowed_ports,
        },
        allowed_users: fe.users.as_ref().map(|u| u.iter().cloned().collect()),
        allowed_groups: fe.user_groups.iter().flatten().cloned().collect(),
        refuse_special_purpose: fe.refuse_special_purpose.unwrap_or(false),
        allowed_principals: fe
            .principals
            .iter()
            .flatten()
            .map(|p| PrincipalPattern::parse(p).map_err(|e| error(format!("{key}.principals"), e)))
            .collect::<Result<_, _>>()?,
        connection_ttl: match &fe.time_to_expire {
            None => defaults.connection_ttl,
            Some(TtlOrSeconds::Seconds(n)) => Ttl::from_seconds(u64::try_from(*n).unwrap_or(0))
                .map_err(|_| error(format!("{key}.time_to_expire"), "seconds must be from 60 to 31536000 (365 days)"))?,
            Some(TtlOrSeconds::Text(text)) => {
                Ttl::parse_or_seconds(text).map_err(|e| error(format!("{key}.time_to_expire"), e))?
            }
        },
    };
    Policy::new(rules).map_err(|e| error(format!("{key}.{}", e.field()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(c.members.len(), 2);
        assert_eq!((c.members[0].address, c.members[0].owner().id.as_str()), (AddressKind::Public, "asg:us-east-1/web"));
        assert_eq!(c.members[1].route.role_arn.as_deref(), Some("arn:aws:iam::210987654321:role/portcullis"));
        assert_eq!(c.member_ttl, time::Duration::hours(12));
        assert_eq!(c.member_sync_interval, time::Duration::minutes(5));
        let refused = |toml: &str| load(toml, &[]).unwrap_err().to_string();
        let env = "default_environment = \"prod\"\n[environments.prod]\n";
        assert!(
            refused(&format!(
                "{env}[[environments.prod.members]]\nasg = \"web\"\nregion = \"us-east-1\"\naddress = \"elastic\"\n"
            ))
            .contains("is not public, private or ipv6")
        );
        assert!(
            refused(&format!("{env}[[environments.prod.members]]\nasg = \"\"\nregion = \"us-east-1\"\n"))
                .contains("members[0].asg")
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
        assert_eq!(
            c.specs[0].selector,
            TargetSelector::Ids(vec![GroupId::parse("sg-1").unwrap(), GroupId::parse("sg-2").unwrap()])
        );
        // The seed's variables alone never switch AWS on.
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
        assert!(
            err.contains("sg-1 (us-east-1) is also a target of environment dev") && err.contains("environments.prod"),
            "{err}"
        );
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
}
