//! `POST /slack/interactions`: a click on a change request's Approve or Deny button.
//!
//! Signed exactly like `/slack/commands`, and checked before anything is read. The click is
//! acknowledged at once (Slack allows 3 s); the decision is the engine's (`Engine::decide`:
//! approvers, no self-approval, one conditional write), and its outcome replaces the original
//! message through the interaction's `response_url`, or, for a refusal, is told to the clicker
//! alone.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::guard::Verdict;
use portcullis_core::{Credential, Interface, Owner};
use portcullis_engine::{DecisionOutcome, Engine, Requester};
use portcullis_slack::guard::{APPROVE, APPROVE_TEMPORARY, Click, DENY, decided_message, read_click};
use portcullis_slack::redact_url;
use serde_json::{Value, json};

use super::slack::verified;
use crate::app::App;
use crate::slack::SlackEndpoint;

#[derive(serde::Deserialize)]
struct Form {
    payload: String,
}

/// An interaction's form body (`payload=<JSON>`), read into the click it carries.
pub fn read_interaction(body: &[u8]) -> Result<Click, String> {
    let form: Form = serde_urlencoded::from_bytes(body).map_err(|e| e.to_string())?;
    read_click(&form.payload).map_err(|e| e.to_string())
}

fn ephemeral(text: &str) -> Value {
    json!({"response_type": "ephemeral", "replace_original": false, "text": text})
}

pub(super) async fn interaction(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> Response {
    let slack = match verified(&app, &headers, &body).await {
        Ok(slack) => slack,
        Err(response) => return response,
    };
    let click = match read_interaction(&body) {
        Ok(click) => click,
        Err(err) => return (StatusCode::BAD_REQUEST, format!("could not read the interaction: {err}")).into_response(),
    };
    let verdict = match click.action_id.as_str() {
        APPROVE => Verdict::Approve,
        APPROVE_TEMPORARY => match app.engine.temporary_approval() {
            Some(term) => Verdict::ApproveFor(term),
            None => return axum::Json(ephemeral("guard is not configured here")).into_response(),
        },
        DENY => Verdict::Deny { reason: None },
        other => return axum::Json(ephemeral(&format!("portcullis has no action {other:?}"))).into_response(),
    };
    let by = match decider(&app.engine, &slack, &click).await {
        Ok(by) => by,
        Err(message) => return axum::Json(ephemeral(&message)).into_response(),
    };
    let url = click.response_url.clone().filter(|u| slack.responder.allows(u));
    if click.response_url.is_some() && url.is_none() {
        tracing::warn!(url = %redact_url(click.response_url.as_deref().unwrap_or_default()), "interaction with a response_url outside the allowed prefixes");
    }
    let Some(url) = url else {
        // No usable response_url: decide now, and answer in the response.
        return axum::Json(answer(&app.engine, &click.value, verdict, &by).await).into_response();
    };
    if slack.inline {
        // Lambda cannot work after it answers: decide, replace the message, then answer.
        let message = answer(&app.engine, &click.value, verdict, &by).await;
        if let Err(err) = slack.responder.post(&url, &message).await {
            tracing::warn!(error = %err, "could not post a decision to the interaction's response_url");
        }
        return axum::Json(message).into_response();
    }
    let (engine, slack_for_task, id) = (app.engine.clone(), slack.clone(), click.value.clone());
    slack.spawn(async move {
        let message = answer(&engine, &id, verdict, &by).await;
        if let Err(err) = slack_for_task.responder.post(&url, &message).await {
            tracing::warn!(error = %err, "could not post a decision to the interaction's response_url");
        }
    });
    StatusCode::OK.into_response()
}

/// The clicker, with the approver groups Slack says they are in.
async fn decider(engine: &Engine, slack: &SlackEndpoint, click: &Click) -> Result<Requester, String> {
    let name = if click.user_name.is_empty() { click.user_id.clone() } else { click.user_name.clone() };
    let mut by = Requester {
        owner: Owner { id: click.user_id.clone(), name, display_name: String::new() },
        groups: Vec::new(),
        interface: Interface::Slack,
        credential: Credential::Interface,
    };
    let groups = engine.approver_groups();
    if !groups.is_empty()
        && let Some(directory) = &slack.directory
    {
        by.groups = directory.groups_of(&click.user_id, &groups).await.map_err(|e| {
            tracing::warn!(error = %e, "could not check Slack user-group membership");
            format!("could not check your Slack user groups, so nothing was decided: {e}")
        })?;
    }
    Ok(by)
}

/// What the clicker (and, once decided, the channel) is told.
async fn answer(engine: &Engine, id: &str, verdict: Verdict, by: &Requester) -> Value {
    match engine.decide(id, verdict, by).await {
        Ok(DecisionOutcome::Decided { request, failures }) if failures.is_empty() => {
            decided_message(&request, engine.temporary_approval())
        }
        Ok(DecisionOutcome::Decided { request, failures }) => {
            let mut message = decided_message(&request, engine.temporary_approval());
            message["text"] = json!(format!(
                "{} — applying it failed: {}; the guard sweep retries",
                message["text"].as_str().unwrap_or_default(),
                failures.join("; ")
            ));
            message
        }
        Ok(DecisionOutcome::Refused(refusal)) => ephemeral(&refusal.to_string()),
        Err(err) => {
            tracing::error!(error = %err, "a Slack decision failed");
            ephemeral(&format!("portcullis could not decide: {err}"))
        }
    }
}
