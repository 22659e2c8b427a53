//! Builds the engine's real adapters from the configuration.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use portcullis_aws::{DynamoStore, Ec2Firewall, InitReport, Secrets, TableNames};
use portcullis_engine::{
    Clock, DryRunFirewall, Engine, EngineBuilder, Firewall, GuardSettings, Lease, LogNotifier, Notifier, Outbox, Pacing,
    SWEEPER_LEASE, Settings, SystemClock,
};
use portcullis_slack::{FixedUrl, UrlSource, Webhook, webhook_url_from_secret};
use portcullis_store::{SqliteStore, Store};

use portcullis_slack::{SecretError, SigningSecret, SigningSecrets};

use crate::config::{Config, FirewallKind, Secret, StoreSpec};
use crate::slack::{SecretReload, SlackEndpoint};

/// An error that stops the command before it does anything.
#[derive(Debug, thiserror::Error)]
pub enum WiringError {
    #[error("{0}")]
    Unsupported(String),
    /// The configuration cannot work as given (a usage error).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Store(#[from] portcullis_store::StoreError),
    /// A secret could not be read from Secrets Manager.
    #[error(transparent)]
    SecretsManager(#[from] portcullis_aws::SecretError),
    /// A Slack secret (read, or given) cannot be used.
    #[error("Slack {what}: {source}")]
    Slack { what: &'static str, source: Box<WiringError> },
}

/// The DynamoDB store the config names (its tables are not checked).
pub async fn dynamo_store(config: &Config, table: &str) -> DynamoStore {
    let tables = TableNames::new(table, config.own_table.as_deref());
    let environments = config.policies.keys().cloned().collect();
    DynamoStore::new(portcullis_aws::shared_sdk_config().await, tables, environments)
}

/// Opens the configured store. A DynamoDB table is not described first (a CLI run or a Lambda
/// cold start would pay a call per table for it): its first call fails, naming `portcullis
/// init`, if it is missing. `serve` checks up front instead.
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, WiringError> {
    match &config.store {
        StoreSpec::Sqlite(path) => Ok(Arc::new(sqlite_store(path)?)),
        StoreSpec::Dynamodb(table) => Ok(Arc::new(dynamo_store(config, table).await)),
    }
}

/// Opens a SQLite store, warning when others may read its files (`init` makes them private).
fn sqlite_store(path: &std::path::Path) -> Result<SqliteStore, WiringError> {
    let store = SqliteStore::open(path)?;
    for (file, mode) in store.exposed_files() {
        tracing::warn!(file = %file.display(), mode = format!("{mode:o}"),
            "the store's file is readable by others; run `portcullis init` to make it private (0600)");
    }
    Ok(store)
}

/// Creates whatever the store is missing; what exists is left as it is (but a SQLite file
/// others may read is made private).
pub async fn init_store(config: &Config) -> Result<InitReport, WiringError> {
    match &config.store {
        StoreSpec::Sqlite(path) => {
            let existed = path.exists();
            let store = SqliteStore::open(path)?;
            let name = path.display().to_string();
            let mut report = if existed {
                InitReport { existing: vec![name], ..InitReport::default() }
            } else {
                InitReport { created: vec![name], ..InitReport::default() }
            };
            for (file, mode) in store.make_private()? {
                report.warnings.push(format!("{} was readable by others (mode {mode:o}); it is now 0600", file.display()));
            }
            Ok(report)
        }
        StoreSpec::Dynamodb(table) => Ok(dynamo_store(config, table).await.init().await?),
    }
}

/// How long the sweeper lease is held per claim (renewed every third of it).
pub const LEASE_DURATION: time::Duration = time::Duration::seconds(15);

/// The sweeper lease over a store.
pub fn sweeper_lease(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Arc<Lease> {
    Arc::new(Lease::new(store, clock, SWEEPER_LEASE, LEASE_DURATION))
}

/// The firewall the config names. With `dry_run`, changes are printed, never made; an `aws`
/// firewall is still used to observe, so the printout is exactly what would be done.
pub async fn firewall(config: &Config, dry_run: bool, json: bool) -> Arc<dyn Firewall> {
    let sink: Box<dyn Write + Send> = if json { Box::new(std::io::stderr()) } else { Box::new(std::io::stdout()) };
    match config.firewall {
        FirewallKind::DryRun => Arc::new(DryRunFirewall::new(None, sink)),
        FirewallKind::Aws => {
            let sdk = portcullis_aws::shared_sdk_config().await;
            if portcullis_aws::configured_region(sdk).is_none() {
                tracing::warn!(
                    "no AWS region is configured: set AWS_REGION (or a profile's region in ~/.aws/config); \
                     discovery and calls without a target's own region need one"
                );
            }
            let aws: Arc<dyn Firewall> = Arc::new(Ec2Firewall::new(sdk));
            if dry_run { Arc::new(DryRunFirewall::new(Some(aws), sink)) } else { aws }
        }
    }
}

/// A secret's value: given outright, or read from Secrets Manager.
pub async fn secret_value(secret: &Secret) -> Result<String, WiringError> {
    match secret {
        Secret::Value(v) => Ok(v.clone()),
        Secret::Arn(arn) => Ok(Secrets::new(portcullis_aws::shared_sdk_config().await).read(arn).await?),
    }
}

/// A Slack secret's current value in Secrets Manager (it may have been rotated).
async fn reread(arn: &str) -> Result<String, SecretError> {
    secret_value(&Secret::Arn(arn.to_string())).await.map_err(|e| SecretError::Unreadable(e.to_string()))
}

/// The webhook URL kept in Secrets Manager, read when first needed and again when Slack
/// refuses a post (the webhook may have been rotated).
struct SecretUrl {
    arn: String,
}

#[async_trait]
impl UrlSource for SecretUrl {
    async fn url(&self) -> Result<String, SecretError> {
        webhook_url_from_secret(&reread(&self.arn).await?)
    }
}

/// Where announcements go: the Slack webhook when one is configured, else the log alone.
pub fn notifier(config: &Config) -> Arc<dyn Notifier> {
    let hook = |secret: &Option<Secret>| {
        let source: Arc<dyn UrlSource> = match secret.as_ref()? {
            Secret::Value(url) => Arc::new(FixedUrl(url.clone())),
            Secret::Arn(arn) => Arc::new(SecretUrl { arn: arn.clone() }),
        };
        Some(Webhook::new(source))
    };
    let slack = &config.slack;
    if config.guard.is_some() {
        // Guard's approval messages and notices go to their own channels, when configured.
        let (main, approval, monitoring) = (hook(&slack.webhook), hook(&slack.approval_webhook), hook(&slack.monitoring_webhook));
        if main.is_some() || approval.is_some() || monitoring.is_some() {
            let temporary = config.guard.as_ref().map(|g| g.temporary_approval);
            let break_glass = config.guard.as_ref().and_then(|g| g.approvers.break_glass);
            return Arc::new(portcullis_slack::guard::Channels { main, approval, monitoring, temporary, break_glass });
        }
    }
    match hook(&slack.webhook) {
        Some(webhook) => Arc::new(webhook),
        None => Arc::new(LogNotifier),
    }
}

/// What a process does, which decides the components its engine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Reads the store or changes tokens (`list`, `audit`, `token …`): the grants controller
    /// over no firewall (no AWS configuration is loaded for a `list`); nothing else.
    Read,
    /// A CLI command that changes grants or asks guard (`add`, `refresh`, `requests`,
    /// `approve`, `guard …`): grants over the configured firewall (`dry_run`: printed, not
    /// made), and guard where configured. No members: true-ups are `serve`'s and the Lambda's.
    Change { dry_run: bool, json: bool },
    /// A process that handles events and time (`serve`, `lambda`, `invoke`): every configured
    /// component, under the sweeper lease.
    Process,
}

/// The engine a process of `purpose` runs, over the configured store and adapters.
pub async fn engine(config: &Config, purpose: Purpose) -> Result<Engine, WiringError> {
    let store = open_store(config).await?;
    compose(config, purpose, store).await
}

/// The engine of `purpose` over `store` (a `serve` replica checks its DynamoDB tables first).
async fn compose(config: &Config, purpose: Purpose, store: Arc<dyn Store>) -> Result<Engine, WiringError> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let firewall: Arc<dyn Firewall> = match purpose {
        Purpose::Read => Arc::new(DryRunFirewall::new(None, Box::new(std::io::stderr()))),
        Purpose::Change { dry_run, json } => firewall(config, dry_run, json).await,
        Purpose::Process => firewall(config, false, true).await,
    };
    let mut builder = builder(config, store.clone(), firewall, clock.clone(), notifier(config));
    if purpose == Purpose::Process {
        builder = builder.lease(sweeper_lease(store, clock));
        if !config.members.is_empty() {
            let membership = Arc::new(portcullis_aws::AsgMembership::new(portcullis_aws::shared_sdk_config().await));
            builder = builder.members(config.members.clone(), config.member_ttl, membership);
        }
    }
    // Guard acts with the live firewall only: the dry-run firewall changes nothing, and guard's
    // whole job is to change rules.
    if purpose != Purpose::Read
        && config.firewall == FirewallKind::Aws
        && let Some(settings) = guard_settings(config)
    {
        let firewall = Arc::new(Ec2Firewall::new(portcullis_aws::shared_sdk_config().await));
        builder = builder.guard(settings, firewall);
    }
    Ok(builder.build())
}

/// Guard's settings as configured, if it is.
pub fn guard_settings(config: &Config) -> Option<GuardSettings> {
    let g = config.guard.as_ref()?;
    Some(GuardSettings {
        scopes: g.scopes.clone(),
        own_principals: g.own_principals.clone(),
        approvers: g.approvers.clone(),
        request_ttl: g.request_ttl,
        max_event_age: g.max_event_age,
        temporary_approval: g.temporary_approval,
    })
}

/// A `serve` replica's engine (every component, under the sweeper lease) and, with the
/// DynamoDB store, the tail of its grants tables' streams.
pub async fn replica(config: &Config) -> Result<(Engine, Option<portcullis_aws::StreamTail>), WiringError> {
    let (store, tail): (Arc<dyn Store>, _) = match &config.store {
        StoreSpec::Sqlite(path) => (Arc::new(sqlite_store(path)?), None),
        StoreSpec::Dynamodb(table) => {
            let store = dynamo_store(config, table).await;
            store.check().await?;
            let tail = portcullis_aws::StreamTail::new(portcullis_aws::shared_sdk_config().await, store.clone());
            (Arc::new(store), Some(tail))
        }
    };
    Ok((compose(config, Purpose::Process, store).await?, tail))
}

/// The engine's builder over given adapters, with the configuration's settings and an outbox
/// (tests and benchmarks pass their own adapters, and add components).
pub fn builder(
    config: &Config,
    store: Arc<dyn Store>,
    firewall: Arc<dyn Firewall>,
    clock: Arc<dyn Clock>,
    notifier: Arc<dyn Notifier>,
) -> EngineBuilder {
    let outbox = Arc::new(Outbox::new(store.clone(), notifier, clock.clone(), Pacing::default()));
    let settings = Settings {
        specs: config.specs.clone(),
        policies: config.policies.clone(),
        marker: config.marker.clone(),
        quota: config.quota,
    };
    Engine::builder(store, firewall, clock, settings).outbox(outbox)
}

/// A signing secret kept in Secrets Manager, read again when a signature does not verify.
struct SecretSigningKey {
    arn: String,
}

#[async_trait]
impl SecretReload for SecretSigningKey {
    async fn reload(&self) -> Result<SigningSecrets, SecretError> {
        SigningSecrets::from_secret_value(&reread(&self.arn).await?)
    }
}

/// Hands approvals' applies to another invocation of this Lambda function.
struct InvokeSelf(portcullis_aws::AsyncInvoke);

#[async_trait::async_trait]
impl crate::slack::Defer for InvokeSelf {
    async fn defer(&self, job: &crate::slack::DeferredApply) -> Result<(), String> {
        self.0.invoke(&job.event()).await.map_err(|e| e.to_string())
    }
}

/// The Lambda's Slack endpoint: answers in the response, and hands approvals' applies to
/// another invocation of the function (`AWS_LAMBDA_FUNCTION_NAME`), so Slack's answer never
/// waits for EC2.
pub async fn lambda_slack_endpoint(config: &Config) -> Result<Option<SlackEndpoint>, WiringError> {
    let Some(endpoint) = slack_endpoint(config).await? else { return Ok(None) };
    let endpoint = endpoint.inline();
    Ok(Some(match std::env::var("AWS_LAMBDA_FUNCTION_NAME") {
        Ok(function) if config.guard.is_some() => {
            let invoke = portcullis_aws::AsyncInvoke::new(portcullis_aws::shared_sdk_config().await, &function);
            endpoint.deferring(Arc::new(InvokeSelf(invoke)))
        }
        _ => endpoint,
    }))
}

/// The Slack endpoint, when a signing secret is configured. Its secrets are read now, so a
/// wrong ARN stops the server at start, not at the first command.
pub async fn slack_endpoint(config: &Config) -> Result<Option<SlackEndpoint>, WiringError> {
    let Some(secret) = &config.slack.signing_secret else {
        tracing::info!("no Slack signing secret configured: /slack/commands is off");
        return Ok(None);
    };
    let failed = |what: &'static str, e: WiringError| WiringError::Slack { what, source: Box::new(e) };
    let secret = secret_value(secret).await.map_err(|e| failed("signing secret", e))?;
    // The bare secret, or JSON with a `signing_secret` key (and `next_signing_secret` while
    // rotating; or SLACK_SIGNING_SECRET_NEXT).
    let mut secrets =
        SigningSecrets::from_secret_value(&secret).map_err(|e| WiringError::Refused(format!("Slack signing secret: {e}")))?;
    if let Some(next) = &config.slack.next_signing_secret {
        secrets.next = Some(SigningSecret::new(secret_value(next).await?));
    }
    let bot_token = match &config.slack.bot_token {
        Some(token) => Some(secret_value(token).await.map_err(|e| failed("bot token", e))?),
        None => None,
    };
    if bot_token.is_none() && config.policies.values().any(|p| !p.allowed_groups().is_empty()) {
        return Err(WiringError::Refused(
            "user_groups are configured, but checking them needs SLACK_BOT_TOKEN (or SLACK_BOT_TOKEN_SECRET_ARN)".into(),
        ));
    }
    let endpoint = SlackEndpoint::new(&config.slack, secrets, bot_token);
    Ok(Some(match &config.slack.signing_secret {
        Some(Secret::Arn(arn)) => endpoint.with_reload(Arc::new(SecretSigningKey { arn: arn.clone() })),
        _ => endpoint,
    }))
}
