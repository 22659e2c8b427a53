//! The fuzz targets' harnesses (`fuzz/fuzz_targets/*.rs` are one-line wrappers around these),
//! compiled with the workspace so a harness cannot stop compiling unnoticed, and replayed on
//! their seed corpora by an ordinary test (`tests/it/fuzz_corpora.rs`), so CI runs every seed
//! on stable Rust. Each harness says what it checks beyond "never panics".
//!
//! Behind the `fuzzing` feature: none of this is in the binary.

mod corpus;
mod lambda;

use std::collections::BTreeMap;
use std::sync::OnceLock;

use portcullis_aws::iam::{IamLogin, IamVerifier, SERVER_ID_HEADER};
use portcullis_core::guard::{Backing, ChangeRequest, GuardedGroup, revert};
use portcullis_core::{Cidr, Description, Environment, ExternalKind, Marker, PortSet, TargetId, Timestamp, Ttl, UserName};
use portcullis_slack::{Command, guard::approval_message, parse};
use portcullis_store::ip_whitelist::{from_item, item_from_json, key_item, removal, to_item};
use serde_json::Value;

use crate::auth::{IAM_SCHEME, decode_iam_login};
use crate::config::{Config, Overrides};
use crate::events::{AwsEvent, read};
use crate::lambda::stream_record as read_stream_record;
use crate::routes::interactions::read_interaction;
use crate::routes::slack::read_form;

pub use corpus::{Input, corpus};
pub use lambda::lambda_event;

/// A harness: one input, checked; a failed check panics, as libFuzzer expects.
pub type Harness = fn(&[u8]);

/// Every target by name, as `fuzz/Cargo.toml` names its binaries.
pub const TARGETS: [(&str, Harness); 9] = [
    ("slack_command", slack_command),
    ("lambda_event", lambda_event),
    ("stream_record", stream_record),
    ("iam_header", iam_header),
    ("seed_item", seed_item),
    ("config_toml", config_toml),
    ("cidr_ttl", cidr_ttl),
    ("cloudtrail_event", cloudtrail_event),
    ("slack_interaction", slack_interaction),
];

/// Addresses and durations as users type them (`1.2.3.4`, `2001:db8::/64`, `7d`, `90`): what
/// parses displays as text that parses to the same value, and a TTL survives the serde round
/// trip the stores use.
pub fn cidr_ttl(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cidr) = Cidr::parse(text) {
        assert_eq!(Cidr::parse(&cidr.to_string()).as_ref(), Ok(&cidr), "{text:?} → {cidr}");
        assert!(cidr.net().trunc() == cidr.net(), "{text:?} → {cidr} has host bits set");
    }
    for ttl in [Ttl::parse(text), Ttl::parse_or_seconds(text)].into_iter().flatten() {
        let json = serde_json::to_string(&ttl).expect("a TTL serialises");
        let back: Ttl = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{text:?} → {json} does not read back: {e}"));
        assert_eq!(back, ttl);
        assert_eq!(Ttl::from_seconds(u64::from(ttl.seconds())).as_ref(), Ok(&ttl));
    }
    if let Ok(ttl) = Ttl::parse(text) {
        assert_eq!(Ttl::parse(&ttl.to_string()).as_ref(), Ok(&ttl), "{text:?} → {ttl}");
    }
    if let Ok(d) = Description::parse(text) {
        assert_eq!(Description::parse(d.as_str()).as_ref(), Ok(&d), "{text:?}: a description parses to itself");
    }
    if let Ok(e) = Environment::parse(text) {
        assert_eq!(Environment::parse(e.as_str()).as_ref(), Ok(&e));
    }
    if let Ok(u) = UserName::parse(text) {
        assert_eq!(UserName::parse(u.as_str()).as_ref(), Ok(&u));
    }
    if let Ok(ports) = PortSet::parse(text) {
        assert_eq!(PortSet::parse(&ports.to_string()).as_ref(), Ok(&ports), "{text:?} → {ports}");
    }
}

