//! Guard's Slack: the approval message with its buttons, the message that replaces it once
//! decided, the `block_actions` payload a click sends, and the notifier that routes guard's
//! messages to the approval and monitoring channels.

use async_trait::async_trait;
use portcullis_core::guard::{ChangeRequest, RequestStatus};
use portcullis_core::{Action, AuditEvent, format_utc};
use portcullis_engine::{Notifier, NotifyError};
use serde_json::{Value, json};

use crate::messages::escape;
use crate::{Webhook, notification};

/// The buttons' `action_id`s.
pub const APPROVE: &str = "approve";
/// "Approve for 24 h": the addition becomes a timed rule for the configured term.
pub const APPROVE_TEMPORARY: &str = "approve_temporary";
pub const DENY: &str = "deny";
/// "Break glass": the requester applies their own addition at once, for a time.
pub const BREAK_GLASS: &str = "break_glass";

fn requester(r: &ChangeRequest) -> String {
    match &r.requester_user {
        Some(user) => format!("<@{}> (`{}`)", escape(user), escape(&r.requester)),
        None => format!("`{}`", escape(&r.requester)),
    }
}

fn rules_text(r: &ChangeRequest) -> String {
    let mut lines: Vec<String> = r.add.iter().map(|rule| format!("• add: {}", escape(&rule.to_string()))).collect();
    lines.extend(r.remove.iter().map(|rule| format!("• remove: {}", escape(&rule.to_string()))));
    lines.join("\n")
}

fn summary(r: &ChangeRequest) -> Value {
    json!({"type": "section", "fields": [
        {"type": "mrkdwn", "text": format!("*Request*\n`{}`", escape(&r.id))},
        {"type": "mrkdwn", "text": format!("*Requester*\n{}", requester(r))},
        {"type": "mrkdwn", "text": format!("*Group*\n`{}`", escape(&r.group_id))},
        {"type": "mrkdwn", "text": format!("*Account / region*\n{} / {}", escape(&r.account), escape(&r.region))},
    ]})
}

/// A term as a button says it: `24 h`, `7 d`, `90 min`.
fn term_label(term: time::Duration) -> String {
    let s = term.whole_seconds();
    match s {
        _ if s >= 2 * 86_400 && s % 86_400 == 0 => format!("{} d", s / 86_400),
        _ if s >= 3_600 && s % 3_600 == 0 => format!("{} h", s / 3_600),
        _ => format!("{} min", (s / 60).max(1)),
    }
}

/// The decision buttons, each carrying the request id; "Approve for …" only for an addition
/// (`temporary` is the configured term), and "Break glass" for its requester when break-glass
/// is on (`break_glass` is its longest term).
fn buttons(r: &ChangeRequest, temporary: Option<time::Duration>, break_glass: Option<time::Duration>) -> Value {
    let addition = r.remove.is_empty() && !r.add.is_empty();
    let mut elements = vec![
        json!({"type": "button", "action_id": APPROVE, "text": {"type": "plain_text", "text": "Approve"}, "style": "primary", "value": r.id}),
    ];
    if let Some(term) = temporary.filter(|_| addition) {
        let text = format!("Approve for {}", term_label(term));
        elements.push(json!({"type": "button", "action_id": APPROVE_TEMPORARY, "text": {"type": "plain_text", "text": text}, "value": r.id}));
    }
    elements.push(json!({"type": "button", "action_id": DENY, "text": {"type": "plain_text", "text": "Deny"}, "style": "danger", "value": r.id}));
    if let Some(term) = break_glass.filter(|_| addition && r.requester_user.is_some()) {
        let confirm = json!({
            "title": {"type": "plain_text", "text": "Break glass?"},
            "text": {"type": "mrkdwn", "text": format!("Your own change goes on at once for {}; every approver is told. Only the requester may do this.", term_label(term))},
            "confirm": {"type": "plain_text", "text": "Break glass"},
            "deny": {"type": "plain_text", "text": "Cancel"},
        });
        let text = format!("Break glass ({}, requester only)", term_label(term));
        elements.push(json!({"type": "button", "action_id": BREAK_GLASS, "text": {"type": "plain_text", "text": text}, "value": r.id, "confirm": confirm}));
    }
    json!({"type": "actions", "block_id": "decision", "elements": elements})
}

