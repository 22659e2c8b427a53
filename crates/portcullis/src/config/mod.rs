//! Configuration: an optional TOML file, the environment variables of the docustack IP
//! Whitelist Manager Lambda it replaces, and flags.
//!
//! Precedence: command-line flag, then environment variable, then file, then the defaults in
//! DESIGN.md. Every error names the key it is about. One file per section: `environments`
//! (policies, targets, members), `slack`, `connection` (`[connection]`, `[auth.iam]`),
//! `listeners` (`listen`, `[http]`, `[metrics]`), `guard`.

mod connection;
mod environments;
mod guard;
mod listeners;
mod slack;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use portcullis_core::{Environment, Marker, MemberSource, Policy, PortSet, RuleQuota, TargetSelector, TargetSpec, Ttl};
use serde::Deserialize;
use thiserror::Error;

pub use connection::{ConnectionConfig, IamConfig};
pub use guard::GuardConfig;
pub use listeners::HttpConfig;
pub use slack::SlackConfig;

use connection::{FileAuth, FileConnection, connection, iam};
use environments::{FileEnvironment, TargetDefaults, TtlOrSeconds, environments, members, positive, whitelist_manager_target};
use listeners::{FileHttp, FileMetrics, http, listen, metrics_listen};
use slack::{FileSlack, slack};

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
    /// Out-of-band changes to guarded groups (out-of-band changes reverted and approved, as VoyagerInnovations' tool did).
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
        // The IP Whitelist Manager's variables configure the default environment when the file gives it no targets.
        if !specs.iter().any(|s| s.environment == default_environment) {
            specs.extend(whitelist_manager_target(env, defaults, &default_environment)?);
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