/// A CloudTrail API-call event as EventBridge delivers it, read by `events::read` as `invoke`,
/// the Lambda and `POST /v1/events` read it, then undone by `core::guard::revert`: a rule
/// change names its event and group; without a baseline an undo never opens anything; an undo
/// never opens a rule carrying our marker; a change to rules the store backs is undone not at all.
pub fn cloudtrail_event(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let Some(Ok(AwsEvent::Guard(event))) = read(&value) else { return };
    assert!(!event.event_id.is_empty() && !event.group_id.is_empty(), "{value}");
    let marker = Marker::default();
    let undo = revert(&event.changes, None, &marker, &Backing::default());
    assert!(undo.authorize.is_empty() && undo.restore.is_empty(), "no baseline, yet it opens: {value}");
    let marked = |r: &portcullis_core::guard::GuardRule| r.carries_marker(&marker);
    let backed_all = {
        let mut b = Backing::default();
        event.changes.rules().for_each(|r| b.insert(r));
        b
    };
    let with_baseline = revert(&event.changes, Some(&[]), &marker, &Backing::default());
    assert!(!with_baseline.authorize.iter().any(marked), "an undo opened a marked rule: {value}");
    if event.changes.only_ours(&marker, &backed_all) {
        assert!(revert(&event.changes, None, &marker, &backed_all).is_empty(), "the reconcile's rules: {value}");
    }
}

/// A configuration file with no environment: a refused file says where (the origin, and a
/// line that exists).
pub fn config_toml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Err(err) = Config::from_toml(text, "portcullis.toml", &Overrides::default(), &|_| None) else { return };
    if let Some(line) = err.key.strip_prefix("portcullis.toml line ") {
        let line: usize = line.parse().expect("a line number");
        let lines = text.split('\n').count();
        assert!(line >= 1 && line <= lines, "line {line} of a {lines}-line file");
    }
}

const STS: &str = "https://sts.amazonaws.com";
const SERVER_ID: &str = "portcullis.example.com";

fn verifier() -> &'static IamVerifier {
    static VERIFIER: OnceLock<IamVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| IamVerifier::new(STS, SERVER_ID, time::Duration::minutes(5)))
}

fn login_now() -> Timestamp {
    time::macros::datetime!(2026-06-01 00:00:00 UTC)
}