/// The approval channel's message for a pending request: what changed, who made it, and the
/// buttons (each carrying the request id).
pub fn approval_message(r: &ChangeRequest, temporary: Option<time::Duration>, break_glass: Option<time::Duration>) -> Value {
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": ":shield: *An out-of-band change was reverted and awaits approval*"}}),
        summary(r),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": rules_text(r)}}),
    ];
    if !r.notes.is_empty() {
        let notes = r.notes.iter().map(|n| format!(":warning: {}", escape(n))).collect::<Vec<_>>().join("\n");
        blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": notes}]}));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": format!("Expires undecided at {}", format_utc(r.expires_at))}]}));
    blocks.push(buttons(r, temporary, break_glass));
    json!({"text": format!("Change request {} on {}: approval needed", r.id, r.group_id), "blocks": blocks})
}

/// What replaces the approval message once a click has decided (or advanced) the request.
pub fn decided_message(r: &ChangeRequest, temporary: Option<time::Duration>, break_glass: Option<time::Duration>) -> Value {
    let who = |names: &[String]| names.iter().map(|n| format!("<@{}>", escape(n))).collect::<Vec<_>>().join(", ");
    let headline = match r.status {
        RequestStatus::Approved | RequestStatus::Applied | RequestStatus::Failed if r.break_glass.is_some() => format!(
            ":rotating_light: *Break-glass* by {}: {} ({})",
            who(&r.approvals),
            escape(&r.term_in_words().unwrap_or_default()),
            escape(r.break_glass.as_deref().unwrap_or_default())
        ),
        RequestStatus::Approved | RequestStatus::Applied | RequestStatus::Failed if r.temporary.is_some() => {
            let state = match r.status {
                RequestStatus::Applied => "",
                RequestStatus::Failed => "; putting it on FAILED, the guard sweep retries",
                _ => "; putting it on",
            };
            format!(
                ":white_check_mark: *Approved for a time* by {}: {}{state}",
                who(&r.approvals),
                escape(&r.term_in_words().unwrap_or_default())
            )
        }
        RequestStatus::Approved => format!(":ballot_box_with_check: *Approved* by {}; applying it", who(&r.approvals)),
        RequestStatus::Applied => format!(":white_check_mark: *Approved* by {} and applied", who(&r.approvals)),
        RequestStatus::Failed => format!(
            ":x: *Approved* by {}, but applying it failed ({}); the guard sweep retries",
            who(&r.approvals),
            escape(r.failure.as_deref().unwrap_or("unknown error"))
        ),
        RequestStatus::Denied => format!(
            ":no_entry: *Denied* by {}{}; the revert stays",
            who(r.denied_by.as_slice()),
            r.reason.as_ref().map(|x| format!(" ({})", escape(x))).unwrap_or_default()
        ),
        RequestStatus::Expired => ":hourglass: *Expired* undecided; the revert stays".to_string(),
        RequestStatus::Pending => {
            format!(":ballot_box_with_check: Approved by {}; waiting for another approver", who(&r.approvals))
        }
    };
    let mut blocks = vec![
        json!({"type": "section", "text": {"type": "mrkdwn", "text": headline}}),
        summary(r),
        json!({"type": "section", "text": {"type": "mrkdwn", "text": rules_text(r)}}),
    ];
    if r.status == RequestStatus::Pending {
        blocks.push(buttons(r, temporary, break_glass));
    }
    json!({"replace_original": true, "text": format!("Change request {}: {}", r.id, r.status.as_str()), "blocks": blocks})
}

/// One button click, as `block_actions` sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    pub user_id: String,
    pub user_name: String,
    pub action_id: String,
    /// The request id the button carries.
    pub value: String,
    pub response_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid interaction payload: {0}")]
pub struct InteractionError(pub String);

/// Reads a `block_actions` payload (the `payload` form field's JSON).
pub fn read_click(payload: &str) -> Result<Click, InteractionError> {
    let bad = |m: &str| InteractionError(m.to_string());
    let v: Value = serde_json::from_str(payload).map_err(|e| InteractionError(format!("not JSON: {e}")))?;
    if v.get("type").and_then(Value::as_str) != Some("block_actions") {
        return Err(bad("only block_actions payloads are handled"));
    }
    let text = |p: &str| v.pointer(p).and_then(Value::as_str).filter(|s| !s.is_empty());
    let action = v.pointer("/actions/0").ok_or_else(|| bad("no action"))?;
    let field = |k: &str| action.get(k).and_then(Value::as_str).filter(|s| !s.is_empty());
    Ok(Click {
        user_id: text("/user/id").ok_or_else(|| bad("no user id"))?.to_string(),
        user_name: text("/user/username").or(text("/user/name")).unwrap_or_default().to_string(),
        action_id: field("action_id").ok_or_else(|| bad("the action has no action_id"))?.to_string(),
        value: field("value").ok_or_else(|| bad("the action has no value"))?.to_string(),
        response_url: text("/response_url").map(str::to_string),
    })
}

