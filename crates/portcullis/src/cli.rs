//! The command line: `--help` is the manual.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use portcullis_core::{format_utc, time_left, Cidr, Description, Environment, Grant, GrantKey, Interface, Source, Timestamp, Ttl, UserName};
use portcullis_engine::{AddRequest, Cause, Engine, EngineError, ReconcileReport, Requester, Scope};
use serde::Serialize;

use crate::config::{Config, ConfigError, Overrides};
use crate::wiring::{self, WiringError};

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
    Add {
        /// IPv4 or IPv6 address or CIDR, e.g. 203.0.113.7 or 2001:db8::/48.
        #[arg(value_name = "IP|CIDR")]
        cidr: String,
        /// Environment (default: ENVIRONMENT, else dev).
        #[arg(long, value_name = "E")]
        env: Option<String>,
        /// How long: Nm (1-1440), Nh (1-24) or Nd (1-365); default 30d.
        #[arg(long, value_name = "T")]
        ttl: Option<String>,
        /// Why: printable text, at most 200 characters.
        #[arg(long, value_name = "D", default_value = "")]
        description: String,
        /// The user acting (default: the OS user).
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
    /// Take a network's access away now.
    Remove {
        #[arg(value_name = "IP|CIDR")]
        cidr: String,
        #[arg(long, value_name = "E")]
        env: Option<String>,
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
    /// Show live grants.
    List {
        #[arg(long, value_name = "E")]
        env: Option<String>,
        /// Every environment.
        #[arg(long, conflicts_with = "env")]
        all: bool,
    },
    /// Bring the security groups to the stored state now (repairs drift).
    Refresh {
        #[arg(long, value_name = "E")]
        env: Option<String>,
        /// Show what would change; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Revoke and record every grant that has expired.
    Sweep,
    /// Show the audit log, newest first.
    Audit {
        #[arg(long, value_name = "E")]
        env: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Create what the store is missing (idempotent): with DynamoDB, the grants table(s) with
    /// TTL and a stream, and portcullis's own table. Existing tables are left as they are.
    Init,
    /// Take over the rules seed 000's Lambda made (no marker) that match a live grant exactly,
    /// by rewriting their descriptions. Prints what it changes; nothing else is touched.
    Adopt {
        /// Only show what would be taken over.
        #[arg(long)]
        dry_run: bool,
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
    /// Handle one seed-format event (action, DynamoDB Stream batch, scheduled event) as the
    /// Lambda would, and print the JSON response.
    Invoke {
        /// The event's file, or - for standard input (the default).
        #[arg(long, value_name = "FILE|-", default_value = "-")]
        event: String,
    },
    /// Run as an AWS Lambda function (Runtime API); the firewall defaults to aws.
    Lambda,
    /// Run the HTTP API, the sweeper and the periodic reconcile.
    Serve {
        /// Address to listen on (PORTCULLIS_LISTEN; default 127.0.0.1:8080).
        #[arg(long, value_name = "ADDR")]
        listen: Option<String>,
    },
    /// Manage API tokens for /connection and /v1 (only a hash of each is stored).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Open access for this machine through a portcullis server's /connection, renew it while
    /// running, and close it on Ctrl-C or SIGTERM.
    Open {
        /// The server's base URL, e.g. https://portcullis.example.com.
        #[arg(long, value_name = "URL", env = "PORTCULLIS_SERVER")]
        server: String,
        /// Environment (default: the server's).
        #[arg(long, value_name = "E")]
        env: Option<String>,
        /// An API token (PORTCULLIS_TOKEN keeps it out of the process list).
        #[arg(long, value_name = "T", env = "PORTCULLIS_TOKEN", hide_env_values = true, conflicts_with = "aws", required_unless_present = "aws")]
        token: Option<String>,
        /// Authenticate with this machine's AWS credentials (a signed sts:GetCallerIdentity).
        #[arg(long)]
        aws: bool,
        /// With --aws: the server id to bind the login to (default: the server URL's host[:port]).
        #[arg(long, value_name = "ID", requires = "aws")]
        server_id: Option<String>,
        /// With --aws: the STS endpoint to sign for (default: AWS_ENDPOINT_URL_STS,
        /// AWS_ENDPOINT_URL, else https://sts.amazonaws.com); the server's must match.
        #[arg(long, value_name = "URL", requires = "aws")]
        sts_endpoint: Option<String>,
        /// Open once and exit; no renewal, no close.
        #[arg(long)]
        once: bool,
        /// Renew every this many seconds (default: when half the time is left).
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..))]
        renew_every: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a token and print it (once, alone on stdout); details go to stderr.
    Create {
        /// The user the token acts as (what environments' `users` lists match).
        #[arg(long, value_name = "NAME")]
        user: String,
        /// Environments it may act in (repeatable; default any the policy allows the user).
        #[arg(long = "env", value_name = "E")]
        envs: Vec<String>,
        /// self-service (/connection only) or admin (also /v1).
        #[arg(long, value_name = "ROLE", default_value = "self-service")]
        role: String,
        /// Expiry: Nm, Nh, Nd (from now) or an RFC 3339 time; default never.
        #[arg(long, value_name = "T")]
        expires: Option<String>,
        /// Who creates it (default: the OS user).
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
    /// Show every token (never its secret).
    List,
    /// Revoke a token now; a running server refuses it from its next request.
    Revoke {
        #[arg(value_name = "ID")]
        id: String,
        #[arg(long = "as", value_name = "USER")]
        as_user: Option<String>,
    },
}

/// A failure, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Operational(String),
}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Usage(e.to_string())
    }
}

