//! The command line: `--help` is the manual. [`run`] parses nothing itself: it loads the
//! configuration, hands each subcommand to its own function, and maps errors to exit codes
//! (0 ok, 1 operational error, 2 usage error: bad input or something named that does not
//! exist, 3 refused by policy or permission).

mod grants;
mod guard;
mod print;
mod process;
mod tokens;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis_core::{Environment, Interface, UserName};
use portcullis_engine::{Engine, EngineError, Requester};

use crate::config::{Config, ConfigError, FirewallKind, Overrides};
use crate::wiring::WiringError;

const EXAMPLES: &str = "Examples:
  portcullis add 203.0.113.7 --ttl 7d --description 'Home office'
  portcullis add 2001:db8:1::/48 --env prod --ttl=12h --as alice
  portcullis list --all --json
  portcullis remove 203.0.113.7
  portcullis --firewall aws refresh --dry-run
  portcullis serve --listen 127.0.0.1:8080
  portcullis token create --user ci --env dev --expires 90d
  PORTCULLIS_TOKEN=pct_... portcullis open --server https://portcullis.example.com
  portcullis open --server https://portcullis.example.com --aws --once

Without a config file portcullis uses a SQLite store (portcullis.db) and the dry-run firewall,
and manages the environment named by ENVIRONMENT (default dev).";

/// Time-boxed, audited network allowlisting for AWS security groups.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, after_help = EXAMPLES)]
pub struct Args {
    /// TOML configuration file.
    #[arg(long, global = true, env = "PORTCULLIS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Where grants live: sqlite:PATH (default sqlite:portcullis.db) or dynamodb:TABLE.
    #[arg(long, global = true, value_name = "SPEC")]
    store: Option<String>,
    /// What applies changes: aws (EC2 security groups) or dry-run (print them; the default).
    #[arg(long, global = true, value_name = "KIND")]
    firewall: Option<String>,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Allow a network for a while (adding it again refreshes it).
    Add(grants::AddArgs),
    /// Take a network's access away now.
    Remove(grants::RemoveArgs),
    /// Show live grants.
    List(grants::ListArgs),
    /// Bring the security groups to the stored state now (repairs drift).
    Refresh(grants::RefreshArgs),
    /// Revoke and record every grant that has expired.
    Sweep,
    /// Show the audit log, newest first.
    Audit(grants::AuditArgs),
    /// Create what the store is missing (idempotent): with DynamoDB, the grants table(s) with
    /// TTL and a stream, and portcullis's own table. Existing tables are left as they are.
    Init,
    /// Take over the rules the docustack IP Whitelist Manager Lambda made (no marker) that match
    /// a live grant exactly,
    /// by rewriting their descriptions. Prints what it changes; nothing else is touched.
    Adopt(grants::AdoptArgs),
    /// Handle one event (an action of the docustack IP Whitelist Manager Lambda, a DynamoDB
    /// Stream batch, a scheduled event, an Auto Scaling
    /// lifecycle action or true-up, CloudTrail rule change) as the Lambda would, and print the
    /// JSON response.
    Invoke(process::InvokeArgs),
    /// Run as an AWS Lambda function (Runtime API); the firewall defaults to aws.
    Lambda,
    /// Run the HTTP API, the sweeper and the periodic reconcile.
    Serve(process::ServeArgs),
    /// Manage API tokens for /connection and /v1 (only a hash of each is stored).
    Token {
        #[command(subcommand)]
        command: tokens::TokenCommand,
    },
    /// Open access for this machine through a portcullis server's /connection, renew it while
    /// running, and close it on Ctrl-C or SIGTERM.
    Open(process::OpenArgs),
    /// Guard: record the baseline of the guarded groups, or compare them with it now.
    Guard {
        #[command(subcommand)]
        command: guard::GuardCommand,
    },
    /// Show guard's change requests (out-of-band changes, reverted, awaiting a decision).
    Requests(guard::RequestsArgs),
    /// Approve a change request: it is applied as it was made (approvers only, never the
    /// requester).
    Approve(guard::ApproveArgs),
    /// Deny a change request: the revert stays.
    Deny(guard::DenyArgs),
}

/// A failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad input, or something named that does not exist: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Understood, and refused by policy or permission (audited): exit 3.
    #[error("{0}")]
    Refused(String),
    /// Something failed on the way (a group, the store): exit 1.
    #[error("{0}")]
    Operational(String),
}

impl CliError {
    /// The exit code, and the `error.code` `--json` prints.
    fn code(&self) -> (u8, &'static str) {
        match self {
            CliError::Operational(_) => (1, "failed"),
            CliError::Usage(_) => (2, "invalid"),
            CliError::Refused(_) => (3, "refused"),
        }
    }
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Rejected(v) => v.into(),
            other => CliError::Operational(other.to_string()),
        }
    }
}

impl From<WiringError> for CliError {
    fn from(e: WiringError) -> Self {
        match e {
            WiringError::Unsupported(m) | WiringError::Refused(m) => CliError::Usage(m),
            other => CliError::Operational(other.to_string()),
        }
    }
}

impl From<crate::serve::ServeError> for CliError {
    fn from(e: crate::serve::ServeError) -> Self {
        match e {
            crate::serve::ServeError::Wiring(w) => w.into(),
            other => CliError::Operational(other.to_string()),
        }
    }
}

