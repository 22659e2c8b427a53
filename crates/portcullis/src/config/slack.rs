//! `[slack]`: the slash command, its rate limit, where answers may be posted, and the secrets
//! (signing secret, webhooks, bot token) by value or by Secrets Manager ARN.

use portcullis_slack::UrlPrefix;
use serde::Deserialize;

use super::{ConfigError, Env, Secret, error, secret};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileSlack {
    pub(super) command: Option<String>,
    pub(super) rate_limit_per_minute: Option<u32>,
    pub(super) response_url_prefixes: Option<Vec<String>>,
    pub(super) api_url: Option<String>,
    pub(super) signing_secret_arn: Option<String>,
    pub(super) webhook_secret_arn: Option<String>,
    pub(super) bot_token_secret_arn: Option<String>,
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

pub(super) fn slack(file: &FileSlack, env: Env<'_>) -> Result<SlackConfig, ConfigError> {
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
