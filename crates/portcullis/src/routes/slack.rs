//! `POST /slack/commands`: the `/infra whitelist …` slash command.
//!
//! Every request is verified against the signing secret first (401 otherwise, and nothing is
//! read or changed). After that, Slack's conventions hold: a mistake or refusal is an HTTP 200
//! with a message. Reads answer at once; changes are acknowledged at once and their outcome is
//! posted to the request's `response_url`, so Slack's 3-second limit always holds.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::{Credential, Environment, GrantKey, Interface, Owner, Source, Timestamp, UserName};
use portcullis_engine::{AddRequest, Cause, Engine, EngineError, Requester, Scope};
use portcullis_slack::signature::{MAX_SKEW_SECS, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use portcullis_slack::{Command, Reply, parse, redact_url, usage};
use serde::Deserialize;

use crate::app::App;
use crate::slack::SlackEndpoint;

/// The form Slack posts for a slash command (fields we do not use are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SlashCommand {
    pub command: String,
    pub text: String,
    pub user_id: String,
    pub user_name: String,
    pub response_url: String,
    pub ssl_check: String,
}

/// A slash command's form body, read; the error is the reply's text.
pub fn read_form(body: &[u8]) -> Result<SlashCommand, String> {
    strict_utf8_form(body)?;
    serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())
}

pub(super) async fn command(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let slack = match verified(&app, &headers, &body).await {
        Ok(slack) => slack,
        Err(response) => return response,
    };
    let now = app.engine.clock().now();
    let form = match read_form(&body) {
        Ok(form) => form,
        Err(err) => return Json(Reply::refused(&format!("could not read the command: {err}"))).into_response(),
    };
    if form.ssl_check == "1" {
        return StatusCode::OK.into_response();
    }
    Json(handle(&app, &slack, form, now).await).into_response()
}

/// Slack's endpoint, once the request's signature is checked and it is no replay; else the
/// answer to give (nothing of the body has been read).
pub(super) async fn verified(app: &Arc<App>, headers: &HeaderMap, body: &[u8]) -> Result<Arc<SlackEndpoint>, Response> {
    let Some(slack) = app.slack.clone() else {
        return Err((
            StatusCode::SERVICE_UNAVAILABLE,
            "Slack is not configured on this server: set SLACK_SIGNING_SECRET or SLACK_SIGNING_SECRET_ARN",
        )
            .into_response());
    };
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let now = app.engine.clock().now();
    if let Err(err) = slack.verify(header(TIMESTAMP_HEADER), header(SIGNATURE_HEADER), body, now.unix_timestamp()).await {
        tracing::warn!(error = %err, "refused a Slack request with a bad signature");
        return Err((StatusCode::UNAUTHORIZED, format!("invalid request signature: {err}")).into_response());
    }
    // A signed request stays valid for its timestamp's window: remember each signature for
    // that long, in the store, so no replica runs a replay of it.
    let signature = header(SIGNATURE_HEADER).unwrap_or_default();
    match app.engine.grants().first_use(&format!("slack:{signature}"), time::Duration::seconds(2 * MAX_SKEW_SECS)).await {
        Ok(true) => Ok(slack),
        Ok(false) => {
            tracing::warn!("refused a replayed Slack request");
            Err((StatusCode::UNAUTHORIZED, "this signed request was used before").into_response())
        }
        Err(err) => {
            tracing::error!(error = %err, "cannot check a Slack request against replays");
            Err((StatusCode::SERVICE_UNAVAILABLE, "cannot check the request against replays; try again").into_response())
        }
    }
}

/// Refuses a form whose fields do not decode to UTF-8 (form decoding would quietly store
/// U+FFFD in their place).
fn strict_utf8_form(body: &[u8]) -> Result<(), String> {
    let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
    for field in body.split(|b| *b == b'&') {
        let mut bytes = Vec::with_capacity(field.len());
        let mut i = 0;
        while i < field.len() {
            match field[i] {
                b'%' => {
                    let decoded = field.get(i + 1).copied().and_then(hex).zip(field.get(i + 2).copied().and_then(hex));
                    let Some((hi, lo)) = decoded else { return Err("a field has a malformed %-escape".into()) };
                    bytes.push(hi << 4 | lo);
                    i += 3;
                }
                b'+' => {
                    bytes.push(b' ');
                    i += 1;
                }
                b => {
                    bytes.push(b);
                    i += 1;
                }
            }
        }
        if std::str::from_utf8(&bytes).is_err() {
            return Err("a field is not valid UTF-8".into());
        }
    }
    Ok(())
}

/// Slack user ids are short upper-case alphanumerics (`U…`, `W…`).
fn valid_user_id(id: &str) -> bool {
    (2..=32).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit())
}