/// Routes announcements: a new change request's approval message to the approval channel,
/// guard's notices to the monitoring channel, everything else to the main webhook. A channel
/// not configured falls back to the main one.
pub struct Channels {
    pub main: Option<Webhook>,
    pub approval: Option<Webhook>,
    pub monitoring: Option<Webhook>,
    /// The term "Approve for …" grants; none: no such button.
    pub temporary: Option<time::Duration>,
    /// The longest break-glass; none: break-glass is off, no such button.
    pub break_glass: Option<time::Duration>,
}

impl Channels {
    fn pick<'a>(&'a self, own: &'a Option<Webhook>) -> Option<&'a Webhook> {
        own.as_ref().or(self.main.as_ref())
    }
}

#[async_trait]
impl Notifier for Channels {
    async fn announce(&self, event: &AuditEvent) -> Result<(), NotifyError> {
        let (hook, body) = match (event.action, &event.request) {
            (Action::ChangeRequested, Some(request)) => {
                (self.pick(&self.approval), approval_message(request, self.temporary, self.break_glass))
            }
            (Action::BreakGlass, _) => {
                // Every approver is told (the approval channel), and the monitoring channel too.
                let Some(text) = notification(event) else { return Ok(()) };
                let body = json!({"text": text});
                let (approvers, monitoring) = (self.pick(&self.approval), self.pick(&self.monitoring));
                if let (Some(a), Some(m)) = (approvers, monitoring)
                    && !std::ptr::eq(a, m)
                {
                    a.send(&body).await?;
                }
                (monitoring.or(approvers), body)
            }
            (
                Action::ChangeReverted
                | Action::ChangeApproved
                | Action::ChangeDenied
                | Action::ChangeExpired
                | Action::ChangeApplied
                | Action::ChangeFailed,
                _,
            )
            | (Action::Expired, Some(_)) => {
                let Some(text) = notification(event) else { return Ok(()) };
                (self.pick(&self.monitoring), json!({"text": text}))
            }
            _ => {
                let Some(text) = notification(event) else { return Ok(()) };
                (self.main.as_ref(), json!({"text": text}))
            }
        };
        match hook {
            Some(hook) => hook.send(&body).await,
            None => {
                tracing::info!(action = event.action.as_str(), "no webhook for this announcement; logged only");
                Ok(())
            }
        }
    }

    fn min_interval(&self) -> time::Duration {
        time::Duration::seconds(1)
    }
}

#[cfg(test)]
mod tests {
    use portcullis_core::guard::{GuardRule, GuardedGroup, RuleSource};
    use time::macros::datetime;

    use super::*;

    fn request() -> ChangeRequest {
        let group = GuardedGroup {
            id: portcullis_core::TargetId { region: "us-east-1".into(), group_id: "sg-1".into() },
            account: "123456789012".into(),
            rules: vec![],
        };
        let at = datetime!(2026-12-03 12:00 UTC);
        let mut r =
            ChangeRequest::pending("r-1", "e", "arn:aws:iam::123456789012:user/alice", &group, at, time::Duration::days(1));
        r.requester_user = Some("U0ALICE".into());
        r.add = vec![GuardRule::new("tcp", Some(22), Some(22), RuleSource::Ipv4("203.0.113.0/24".into()), Some("<!channel>"))];
        r
    }

    fn actions(m: &Value) -> Vec<(String, String, String)> {
        let elements = m["blocks"].as_array().unwrap().last().unwrap()["elements"].as_array().unwrap().clone();
        let text = |a: &Value, k: &str| a.pointer(k).and_then(Value::as_str).unwrap_or_default().to_string();
        elements.iter().map(|a| (text(a, "/action_id"), text(a, "/value"), text(a, "/text/text"))).collect()
    }