impl From<EngineError> for CliError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::Validation(v) => CliError::Usage(v.to_string()),
            other => CliError::Operational(other.to_string()),
        }
    }
}

impl From<WiringError> for CliError {
    fn from(e: WiringError) -> Self {
        match e {
            WiringError::Unsupported(m) => CliError::Usage(m),
            other => CliError::Operational(other.to_string()),
        }
    }
}

impl From<portcullis_core::ValidationError> for CliError {
    fn from(e: portcullis_core::ValidationError) -> Self {
        CliError::Usage(e.to_string())
    }
}

pub async fn run(args: Args) -> ExitCode {
    let json = args.json;
    match execute(args).await {
        Ok(code) => code,
        Err(err) => {
            let code = match err {
                CliError::Usage(_) => 2,
                CliError::Operational(_) => 1,
            };
            if json {
                let kind = if code == 2 { "invalid" } else { "failed" };
                println!("{}", serde_json::json!({"error": {"code": kind, "message": err.to_string()}}));
            }
            eprintln!("error: {err}");
            ExitCode::from(code)
        }
    }
}

fn init_logging(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOG_LEVEL")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
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

fn acting_user(as_user: Option<String>) -> Result<Requester, CliError> {
    let name = as_user
        .or_else(|| std::env::var("USER").ok())
        .or_else(|| std::env::var("LOGNAME").ok())
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| "unknown".into());
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

fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string_pretty(value).expect("values serialise"));
}

