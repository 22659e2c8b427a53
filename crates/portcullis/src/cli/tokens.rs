//! `portcullis token create|list|revoke`.

use std::process::ExitCode;

use clap::Subcommand;
use portcullis_core::{ApiToken, Role, Timestamp, Ttl, UserName, format_utc};

use super::print::print_json;
use super::{CliError, Context, acting_user, environment};
use crate::wiring;

#[derive(Debug, Subcommand)]
pub(super) enum TokenCommand {
    /// Create a token and print it (once, alone on stdout); details go to stderr.
    Create {
        /// The user the token acts as (what environments' `users` lists match).
        #[arg(long, value_name = "NAME")]
        user: String,
        /// Environments it may act in (repeatable; default any the policy allows the user).
        #[arg(long = "env", value_name = "E")]
        envs: Vec<String>,
        /// self-service (/connection only), admin (also /v1), or events (POST /v1/events
        /// only, for EventBridge; not rate-limited).
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

pub(super) async fn run(cx: &Context, command: TokenCommand) -> Result<ExitCode, CliError> {
    match command {
        TokenCommand::Create { user, envs, role, expires, as_user } => create(cx, user, envs, role, expires, as_user).await,
        TokenCommand::List => list(cx).await,
        TokenCommand::Revoke { id, as_user } => revoke(cx, id, as_user).await,
    }
}

/// A token's expiry: a TTL from now, or an RFC 3339 time in the future.
fn token_expiry(text: &str, now: Timestamp) -> Result<Timestamp, CliError> {
    use time::format_description::well_known::Rfc3339;
    let at = match Ttl::parse(text) {
        Ok(ttl) => now + ttl.duration(),
        Err(_) => Timestamp::parse(text, &Rfc3339).map_err(|_| {
            CliError::Usage(format!(
                "--expires {text:?} is neither Nm/Nh/Nd (e.g. 90d) nor an RFC 3339 time (e.g. 2027-01-31T00:00:00Z)"
            ))
        })?,
    };
    if at <= now {
        return Err(CliError::Usage(format!("--expires {text:?} is in the past")));
    }
    Ok(at)
}

async fn create(
    cx: &Context,
    user: String,
    envs: Vec<String>,
    role: String,
    expires: Option<String>,
    as_user: Option<String>,
) -> Result<ExitCode, CliError> {
    let user = UserName::parse(&user).map_err(|e| CliError::Usage(format!("--user: {e}")))?.into_string();
    if user.contains(',') {
        return Err(CliError::Usage(format!("--user {user:?} must not contain a comma")));
    }
    if user.starts_with("arn:") {
        return Err(CliError::Usage("--user must not be an ARN: IAM principals authenticate with --aws, not tokens".into()));
    }
    let role =
        Role::parse(&role).ok_or_else(|| CliError::Usage(format!("--role {role:?} is not self-service, admin or events")))?;
    let environments = envs.iter().map(|e| environment(&cx.config, Some(e.clone()))).collect::<Result<_, _>>()?;
    let by = acting_user(as_user)?;
    let engine = wiring::engine(&cx.config, wiring::Purpose::Read).await?;
    let now = engine.clock().now();
    let expires_at = expires.as_deref().map(|t| token_expiry(t, now)).transpose()?;
    let (secret, token) = crate::auth::issue(&user, role, environments, now, expires_at, &by.owner.name)
        .map_err(|e| CliError::Operational(e.to_string()))?;
    engine.grants().create_token(token.clone(), &by).await?;
    crate::outln!("{secret}");
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

async fn list(cx: &Context) -> Result<ExitCode, CliError> {
    let tokens = wiring::engine(&cx.config, wiring::Purpose::Read).await?.grants().tokens().await?;
    if cx.json {
        print_json(&tokens);
    } else if tokens.is_empty() {
        crate::outln!("no tokens");
    } else {
        crate::outln!(
            "{:<12}  {:<16} {:<12} {:<16} {:<23} {:<23} REVOKED",
            "ID",
            "USER",
            "ROLE",
            "ENVIRONMENTS",
            "CREATED",
            "EXPIRES"
        );
        for t in &tokens {
            crate::outln!(
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

async fn revoke(cx: &Context, id: String, as_user: Option<String>) -> Result<ExitCode, CliError> {
    let by = acting_user(as_user)?;
    let engine = wiring::engine(&cx.config, wiring::Purpose::Read).await?;
    let Some(token) = engine.grants().revoke_token(id.trim(), &by).await? else {
        return Err(CliError::Usage(format!("no token with id {id:?} (see `portcullis token list`)")));
    };
    if cx.json {
        print_json(&token);
    } else {
        crate::outln!(
            "revoked token {} ({}, user {}) at {}",
            token.id,
            token.role,
            token.user,
            token.revoked_at.map(format_utc).unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn token_envs(t: &ApiToken) -> String {
    t.environment_list().unwrap_or_else(|| "any".into())
}
