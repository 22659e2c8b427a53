//! What people read: Block Kit replies to slash commands, and the IP Whitelist Manager's notification texts.

use portcullis_core::{Action, AuditEvent, Environment, Grant, Source, Timestamp, format_utc, member_instance, time_left};
use portcullis_engine::{Failure, ReconcileReport};
use serde::Serialize;
use serde_json::{Value, json};

/// Slack allows 50 blocks per message and 3,000 characters per section.
const MAX_BLOCKS: usize = 50;
const MAX_SECTION_CHARS: usize = 2_900;

/// Escapes the three characters Slack's mrkdwn gives meaning to (so a description cannot
/// ping `<!channel>` or fake a link).
pub fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Who sees a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    /// Only the person who typed the command.
    Ephemeral,
    /// Everyone in the channel.
    InChannel,
}

/// A slash-command reply (the HTTP answer or a `response_url` post).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Reply {
    pub response_type: Visibility,
    /// Plain fallback for notifications and screen readers.
    pub text: String,
    pub blocks: Vec<Value>,
}

fn section(mrkdwn: &str) -> Value {
    json!({"type": "section", "text": {"type": "mrkdwn", "text": mrkdwn}})
}

fn context(mrkdwn: &str) -> Value {
    json!({"type": "context", "elements": [{"type": "mrkdwn", "text": mrkdwn}]})
}

impl Reply {
    /// A one-section ephemeral reply.
    pub fn note(mrkdwn: impl Into<String>) -> Reply {
        let text = mrkdwn.into();
        Reply { response_type: Visibility::Ephemeral, blocks: vec![section(&text)], text }
    }

    /// A mistake in the command: the reason, then the usage.
    pub fn mistake(reason: &str, usage: &str) -> Reply {
        let text = format!(":warning: {}", escape(reason));
        Reply {
            response_type: Visibility::Ephemeral,
            blocks: vec![section(&text), section(&format!("```{}```", escape(usage)))],
            text,
        }
    }

    pub fn help(usage: &str) -> Reply {
        let text = "Time-boxed access to the managed security groups.".to_string();
        Reply {
            response_type: Visibility::Ephemeral,
            blocks: vec![section(&text), section(&format!("```{}```", escape(usage)))],
            text,
        }
    }

    /// A refusal or failure, said plainly.
    pub fn refused(reason: &str) -> Reply {
        Reply::note(format!(":no_entry: {}", escape(reason)))
    }

    /// The acknowledgement sent at once while the work goes on.
    pub fn working(what: &str) -> Reply {
        Reply::note(format!(":hourglass_flowing_sand: {what}…"))
    }

    /// `list`: one line per live grant — address, owner, description, time left.
    pub fn list(env: &Environment, grants: &[Grant], now: Timestamp) -> Reply {
        let live: Vec<&Grant> = grants.iter().filter(|g| g.is_live(now)).collect();
        let title = match live.len() {
            0 => format!("No live entries in `{env}`."),
            1 => format!("*1 live entry in `{env}`*"),
            n => format!("*{n} live entries in `{env}`*"),
        };
        let mut blocks = vec![section(&title)];
        let mut chunk = String::new();
        let mut shown = 0;
        for g in &live {
            let expiry = g.expires_at.map(|t| time_left(t, now)).unwrap_or_else(|| "no expiry".into());
            let mut line = match member_instance(g) {
                Some(instance) => format!("• `{}`  member of `{}`, `{instance}`  {expiry}", g.cidr, escape(&g.owner.name)),
                None => format!("• `{}`  @{}  {expiry}", g.cidr, escape(&g.owner.name)),
            };
            if g.source != Source::AsgMember && !g.description.as_str().is_empty() {
                line.push_str(&format!("  _{}_", escape(g.description.as_str())));
            }
            if chunk.len() + line.len() + 1 > MAX_SECTION_CHARS {
                if blocks.len() + 2 >= MAX_BLOCKS {
                    break;
                }
                blocks.push(section(&std::mem::take(&mut chunk)));
            }
            if !chunk.is_empty() {
                chunk.push('\n');
            }
            chunk.push_str(&line);
            shown += 1;
        }
        if !chunk.is_empty() {
            blocks.push(section(&chunk));
        }
        if shown < live.len() {
            blocks.push(context(&format!("…and {} more; `portcullis list --env {env}` shows them all.", live.len() - shown)));
        }
        Reply { response_type: Visibility::Ephemeral, text: title.replace('*', ""), blocks }
    }

    /// The final answer to an `add`.
    pub fn added(grant: &Grant, refreshed: bool, failures: &[Failure], now: Timestamp) -> Reply {
        let verb = if refreshed { "refreshed in" } else { "added to" };
        let until = grant.expires_at.map(|t| format!(" until {} ({})", format_utc(t), time_left(t, now))).unwrap_or_default();
        Reply::outcome(format!(":white_check_mark: `{}` {verb} `{}`{until}.", grant.cidr, grant.environment), failures)
    }