async fn handle(app: &Arc<App>, slack: &Arc<SlackEndpoint>, form: SlashCommand, now: Timestamp) -> Reply {
    let usage = usage(&slack.command);
    if !form.command.eq_ignore_ascii_case(&slack.command) {
        return Reply::mistake(&format!("this app answers {}, not {:?}", slack.command, form.command), &usage);
    }
    let name = match form.user_name.trim() {
        "" => UserName::parse(&form.user_id),
        name => UserName::parse(name),
    };
    let name = match name {
        Ok(name) if valid_user_id(&form.user_id) => name.into_string(),
        Ok(_) => return Reply::refused("the request does not name a Slack user"),
        Err(err) => return Reply::refused(&err.to_string()),
    };
    let command = match parse(&form.text) {
        Ok(Command::Help) => return Reply::help(&usage),
        Ok(command) => command,
        Err(err) => return Reply::mistake(&err.0, &usage),
    };
    let env = command.environment().cloned().unwrap_or_else(|| app.default_environment.clone());
    let policy = match app.engine.grants().policy(&env) {
        Ok(policy) => policy.clone(),
        Err(err) => return Reply::mistake(&err.to_string(), &usage),
    };
    let mut by = Requester {
        owner: Owner { id: form.user_id.clone(), name, display_name: String::new() },
        groups: Vec::new(),
        interface: Interface::Slack,
        credential: Credential::Interface,
    };
    if policy.needs_groups(&by.owner.id) {
        match &slack.directory {
            Some(directory) => match directory.groups_of(&by.owner.id, policy.allowed_groups()).await {
                Ok(groups) => by.groups = groups,
                Err(err) => {
                    tracing::warn!(error = %err, "could not check Slack user-group membership");
                    return Reply::refused(&format!("could not check your Slack user groups, so nothing was done: {err}"));
                }
            },
            None => {
                tracing::warn!(environment = %env, "user_groups are configured but no SLACK_BOT_TOKEN: groups cannot be checked")
            }
        }
    }
    if let Err(err) = app.engine.grants().authorize(&env, &by).await {
        return Reply::refused(&err.to_string());
    }
    if command.is_mutating()
        && let Err(wait) = slack.limiter.check(&by.owner.id, now)
    {
        tracing::warn!(user = %by.owner.id, "Slack command rate-limited");
        return Reply::refused(&format!(
            "you have made {} changes in the last minute, the most allowed; try again in {} s",
            slack.limiter.per_minute(),
            wait.whole_seconds().max(1)
        ));
    }
    if let Command::List { .. } = command {
        return match app.engine.grants().live_grants(&Scope::Environment(env.clone()), &by).await {
            Ok(grants) => Reply::list(&env, &grants, now),
            Err(err) => failure(&err),
        };
    }
    if !slack.responder.allows(&form.response_url) {
        tracing::warn!(url = %redact_url(&form.response_url), "Slack command with a response_url outside the allowed prefixes");
        return Reply::refused("this request's response_url is not one portcullis may answer; nothing was done");
    }
    let ack = match &command {
        Command::Add { cidr, .. } => format!("Adding `{cidr}` to `{env}`"),
        Command::Remove { cidr, .. } => format!("Removing `{cidr}` from `{env}`"),
        _ => format!("Refreshing the security groups of `{env}`"),
    };
    if slack.inline {
        return run(&app.engine, command, env, by).await;
    }
    let (engine, slack_for_task, url) = (app.engine.clone(), slack.clone(), form.response_url);
    slack.spawn(async move {
        let reply = run(&engine, command, env, by).await;
        if let Err(err) = slack_for_task.responder.post(&url, &reply).await {
            tracing::warn!(error = %err, "could not post a Slack command's answer to its response_url");
        }
    });
    Reply::working(&ack)
}

/// Does a mutating command's work and says how it went.
async fn run(engine: &Engine, command: Command, env: Environment, by: Requester) -> Reply {
    match command {
        Command::Add { cidr, ttl, description, .. } => {
            let request = AddRequest { cidr, environment: env, ttl, description, source: Source::Manual, by };
            match engine.grants().add(request).await {
                Ok(o) => {
                    let failures = o.report.as_ref().map(|r| r.failures()).unwrap_or_default();
                    Reply::added(&o.grant, o.refreshed, &failures, engine.clock().now())
                }
                Err(err) => failure(&err),
            }
        }
        Command::Remove { cidr, .. } => match engine.grants().remove(&GrantKey { cidr, environment: env }, &by).await {
            Ok(o) => Reply::removed(&o.grant, &o.report.failures()),
            Err(err) => failure(&err),
        },
        Command::Refresh { .. } => match engine.grants().reconcile(Scope::Environment(env.clone()), Cause::Refresh).await {
            Ok(report) => Reply::refreshed(&env, &report),
            Err(err) => failure(&err),
        },
        Command::List { .. } | Command::Help => unreachable!("answered without a task"),
    }
}

fn failure(err: &EngineError) -> Reply {
    match err {
        EngineError::Rejected(v) => Reply::refused(&v.to_string()),
        other => {
            tracing::error!(error = %other, "Slack command failed");
            Reply::refused(&format!("portcullis could not finish: {other}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_must_decode_to_utf8() {
        assert!(strict_utf8_form(b"text=add+1.2.3.4&user_name=j%C3%B6rg").is_ok());
        assert!(strict_utf8_form(b"text=add%FF1.2.3.4").is_err(), "a lone 0xFF byte");
        assert!(strict_utf8_form(b"text=%C3").is_err(), "a cut-off sequence");
        assert!(strict_utf8_form(b"text=%G1").is_err(), "not an escape");
        assert!(strict_utf8_form(b"").is_ok());
    }

    #[test]
    fn user_ids() {
        assert!(valid_user_id("U2CERLKJA"));
        assert!(!valid_user_id(""));
        assert!(!valid_user_id("u2cerlkja"));
        assert!(!valid_user_id("U2 CERL"));
    }
}
