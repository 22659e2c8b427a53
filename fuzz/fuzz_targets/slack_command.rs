//! A slash command's form body as Slack posts it, then the `/infra whitelist …` text it carries.
//!
//! Beyond "never panics": a command that parses, written back out as a user would type it,
//! parses to the same command (the grammar can say everything it accepts).
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::routes::slack::read_form;
use portcullis_slack::{Command, parse};

fuzz_target!(|data: &[u8]| {
    if let Ok(form) = read_form(data) {
        check(&form.text);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        check(text);
    }
});

fn check(text: &str) {
    let Ok(command) = parse(text) else { return };
    let typed = typed(&command);
    assert_eq!(parse(&typed).as_ref(), Ok(&command), "{text:?} parsed, but its typed form {typed:?} does not parse back");
}

/// What a user types for `command`, in Slack's escaping (`&`, `<`, `>` arrive as entities).
fn typed(command: &Command) -> String {
    let env = |env: &Option<portcullis_core::Environment>| env.as_ref().map(|e| format!(" --env {}", quote(e.as_str()))).unwrap_or_default();
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