impl From<portcullis_core::Rejection> for CliError {
    fn from(rejection: portcullis_core::Rejection) -> Self {
        if rejection.is_refusal() { CliError::Refused(rejection.to_string()) } else { CliError::Usage(rejection.to_string()) }
    }
}

/// Each kind of rejection maps as the whole does.
macro_rules! rejected {
    ($($kind:ty),*) => {$(
        impl From<$kind> for CliError {
            fn from(err: $kind) -> Self {
                portcullis_core::Rejection::from(err).into()
            }
        }
    )*};
}
rejected!(
    portcullis_core::InvalidInput,
    portcullis_core::NotFound,
    portcullis_core::PermissionRefusal,
    portcullis_core::PolicyRefusal
);

pub async fn run(args: Args) -> ExitCode {
    let json = args.json;
    match execute(args).await {
        Ok(code) => code,
        Err(err) => {
            let (code, kind) = err.code();
            if json {
                crate::outln!("{}", serde_json::json!({"error": {"code": kind, "message": err.to_string()}}));
            }
            eprintln!("error: {err}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        // The SDK's own diagnostics (the region and credential chains' IMDS attempts, each a
        // multi-line dump) are for LOG_LEVEL=debug; what they mean is said once, in one line.
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,aws_config=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// What every subcommand that runs against the configuration is handed.
struct Context {
    config: Config,
    json: bool,
}

async fn execute(args: Args) -> Result<ExitCode, CliError> {
    // The client needs no configuration, store or firewall.
    if let Command::Open(open) = args.command {
        init_logging(false);
        return process::open(open, args.json).await;
    }
    let serving = matches!(args.command, Command::Serve(_));
    let in_lambda = matches!(args.command, Command::Lambda);
    init_logging((args.json && !serving) || in_lambda);
    let listen = match &args.command {
        Command::Serve(serve) => serve.listen.clone(),
        _ => None,
    };
    let default_firewall = in_lambda.then_some(FirewallKind::Aws);
    let overrides = Overrides { config_file: args.config, store: args.store, firewall: args.firewall, listen, default_firewall };
    let config = Config::load(&overrides, &|k| std::env::var(k).ok())?;
    let cx = Context { config, json: args.json };
    match args.command {
        Command::Add(a) => grants::add(&cx, a).await,
        Command::Remove(a) => grants::remove(&cx, a).await,
        Command::List(a) => grants::list(&cx, a).await,
        Command::Refresh(a) => grants::refresh(&cx, a).await,
        Command::Sweep => grants::sweep(&cx).await,
        Command::Audit(a) => grants::audit(&cx, a).await,
        Command::Init => grants::init(&cx).await,
        Command::Adopt(a) => grants::adopt(&cx, a).await,
        Command::Invoke(a) => process::invoke(&cx, a).await,
        Command::Lambda => process::lambda(&cx).await,
        Command::Serve(_) => process::serve(cx).await,
        Command::Token { command } => tokens::run(&cx, command).await,
        Command::Guard { command } => guard::run(&cx, command).await,
        Command::Requests(a) => guard::requests(&cx, a).await,
        Command::Approve(a) => guard::approve(&cx, a).await,
        Command::Deny(a) => guard::deny(&cx, a).await,
        Command::Open(_) => unreachable!("handled before the configuration is loaded"),
    }
}

/// The environment named (or the default), which must be a known one.
fn environment(config: &Config, env: Option<String>) -> Result<Environment, CliError> {
    let env = match env {
        Some(name) => Environment::parse(&name)?,
        None => config.default_environment.clone(),
    };
    portcullis_core::policy_for(&config.policies, &env)?;
    Ok(env)
}

/// Who acts: `--as`, else `$USER` / `$LOGNAME`, else the OS account this process runs as (by
/// its uid: cron, containers and systemd units often set no `$USER`); never a made-up name.
fn acting_user(as_user: Option<String>) -> Result<Requester, CliError> {
    if as_user.as_deref().is_some_and(|u| u.trim().is_empty()) {
        return Err(CliError::Usage("--as needs a user name; leave it out to act as the OS user".into()));
    }
    let from_env = |k: &str| std::env::var(k).ok().filter(|n| !n.trim().is_empty());
    let name = as_user
        .or_else(|| from_env("USER"))
        .or_else(|| from_env("LOGNAME"))
        .or_else(|| whoami::username().ok())
        .filter(|n| !n.trim().is_empty())
        .ok_or_else(|| CliError::Usage("cannot tell which OS account this is; name the user with --as".into()))?;
    Ok(Requester::named(UserName::parse(&name)?.as_str(), Interface::Cli))
}

/// How long a command waits for its announcements to go out before exiting.
const ANNOUNCE_BUDGET: time::Duration = time::Duration::seconds(10);

/// Delivers this run's announcements (and any an earlier run left) before exiting; what
/// cannot go out now stays in the outbox. Never changes the exit code.
async fn announce(engine: &Engine) {
    let Some(outbox) = engine.outbox() else { return };
    let report = outbox.flush(ANNOUNCE_BUDGET).await;
    if report.pending > 0 {
        eprintln!(
            "note: {} announcement(s) not delivered yet; they stay in the outbox for the next run or `portcullis serve`",
            report.pending
        );
    }
}