    #[test]
    fn only_an_addition_offers_approve_for_a_time() {
        let day = Some(time::Duration::hours(24));
        let ids = |m: &Value| actions(m).into_iter().map(|(a, v, t)| format!("{a}={v}:{t}")).collect::<Vec<_>>();
        assert_eq!(
            ids(&approval_message(&request(), day, None)),
            ["approve=r-1:Approve", "approve_temporary=r-1:Approve for 24 h", "deny=r-1:Deny"]
        );
        assert_eq!(actions(&approval_message(&request(), Some(time::Duration::days(7)), None))[1].2, "Approve for 7 d");
        let mut removal = request();
        removal.remove = std::mem::take(&mut removal.add);
        assert_eq!(ids(&approval_message(&removal, day, None)), ["approve=r-1:Approve", "deny=r-1:Deny"]);
        assert_eq!(actions(&approval_message(&request(), None, None)).len(), 2, "no term configured: no button");
    }

    #[test]
    fn a_temporary_approval_says_until_when() {
        let mut r = request();
        r.status = RequestStatus::Approved;
        r.approvals = vec!["U0BOB".into()];
        r.temporary = Some(portcullis_core::guard::Temporary {
            seconds: 3600,
            until: Some(datetime!(2026-12-03 13:00 UTC)),
            ended_at: None,
        });
        let m = decided_message(&r, None, None).to_string();
        assert!(m.contains("Approved for a time* by <@U0BOB>: a timed rule until 2026-12-03 13:00:00 UTC"), "{m}");
    }

    #[test]
    fn the_approval_message_names_the_change_and_its_buttons_carry_the_request_id() {
        let m = approval_message(&request(), None, None);
        let body = m.to_string();
        assert!(body.contains("sg-1") && body.contains("tcp 22 from 203.0.113.0/24") && body.contains("<@U0ALICE>"), "{body}");
        assert!(!body.contains("<!channel>"), "descriptions are escaped");
        let actions = m["blocks"].as_array().unwrap().last().unwrap()["elements"].as_array().unwrap().clone();
        assert_eq!(
            actions.iter().map(|a| (a["action_id"].as_str().unwrap(), a["value"].as_str().unwrap())).collect::<Vec<_>>(),
            [(APPROVE, "r-1"), (DENY, "r-1")]
        );
    }

    #[test]
    fn a_decided_message_replaces_the_original_and_names_who_decided() {
        let mut r = request();
        r.status = RequestStatus::Approved;
        r.approvals = vec!["U0BOB".into()];
        let m = decided_message(&r, Some(time::Duration::hours(24)), None);
        assert_eq!(m["replace_original"], true);
        assert!(m.to_string().contains("Approved* by <@U0BOB>; applying it"), "approved is not applied yet: {m}");
        assert!(!m.to_string().contains("\"actions\""), "no buttons once decided");
        r.status = RequestStatus::Applied;
        assert!(decided_message(&r, None, None).to_string().contains("Approved* by <@U0BOB> and applied"));
        r.status = RequestStatus::Failed;
        r.failure = Some("UnauthorizedOperation".into());
        let failed = decided_message(&r, None, None).to_string();
        assert!(failed.contains("applying it failed (UnauthorizedOperation)"), "{failed}");
    }

    #[test]
    fn only_a_known_requester_s_addition_offers_break_glass_and_asks_to_confirm() {
        let four = Some(time::Duration::hours(4));
        let m = approval_message(&request(), None, four);
        let last = &actions(&m)[2];
        assert_eq!((last.0.as_str(), last.2.as_str()), (BREAK_GLASS, "Break glass (4 h, requester only)"));
        assert!(m.to_string().contains("\"confirm\""), "{m}");
        let mut unknown = request();
        unknown.requester_user = None;
        assert_eq!(actions(&approval_message(&unknown, None, four)).len(), 2, "nobody could use it");
        assert_eq!(actions(&approval_message(&request(), None, None)).len(), 2, "off");
    }

    #[test]
    fn the_fixture_reads_as_a_click() {
        let path = format!("{}/../../fixtures/slack-block-actions.json", env!("CARGO_MANIFEST_DIR"));
        let click = read_click(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert_eq!(
            (click.user_id.as_str(), click.action_id.as_str(), click.value.as_str()),
            ("U0APPROVER1", "approve", "REQUEST-ID")
        );
        assert!(click.response_url.unwrap().starts_with("https://hooks.slack.com/actions/"));
        assert!(read_click("{\"type\": \"view_submission\"}").is_err());
        assert!(read_click("not json").is_err());
    }
}