async fn execute(args: Args) -> Result<ExitCode, CliError> {
    // The client needs no configuration, store or firewall.
    if let Command::Open { server, env, token, aws, server_id, sts_endpoint, once, renew_every } = args.command {
        init_logging(false);
        let credentials = match (token, aws) {
            (Some(t), false) => crate::open::Credentials::Token(t.trim().to_string()),
            (_, _) => crate::open::Credentials::Aws {
                server_id: server_id
                    .or_else(|| crate::open::default_server_id(&server))
                    .ok_or_else(|| CliError::Usage(format!("--server {server:?} is not an http(s) URL")))?,
                sts_endpoint: sts_endpoint.unwrap_or_else(|| crate::open::default_sts_endpoint(&|k| std::env::var(k).ok())),
            },
        };
        let options = crate::open::OpenOptions {
            server,
            environment: env,
            credentials,
            once,
            renew_every: renew_every.map(std::time::Duration::from_secs),
            json: args.json,
        };
        return match crate::open::run(options).await {
            Ok(()) => Ok(ExitCode::SUCCESS),
            Err(crate::open::OpenError::Refused(m)) => Err(CliError::Usage(m)),
            Err(crate::open::OpenError::Failed(m)) => Err(CliError::Operational(m)),
        };
    }
    let serving = matches!(args.command, Command::Serve { .. });
    let in_lambda = matches!(args.command, Command::Lambda);
    init_logging((args.json && !serving) || in_lambda);
    let listen = match &args.command {
        Command::Serve { listen } => listen.clone(),
        _ => None,
    };
    let default_firewall = in_lambda.then_some(crate::config::FirewallKind::Aws);
    let overrides = Overrides { config_file: args.config, store: args.store, firewall: args.firewall, listen, default_firewall };
    let config = Config::load(&overrides, &|k| std::env::var(k).ok())?;
    let json = args.json;
    match args.command {
        Command::Add { cidr, env, ttl, description, as_user } => {
            let cidr = Cidr::parse(&cidr)?;
            let ttl = ttl.map(|t| Ttl::parse(&t)).transpose()?;
            let description = Description::parse(&description)?;
            let environment = environment(&config, env)?;
            let by = acting_user(as_user)?;
            let engine = wiring::engine(&config, false, json).await?;
            let outcome = engine.add(AddRequest { cidr, environment, ttl, description, source: Source::Manual, by }).await;
            announce(&engine).await;
            let outcome = outcome?;
            if json {
                print_json(&outcome);
            } else {
                let verb = if outcome.refreshed { "refreshed" } else { "added" };
                let g = &outcome.grant;
                println!(
                    "{verb} {} in {} until {} ({}), owner {}",
                    g.cidr,
                    g.environment,
                    g.expires_at.map(format_utc).unwrap_or_else(|| "never".into()),
                    g.expires_at.map(|t| time_left(t, engine.clock().now())).unwrap_or_default(),
                    g.owner.name
                );
                match &outcome.report {
                    Some(report) => print_report(report),
                    None => println!("rules unchanged: no security group call was needed"),
                }
            }
            Ok(outcome.report.as_ref().map(exit_for).unwrap_or(ExitCode::SUCCESS))
        }
        Command::Remove { cidr, env, as_user } => {
            let key = GrantKey { cidr: Cidr::parse(&cidr)?, environment: environment(&config, env)? };
            let by = acting_user(as_user)?;
            let engine = wiring::engine(&config, false, json).await?;
            let outcome = engine.remove(&key, &by).await;
            announce(&engine).await;
            let outcome = outcome?;
            if json {
                print_json(&outcome);
            } else {
                println!("removed {} from {}", outcome.grant.cidr, outcome.grant.environment);
                print_report(&outcome.report);
            }
            Ok(exit_for(&outcome.report))
        }
        Command::List { env, all } => {
            let store = wiring::open_store(&config).await?;
            let scope = if all { None } else { Some(environment(&config, env)?) };
            let now = Timestamp::now_utc();
            let grants: Vec<Grant> = store
                .grants(scope.as_ref())
                .await
                .map_err(|e| CliError::Operational(e.to_string()))?
                .into_iter()
                .filter(|g| g.is_live(now))
                .collect();
            if json {
                print_json(&grants);
            } else if grants.is_empty() {
                println!("no live grants");
            } else {
                for g in &grants {
                    println!(
                        "{:<20} {:<8} {:<16} {:<24} {}",
                        g.cidr.to_string(),
                        g.environment.as_str(),
                        g.owner.name,
                        g.expires_at.map(|t| time_left(t, now)).unwrap_or_else(|| "no expiry".into()),
                        g.description
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Refresh { env, dry_run } => {
            let scope = match env {
                Some(name) => Scope::Environment(Environment::parse(&name)?),
                None => Scope::All,
            };
            let engine = wiring::engine(&config, dry_run, json).await?;
            let report = engine.reconcile(scope, Cause::Refresh).await;
            announce(&engine).await;
            let report = report?;
            if json {
                print_json(&report);
            } else {
                print_report(&report);
            }
            Ok(exit_for(&report))
        }
        Command::Sweep => {
            let engine = wiring::engine(&config, false, json).await?;
            let report = engine.sweep().await;
            announce(&engine).await;
            let report = report?;
            if json {
                print_json(&report);
            } else {
                println!("{} grants expired", report.expired.len());
                for g in &report.expired {
                    println!("  {} in {}", g.cidr, g.environment);
                }
                if let Some(r) = &report.reconcile {
                    print_report(r);
                }
            }
            Ok(report.reconcile.as_ref().map(exit_for).unwrap_or(ExitCode::SUCCESS))
        }
        Command::Audit { env, limit } => {
            let store = wiring::open_store(&config).await?;
            let env = env.map(|e| Environment::parse(&e)).transpose()?;
            let events = store.audit(env.as_ref(), limit).await.map_err(|e| CliError::Operational(e.to_string()))?;
            if json {
                print_json(&events);
            } else {
                for e in &events {
                    println!(
                        "{} {:<14} {:<8} {:<20} {:<10} {}",
                        format_utc(e.at),
                        e.action.as_str(),
                        e.environment,
                        e.cidr.as_deref().unwrap_or("-"),
                        e.interface.as_str(),
                        e.reason
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Init => {
            let report = wiring::init_store(&config).await?;
            if json {
                print_json(&serde_json::json!({
                    "created": report.created, "existing": report.existing, "warnings": report.warnings,
                }));
            } else {
                for t in &report.created {
                    println!("created {t}");
                }
                for t in &report.existing {
                    println!("exists  {t} (left as it is)");
                }
                for w in &report.warnings {
                    println!("warning: {w}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Adopt { dry_run, as_user } => {
            let by = acting_user(as_user)?;
            let engine = wiring::engine(&config, false, json).await?;
            let report = engine.adopt(dry_run, &by).await?;
            if json {
                print_json(&report);
            } else {
                let verb = if dry_run { "would take over" } else { "taking over" };
                for c in &report.changes {
                    for r in &c.update_descriptions {
                        println!("{verb} {} {} on {}: description becomes {:?}", r.ec2_cidr, r.ports, c.target, r.description);
                    }
                }
                for f in &report.observe_failures {
                    eprintln!("failed: could not describe {}: {}", f.group_id.as_deref().unwrap_or(&f.region), f.error);
                }
                for o in report.outcomes.iter().filter(|o| o.error.is_some()) {
                    eprintln!("failed: {}: {}", o.target, o.error.as_deref().unwrap_or_default());
                }
                match (report.rules(), dry_run) {
                    (0, _) => println!("nothing to take over: no unmarked rule matches a live grant"),
                    (n, true) => println!("{n} rules would be taken over; run without --dry-run to do it"),
                    (n, false) => println!("{n} rules taken over"),
                }
            }
            Ok(if report.failed() { ExitCode::from(1) } else { ExitCode::SUCCESS })
        }
        Command::Invoke { event } => {
            let text = if event == "-" {
                let mut text = String::new();
                std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                    .map_err(|e| CliError::Usage(format!("cannot read the event from standard input: {e}")))?;
                text
            } else {
                std::fs::read_to_string(&event).map_err(|e| CliError::Usage(format!("cannot read {event}: {e}")))?
            };
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| CliError::Usage(format!("the event is not JSON: {e}")))?;
            let event = crate::lambda::classify(value).map_err(CliError::Usage)?;
            let engine = std::sync::Arc::new(wiring::engine(&config, false, true).await?);
            let (response, code) = match event {
                crate::lambda::Event::Action(a) => {
                    match crate::lambda::handle_action(&engine, &config.default_environment, a, Interface::Cli).await {
                        Ok(v) => (v, 0),
                        Err((v, code)) => (v, code),
                    }
                }
                crate::lambda::Event::Stream(records) => {
                    let r = crate::lambda::handle_stream(&engine, &records).await;
                    let code = if r.batch_item_failures.is_empty() { 0 } else { 1 };
                    (serde_json::to_value(r).expect("serialises"), code)
                }
                crate::lambda::Event::Scheduled => {
                    let lease = wiring::sweeper_lease(engine.store().clone(), engine.clock().clone());
                    match crate::lambda::handle_scheduled(&engine, &lease).await {
                        Ok(v) => (v, 0),
                        Err(e) => return Err(e.into()),
                    }
                }
                crate::lambda::Event::Http(_) => {
                    return Err(CliError::Usage("HTTP API events are served by `portcullis lambda` or `serve`, not invoke".into()))
                }
            };
            announce(&engine).await;
            print_json(&response);
            Ok(ExitCode::from(code))
        }
        Command::Lambda => {
            let engine = std::sync::Arc::new(wiring::engine(&config, false, true).await?);
            let lease = wiring::sweeper_lease(engine.store().clone(), engine.clock().clone());
            let slack = crate::http::build_slack_endpoint(&config).await.map_err(|e| CliError::Operational(e.to_string()))?;
            let slack = slack.map(|s| std::sync::Arc::new(s.inline()));
            let app = std::sync::Arc::new(crate::http::App::new(engine.clone(), &config, slack));
            crate::lambda::run(crate::lambda::Handler { engine, app, lease }).await.map_err(CliError::Operational)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Token { command } => token(&config, command, json).await,
        Command::Open { .. } => unreachable!("handled before the configuration is loaded"),
        Command::Serve { .. } => {
            crate::http::serve(config).await.map_err(|e| match e {
                crate::http::ServeError::Refused(m) => CliError::Usage(m),
                other => CliError::Operational(other.to_string()),
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A token's expiry: a TTL from now, or an RFC 3339 time in the future.
fn token_expiry(text: &str, now: Timestamp) -> Result<Timestamp, CliError> {
    use time::format_description::well_known::Rfc3339;
    let at = match Ttl::parse(text) {
        Ok(ttl) => now + ttl.duration(),
        Err(_) => Timestamp::parse(text, &Rfc3339).map_err(|_| {
            CliError::Usage(format!("--expires {text:?} is neither Nm/Nh/Nd (e.g. 90d) nor an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)"))
        })?,
    };
    if at <= now {
        return Err(CliError::Usage(format!("--expires {text:?} is in the past")));
    }
    Ok(at)
}

async fn token(config: &Config, command: TokenCommand, json: bool) -> Result<ExitCode, CliError> {
    use portcullis_core::Role;
    use portcullis_store::Actor;
    let store = wiring::open_store(config).await?;
    let failed = |e: portcullis_store::StoreError| CliError::Operational(e.to_string());
    let now = Timestamp::now_utc();
    match command {
        TokenCommand::Create { user, envs, role, expires, as_user } => {
            let user = UserName::parse(&user).map_err(|e| CliError::Usage(format!("--user: {e}")))?.into_string();
            if user.contains(',') {
                return Err(CliError::Usage(format!("--user {user:?} must not contain a comma")));
            }
            if user.starts_with("arn:") {
                return Err(CliError::Usage("--user must not be an ARN: IAM principals authenticate with --aws, not tokens".into()));
            }
            let role = Role::parse(&role).ok_or_else(|| CliError::Usage(format!("--role {role:?} is not self-service or admin")))?;
            let environments = envs.iter().map(|e| environment(config, Some(e.clone()))).collect::<Result<_, _>>()?;
            let expires_at = expires.as_deref().map(|t| token_expiry(t, now)).transpose()?;
            let by = acting_user(as_user)?;
            let (secret, token) = crate::auth::issue(&user, role, environments, now, expires_at, &by.owner.name).map_err(CliError::Operational)?;
            store.create_token(token.clone(), &Actor { name: by.owner.name, interface: Interface::Cli }).await.map_err(failed)?;
            println!("{secret}");
            eprintln!(
                "created token {} for {} ({}), environments {}, expires {}; it is shown only now",
                token.id,
                token.user,
                token.role,
                token_envs(&token),
                token.expires_at.map(format_utc).unwrap_or_else(|| "never".into())
            );
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::List => {
            let tokens = store.tokens().await.map_err(failed)?;
            if json {
                print_json(&tokens);
            } else if tokens.is_empty() {
                println!("no tokens");
            } else {
                println!("{:<12}  {:<16} {:<12} {:<16} {:<23} {:<23} {}", "ID", "USER", "ROLE", "ENVIRONMENTS", "CREATED", "EXPIRES", "REVOKED");
                for t in &tokens {
                    println!(
                        "{:<12}  {:<16} {:<12} {:<16} {:<23} {:<23} {}",
                        t.id,
                        t.user,
                        t.role.as_str(),
                        token_envs(t),
                        format_utc(t.created_at),
                        t.expires_at.map(format_utc).unwrap_or_else(|| "never".into()),
                        t.revoked_at.map(format_utc).unwrap_or_else(|| "-".into())
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        TokenCommand::Revoke { id, as_user } => {
            let by = acting_user(as_user)?;
            let actor = Actor { name: by.owner.name, interface: Interface::Cli };
            let Some(token) = store.revoke_token(id.trim(), &actor, now).await.map_err(failed)? else {
                return Err(CliError::Usage(format!("no token with id {id:?} (see `portcullis token list`)")));
            };
            if json {
                print_json(&token);
            } else {
                println!("revoked token {} ({}, user {}) at {}", token.id, token.role, token.user, token.revoked_at.map(format_utc).unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn token_envs(t: &portcullis_core::ApiToken) -> String {
    t.environment_list().unwrap_or_else(|| "any".into())
}

fn exit_for(report: &ReconcileReport) -> ExitCode {
    if report.failed() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn print_report(r: &ReconcileReport) {
    println!(
        "{} groups: authorized {}, revoked {}, updated {}, unchanged {}, unowned left alone {}",
        r.targets, r.authorized, r.revoked, r.updated, r.unchanged, r.unowned_left_alone
    );
    for w in &r.withheld {
        println!(
            "left in place: {} on {} is marked for {}, but this store has never recorded anything for {}; \
             add a grant for it to keep it, or remove the rule by hand",
            w.rule.ec2_cidr, w.target, w.environment, w.environment
        );
    }
    for s in &r.skipped {
        println!("skipped {}: {}", s.id, s.reason);
    }
    for f in r.failure_messages() {
        eprintln!("failed: {f}");
    }
}
