//! `POST /slack/interactions`: a click on a change request's Approve or Deny button.
//!
//! Signed exactly like `/slack/commands`, and checked before anything is read. The click is
//! acknowledged at once (Slack allows 3 s); the decision is the engine's (`Engine::decide`:
//! approvers, no self-approval, one conditional write), and its outcome replaces the original
//! message through the interaction's `response_url`, or, for a refusal, is told to the clicker
//! alone. The message says "applied" only once the change is on the group: under Lambda the
//! decision is written at once and its apply handed to another invocation, which replaces the
//! message again when it is done.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use portcullis_core::guard::{ChangeRequest, RequestStatus, Verdict};
use portcullis_core::{Credential, Interface, Owner};
use portcullis_engine::{Apply, DecisionOutcome, Engine, Failure, Requester};
use portcullis_slack::guard::{APPROVE, APPROVE_TEMPORARY, BREAK_GLASS, Click, DENY, decided_message, read_click};
use portcullis_slack::redact_url;
use serde_json::{Value, json};

use super::slack::verified;
use crate::app::App;
use crate::slack::{DeferredApply, SlackEndpoint};

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
        APPROVE_TEMPORARY => match app.engine.guarding().map(|g| g.temporary_approval()) {
            Some(term) => Verdict::ApproveFor(term),
            None => return axum::Json(ephemeral("guard is not configured here")).into_response(),
        },
        BREAK_GLASS => match app.engine.guarding().and_then(|g| g.break_glass_ttl()) {
            Some(term) => Verdict::BreakGlass { reason: "the requester's Break-glass button in Slack".into(), term },
            None => return axum::Json(ephemeral("break-glass is off here")).into_response(),
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
        return axum::Json(answer(&app.engine, &click.value, verdict, &by, Apply::Now).await.0).into_response();
    };
    if slack.inline {
        // Lambda cannot work after it answers: decide (one store write), replace the message,
        // then answer; the apply, which waits on EC2, goes to another invocation when it can.
        let apply = if slack.deferred.is_some() { Apply::Later } else { Apply::Now };
        let (mut message, decided) = answer(&app.engine, &click.value, verdict, &by, apply).await;
        if let (Some(defer), Some(request)) = (&slack.deferred, decided.filter(|r| r.status == RequestStatus::Approved)) {
            let job = DeferredApply { request: request.id.clone(), response_url: Some(url.clone()) };
            if let Err(err) = defer.defer(&job).await {
                tracing::warn!(request = %request.id, error = %err, "could not hand the apply to another invocation; the guard sweep applies it");
                message["text"] =
                    json!(format!("{} — the guard sweep applies it ({err})", message["text"].as_str().unwrap_or_default()));
            }
        }
        if let Err(err) = slack.responder.post(&url, &message).await {
            tracing::warn!(error = %err, "could not post a decision to the interaction's response_url");
        }
        return axum::Json(message).into_response();
    }
    let (engine, slack_for_task, id) = (app.engine.clone(), slack.clone(), click.value.clone());
    slack.spawn(async move {
        let (message, _) = answer(&engine, &id, verdict, &by, Apply::Now).await;
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
    let groups = engine.guarding().map(|g| g.approver_groups()).unwrap_or_default();
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

/// What the clicker (and, once decided, the channel) is told, and the request as decided.
async fn answer(engine: &Engine, id: &str, verdict: Verdict, by: &Requester, apply: Apply) -> (Value, Option<ChangeRequest>) {
    let decided = match engine.guard() {
        Ok(guard) => guard.decide(id, verdict, by, apply).await,
        Err(e) => Err(e),
    };
    match decided {
        Ok(DecisionOutcome::Decided { request, failures }) => (outcome_message(engine, &request, &failures), Some(*request)),
        Ok(DecisionOutcome::Refused(refusal)) => (ephemeral(&refusal.to_string()), None),
        Err(err) => {
            tracing::error!(error = %err, "a Slack decision failed");
            (ephemeral(&format!("portcullis could not decide: {err}")), None)
        }
    }
}

/// The message that replaces the approval message: the request as it stands now (applied,
/// failed, or still being applied), and what failed.
pub fn outcome_message(engine: &Engine, request: &ChangeRequest, failures: &[Failure]) -> Value {
    let mut message = decided_message(
        request,
        engine.guarding().map(|g| g.temporary_approval()),
        engine.guarding().and_then(|g| g.break_glass_ttl()),
    );
    if !failures.is_empty() {
        message["text"] = json!(format!(
            "{} — applying it failed: {}; the guard sweep retries",
            message["text"].as_str().unwrap_or_default(),
            Failure::joined(failures)
        ));
    }
    message
}