    /// The final answer to a `remove`.
    pub fn removed(grant: &Grant, failures: &[Failure]) -> Reply {
        Reply::outcome(format!(":wastebasket: `{}` removed from `{}`.", grant.cidr, grant.environment), failures)
    }

    /// The final answer to a `refresh`.
    pub fn refreshed(env: &Environment, report: &ReconcileReport) -> Reply {
        Reply::outcome(
            format!(
                ":arrows_counterclockwise: `{env}` refreshed: {} groups, {} rules authorized, {} revoked, {} updated, \
                 {} unchanged, {} not ours left alone.",
                report.targets, report.authorized, report.revoked, report.updated, report.unchanged, report.unowned_left_alone
            ),
            &report.failures(),
        )
    }

    fn outcome(headline: String, failures: &[Failure]) -> Reply {
        let mut blocks = vec![section(&headline)];
        if !failures.is_empty() {
            let lines: Vec<String> = failures.iter().take(20).map(|f| format!("• {}", escape(&f.to_string()))).collect();
            blocks.push(section(&format!(
                ":warning: Some security groups could not be updated; the change is stored and will be retried:\n{}",
                lines.join("\n")
            )));
        }
        Reply { response_type: Visibility::Ephemeral, text: headline, blocks }
    }
}

/// The notification for an audit event, in the IP Whitelist Manager's words; `None` for events that are not
/// announced.
pub fn notification(event: &AuditEvent) -> Option<String> {
    let env = escape(&event.environment.to_string());
    let cidr = event.cidr_label();
    let mut lines = Vec::new();
    let described = |lines: &mut Vec<String>, g: &Grant| {
        lines.push(format!("Added by: @{}", escape(&g.owner.name)));
        if !g.description.as_str().is_empty() {
            lines.push(format!("Description: {}", escape(g.description.as_str())));
        }
    };
    match event.action {
        Action::Added => {
            let g = event.after.as_ref()?;
            lines.push(":white_check_mark: IP Whitelist Update".into());
            lines.push(format!("IP `{cidr}` added to `{env}` whitelist."));
            described(&mut lines, g);
            if let Some(at) = g.expires_at {
                lines.push(format!("Expires at: {}", format_utc(at)));
            }
        }
        Action::Removed => {
            let g = event.before.as_ref()?;
            lines.push(":wastebasket: IP Whitelist Update".into());
            lines.push(format!("IP `{cidr}` removed from `{env}` whitelist."));
            if event.interface == portcullis_core::Interface::Stream {
                lines.push("Removed outside portcullis (deleted from the table).".into());
            } else {
                lines.push(format!("Removed by: @{}", escape(event.actor.as_str())));
            }
            described(&mut lines, g);
        }
        Action::Expired if event.request.is_some() => {
            lines.push(":hourglass: Guard: a temporary approval ended; its timed rule was revoked".into());
            lines.extend(event.reason.split('\n').map(escape));
        }
        Action::Expired => {
            let g = event.before.as_ref()?;
            lines.push(":hourglass: IP Whitelist Update".into());
            lines.push(format!("IP `{cidr}` expired from `{env}` whitelist."));
            described(&mut lines, g);
            lines.push(format!("Expired at: {}", format_utc(g.expires_at.unwrap_or(event.at))));
        }
        Action::DriftRepaired => {
            lines.push(":wrench: IP Whitelist Update".into());
            lines.push(format!("Security groups of `{env}` were repaired to match the whitelist."));
            lines.extend(event.reason.split("; ").map(escape));
        }
        Action::ChangeReverted
        | Action::ChangeApproved
        | Action::ChangeDenied
        | Action::ChangeExpired
        | Action::ChangeApplied
        | Action::ChangeFailed
        | Action::BreakGlass => {
            let headline = match event.action {
                Action::ChangeReverted => ":shield: Guard: a change was reverted, pending approval",
                Action::ChangeApproved => ":ballot_box_with_check: Guard: a change was approved; applying it",
                Action::ChangeApplied => ":white_check_mark: Guard: an approved change was applied",
                Action::ChangeFailed => ":x: Guard: applying an approved change failed; the guard sweep retries",
                Action::BreakGlass => ":rotating_light: Guard: BREAK-GLASS: a requester applied their own change for a time",
                Action::ChangeDenied => ":no_entry: Guard: a change was denied; the revert stays",
                _ => ":hourglass: Guard: a change request expired undecided; the revert stays",
            };
            lines.push(headline.into());
            lines.extend(event.reason.split('\n').map(escape));
        }
        Action::ChangeRequested
        | Action::ChangeReported
        | Action::BaselineRecorded
        | Action::Refreshed
        | Action::Refused
        | Action::Approved
        | Action::Denied
        | Action::Adopted
        | Action::TokenCreated
        | Action::TokenRevoked
        | Action::LifecycleCompleted => return None,
    }
    Some(lines.join("\n"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use portcullis_core::{Cidr, Description, Interface, Owner, Source};
    use time::macros::datetime;

    pub(crate) fn grant(description: &str) -> Grant {
        Grant {
            cidr: Cidr::parse("1.2.3.4").unwrap(),
            environment: Environment::parse("dev").unwrap(),
            owner: Owner { id: "U01234567".into(), name: "john.doe".into(), display_name: "John Doe".into() },
            source: Source::Manual,
            description: Description::parse(description).unwrap(),
            created_at: datetime!(2025-01-10 12:00:00 UTC),
            expires_at: Some(datetime!(2025-01-17 12:00:00 UTC)),
        }
    }

    pub(crate) fn event(action: Action, before: Option<Grant>, after: Option<Grant>) -> AuditEvent {
        AuditEvent {
            id: 1,
            at: datetime!(2025-01-17 12:00:00.4 UTC),
            actor: "portcullis".into(),
            interface: Interface::Sweeper,
            action,
            environment: portcullis_core::Environment::parse("dev").unwrap().into(),
            cidr: Some(portcullis_core::Cidr::parse("1.2.3.4/32").unwrap()),
            before,
            after,
            reason: String::new(),
            request: None,
        }
    }

    #[test]
    fn expiry_text_is_the_seeds() {
        // ../shared/fixtures/README.md, with its `/` line marks as line breaks.
        let expected = ":hourglass: IP Whitelist Update / IP `1.2.3.4/32` expired from `dev` whitelist. / Added by: @john.doe / Description: Home office / Expired at: 2025-01-17 12:00:00 UTC";
        let text = notification(&event(Action::Expired, Some(grant("Home office")), None)).unwrap();
        assert_eq!(text, expected.replace(" / ", "\n"));
    }

    #[test]
    fn added_and_removed() {
        let added = notification(&event(Action::Added, None, Some(grant("<!channel> & co")))).unwrap();
        assert!(added.starts_with(":white_check_mark: IP Whitelist Update\nIP `1.2.3.4/32` added to `dev` whitelist."));
        assert!(added.contains("Description: &lt;!channel&gt; &amp; co"));
        assert!(added.ends_with("Expires at: 2025-01-17 12:00:00 UTC"));
        let mut removed = event(Action::Removed, Some(grant("")), None);
        removed.actor = "jane".into();
        let text = notification(&removed).unwrap();
        assert!(
            text.starts_with(
                ":wastebasket: IP Whitelist Update\nIP `1.2.3.4/32` removed from `dev` whitelist.\nRemoved by: @jane"
            )
        );
        assert!(!text.contains("Description"));
        assert_eq!(notification(&event(Action::Refreshed, None, Some(grant("")))), None);
    }

    #[test]
    fn list_shows_live_entries_only() {
        let now = datetime!(2025-01-10 12:01:00 UTC);
        let mut old = grant("gone");
        old.cidr = Cidr::parse("5.6.7.8").unwrap();
        old.expires_at = Some(now);
        let reply = Reply::list(&Environment::parse("dev").unwrap(), &[grant("Home office"), old], now);
        let body = serde_json::to_string(&reply).unwrap();
        assert!(body.contains("1.2.3.4/32"), "{body}");
        assert!(body.contains("expires in 6d 23h"), "{body}");
        assert!(body.contains("@john.doe") && body.contains("Home office"));
        assert!(!body.contains("5.6.7.8"));
        assert_eq!(reply.response_type, Visibility::Ephemeral);
    }

    #[test]
    fn list_names_a_member_grant_s_asg_and_instance() {
        let now = datetime!(2025-01-10 12:01:00 UTC);
        let mut member = grant("web member i-0abc");
        member.source = Source::AsgMember;
        member.owner = portcullis_core::Owner::named("asg:us-east-1/web");
        let reply = Reply::list(&Environment::parse("dev").unwrap(), &[member], now);
        let body = serde_json::to_string(&reply).unwrap();
        assert!(body.contains("member of `asg:us-east-1/web`, `i-0abc`"), "{body}");
        assert!(!body.contains("@asg"), "{body}");
    }

    #[test]
    fn long_lists_stay_within_slacks_limits() {
        let now = datetime!(2025-01-10 12:01:00 UTC);
        let grants: Vec<Grant> = (0..3000u32)
            .map(|i| {
                let mut g = grant(&"x".repeat(150));
                g.cidr = Cidr::parse(&format!("10.{}.{}.0/24", i / 256, i % 256)).unwrap();
                g
            })
            .collect();
        let reply = Reply::list(&Environment::parse("dev").unwrap(), &grants, now);
        assert!(reply.blocks.len() <= MAX_BLOCKS);
        for b in &reply.blocks {
            let text = b["text"]["text"].as_str().or(b["elements"][0]["text"].as_str()).unwrap();
            assert!(text.len() <= 3000);
        }
        assert!(serde_json::to_string(&reply).unwrap().contains("more; `portcullis list --env dev`"));
    }
}
