//! A Slack interaction's form body (`payload=<block_actions JSON>`, fixture
//! `slack-block-actions.json`), read as `/slack/interactions` reads it.
//!
//! Beyond "never panics": a click names its user, action and value, and an approval message
//! for a request with that id carries it, unchanged, on every button.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::routes::interactions::read_interaction;
use portcullis_core::guard::{ChangeRequest, GuardedGroup};
use portcullis_core::TargetId;
use portcullis_slack::guard::approval_message;

fuzz_target!(|data: &[u8]| {
    let Ok(click) = read_interaction(data) else { return };
    assert!(!click.user_id.is_empty() && !click.action_id.is_empty() && !click.value.is_empty());
    let group = GuardedGroup { id: TargetId { region: "us-east-1".into(), group_id: "sg-1".into() }, account: "1".into(), rules: vec![] };
    let request = ChangeRequest::pending(&click.value, "e", "arn", &group, time::OffsetDateTime::UNIX_EPOCH, time::Duration::hours(1));
    let message = approval_message(&request, Some(time::Duration::hours(24)));
    let buttons = message["blocks"].as_array().and_then(|b| b.last()).and_then(|a| a["elements"].as_array()).cloned().unwrap_or_default();
    assert!(!buttons.is_empty() && buttons.iter().all(|b| b["value"] == click.value.as_str()), "{message}");
});