/// A login that passes every local check, with `authorization` as its SigV4 header.
fn login(authorization: &str) -> IamLogin {
    let headers = BTreeMap::from([
        ("authorization".to_string(), authorization.to_string()),
        ("content-type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string()),
        ("x-amz-date".to_string(), "20260601T000000Z".to_string()),
        (SERVER_ID_HEADER.to_string(), SERVER_ID.to_string()),
    ]);
    IamLogin {
        method: "POST".into(),
        url: format!("{STS}/"),
        headers,
        body: "Action=GetCallerIdentity&Version=2011-06-15".into(),
    }
}

fn check_login(login: &IamLogin) {
    let Ok((key, window)) = verifier().replay_key(login, login_now()) else { return };
    let signature = key.strip_prefix("iam:").expect("replay keys are iam:<signature>");
    let authorization = &login.headers["authorization"];
    assert!(authorization.contains(&format!("Signature={signature}")), "{key} is not the signature of {authorization:?}");
    assert_eq!(login.headers.get(SERVER_ID_HEADER).map(String::as_str), Some(SERVER_ID), "accepted for another server");
    assert!(window > time::Duration::ZERO);
}

/// The IAM login a client sends in `Authorization: PortcullisIAM <base64 JSON>`, and the SigV4
/// header inside it, through every check made before STS is asked: a login is only ever
/// accepted with the signature it carries as its replay key, and never when bound to another
/// server.
pub fn iam_header(data: &[u8]) {
    // The template must itself pass, or the third check below explores nothing.
    static TEMPLATE: std::sync::Once = std::sync::Once::new();
    TEMPLATE.call_once(|| {
        let sample = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260601/us-east-1/sts/aws4_request, \
                      SignedHeaders=content-type;host;x-amz-date;x-portcullis-server-id, Signature=abc123";
        assert!(verifier().replay_key(&login(sample), login_now()).is_ok(), "the template login is refused");
    });
    let Ok(text) = std::str::from_utf8(data) else { return };
    let credentials = text.strip_prefix(IAM_SCHEME).map_or(text, str::trim);
    if let Ok(login) = decode_iam_login(credentials) {
        check_login(&login);
    }
    if let Ok(login) = serde_json::from_str::<IamLogin>(text) {
        check_login(&login);
    }
    check_login(&login(text));
}

/// A grants-table item in DynamoDB JSON, as the IP Whitelist Manager's Lambda (or a person in
/// the console) may have written it: an item that reads as a grant writes back as an item that
/// reads as the same grant, and its key item names the same grant.
pub fn seed_item(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let Some(item) = item_from_json(Some(&value)) else { return };
    let _ = removal(&item);
    let Ok(grant) = from_item(&item) else { return };
    let written = to_item(&grant);
    assert_eq!(from_item(&written).as_ref(), Ok(&grant), "{item:?} read as {grant:?}, but writes as {written:?}");
    let key = key_item(&grant.key());
    assert!(key.iter().all(|(k, v)| written.get(k) == Some(v)), "the key item {key:?} is not part of {written:?}");
}

/// A slash command's form body as Slack posts it, then the `/infra whitelist …` text it
/// carries: a command that parses, written back out as a user would type it, parses to the
/// same command.
pub fn slack_command(data: &[u8]) {
    if let Ok(form) = read_form(data) {
        check_command(&form.text);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check_command(text);
    }
}

fn check_command(text: &str) {
    let Ok(command) = parse(text) else { return };
    let typed = typed(&command);
    assert_eq!(parse(&typed).as_ref(), Ok(&command), "{text:?} parsed, but its typed form {typed:?} does not parse back");
}

/// What a user types for `command`, in Slack's escaping (`&`, `<`, `>` arrive as entities).
fn typed(command: &Command) -> String {
    let env = |env: &Option<Environment>| env.as_ref().map(|e| format!(" --env {}", quote(e.as_str()))).unwrap_or_default();
    let text = match command {
        Command::Add { cidr, ttl, description, env: e } => {
            let ttl = ttl.map(|t| format!(" --ttl={t}")).unwrap_or_default();
            format!("add {cidr}{ttl} --description={}{}", quote(description.as_str()), env(e))
        }
        Command::Remove { cidr, env: e } => format!("remove {cidr}{}", env(e)),
        Command::List { env: e } => format!("list{}", env(e)),
        Command::Refresh { env: e } => format!("refresh{}", env(e)),
        Command::Help => "help".to_string(),
    };
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// Single-quoted as in a shell: `'` itself is closed, escaped and reopened.
fn quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// A Slack interaction's form body (`payload=<block_actions JSON>`), read as
/// `/slack/interactions` reads it: a click names its user, action and value, and an approval
/// message for a request with that id carries it, unchanged, on every button.
pub fn slack_interaction(data: &[u8]) {
    let Ok(click) = read_interaction(data) else { return };
    assert!(!click.user_id.is_empty() && !click.action_id.is_empty() && !click.value.is_empty());
    let id = TargetId { region: "us-east-1".into(), group_id: "sg-1".into() };
    let group = GuardedGroup { id, account: "1".into(), rules: vec![] };
    let request =
        ChangeRequest::pending(&click.value, "e", "arn", &group, time::OffsetDateTime::UNIX_EPOCH, time::Duration::hours(1));
    let message = approval_message(&request, Some(time::Duration::hours(24)), None);
    let buttons =
        message["blocks"].as_array().and_then(|b| b.last()).and_then(|a| a["elements"].as_array()).cloned().unwrap_or_default();
    assert!(!buttons.is_empty() && buttons.iter().all(|b| b["value"] == click.value.as_str()), "{message}");
}

/// One DynamoDB Stream record as the Lambda receives it (or a whole event's records): a record
/// that is not readable still names itself (event id and sequence number, when it has them),
/// so the batch can be retried from it.
pub fn stream_record(data: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    let records = match value.get("Records").and_then(Value::as_array) {
        Some(records) => records.clone(),
        None => vec![value],
    };
    for record in &records {
        let change = read_stream_record(record);
        let sequence = record.pointer("/dynamodb/SequenceNumber").and_then(Value::as_str);
        assert_eq!(change.sequence.as_deref(), sequence, "the record's sequence number is kept: {record}");
        if let ExternalKind::Unreadable { .. } = change.kind {
            continue;
        }
        assert!(change.id.is_some(), "a readable record has an event id: {record}");
    }
}
