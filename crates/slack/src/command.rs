//! The `/infra whitelist …` grammar: shell-like words, then a verb and its options.
//!
//! ```text
//! [whitelist|allowlist] add <ip|cidr> [--ttl=T|--ttl T] [--description='…'|"…"] [--env E]
//!                       remove <ip|cidr> [--env E]
//!                       list [E]
//!                       refresh [E]
//!                       help
//! ```
//!
//! Quoting works as in a POSIX shell, plus the curly quotes Slack's clients substitute for
//! straight ones (‘…’ and “…”); Slack's HTML escapes (`&amp;`, `&lt;`, `&gt;`) are undone first.

use portcullis_core::{Cidr, Description, Environment, InvalidInput, Ttl};
use thiserror::Error;

/// A parsed command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Add { cidr: Cidr, ttl: Option<Ttl>, description: Description, env: Option<Environment> },
    Remove { cidr: Cidr, env: Option<Environment> },
    List { env: Option<Environment> },
    Refresh { env: Option<Environment> },
    Help,
}

impl Command {
    /// Whether the command changes grants or rules (and so is rate-limited).
    pub fn is_mutating(&self) -> bool {
        matches!(self, Command::Add { .. } | Command::Remove { .. } | Command::Refresh { .. })
    }

    /// The environment the command names, if any.
    pub fn environment(&self) -> Option<&Environment> {
        match self {
            Command::Add { env, .. } | Command::Remove { env, .. } | Command::List { env } | Command::Refresh { env } => {
                env.as_ref()
            }
            Command::Help => None,
        }
    }
}

/// Why a command's text was refused; the message is meant for the person who typed it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{0}")]
pub struct ParseError(pub String);

impl From<InvalidInput> for ParseError {
    fn from(err: InvalidInput) -> Self {
        ParseError(err.to_string())
    }
}

/// The words of a command: the user's text, unescaped and split as a shell would.
pub fn words(text: &str) -> Result<Vec<String>, ParseError> {
    let text = text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&");
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if let Some(w) = word.take() {
                    words.push(w);
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                match chars.next() {
                    Some(next) => w.push(next),
                    None => w.push('\\'),
                }
            }
            '\'' | '"' | '‘' | '’' | '“' | '”' => {
                let w = word.get_or_insert_with(String::new);
                let closers: &[char] = match c {
                    '\'' => &['\''],
                    '"' => &['"'],
                    '‘' | '’' => &['’', '‘'],
                    _ => &['”', '“'],
                };
                let mut closed = false;
                while let Some(q) = chars.next() {
                    if closers.contains(&q) {
                        closed = true;
                        break;
                    }
                    if q == '\\' && c == '"' {
                        match chars.next() {
                            Some(e @ ('"' | '\\')) => w.push(e),
                            Some(other) => {
                                w.push('\\');
                                w.push(other);
                            }
                            None => w.push('\\'),
                        }
                    } else {
                        w.push(q);
                    }
                }
                if !closed {
                    return Err(ParseError(format!("unterminated quote: a {c} has no closing quote")));
                }
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// Parses the text of a slash command (everything after `/infra`).
pub fn parse(text: &str) -> Result<Command, ParseError> {
    let words = words(text)?;
    let mut words = words.into_iter().peekable();
    if words.peek().is_some_and(|w| w.eq_ignore_ascii_case("whitelist") || w.eq_ignore_ascii_case("allowlist")) {
        words.next();
    }
    let Some(verb) = words.next() else { return Ok(Command::Help) };
    let rest: Vec<String> = words.collect();
    match verb.to_ascii_lowercase().as_str() {
        "add" => {
            let args = Args::parse("add", &rest, &["ttl", "description", "env"])?;
            let cidr = args.address("add")?;
            args.no_more_positionals("add", 1)?;
            let ttl = args.option("ttl").map(Ttl::parse).transpose()?;
            let description = Description::parse(args.option("description").unwrap_or(""))?;
            Ok(Command::Add { cidr, ttl, description, env: args.env()? })
        }
        "remove" => {
            let args = Args::parse("remove", &rest, &["env"])?;
            let cidr = args.address("remove")?;
            args.no_more_positionals("remove", 1)?;
            Ok(Command::Remove { cidr, env: args.env()? })
        }
        "list" | "refresh" => {
            let args = Args::parse(&verb, &rest, &["env"])?;
            args.no_more_positionals(&verb, 1)?;
            let env = match (args.positionals.first(), args.env()?) {
                (Some(_), Some(_)) => {
                    return Err(ParseError(format!("give the environment once: `{verb} E` or `{verb} --env E`")));
                }
                (Some(name), None) => Some(Environment::parse(name)?),
                (None, env) => env,
            };
            Ok(if verb.eq_ignore_ascii_case("list") { Command::List { env } } else { Command::Refresh { env } })
        }
        "help" | "--help" | "-h" => Ok(Command::Help),
        _ => Err(ParseError(format!("unknown command `{}`", clip(&verb)))),
    }
}

/// A verb's positional words and `--name=value` / `--name value` options.
struct Args {
    positionals: Vec<String>,
    options: Vec<(String, String)>,
}

impl Args {
    fn parse(verb: &str, words: &[String], known: &[&str]) -> Result<Args, ParseError> {
        let mut positionals = Vec::new();
        let mut options: Vec<(String, String)> = Vec::new();
        let mut words = words.iter();
        while let Some(word) = words.next() {
            let Some(option) = word.strip_prefix("--") else {
                positionals.push(word.clone());
                continue;
            };
            let (name, inline) = match option.split_once('=') {
                Some((name, value)) => (name, Some(value.to_string())),
                None => (option, None),
            };
            let name = name.to_ascii_lowercase();
            if !known.contains(&name.as_str()) {
                let takes = known.iter().map(|k| format!("--{k}")).collect::<Vec<_>>().join(", ");
                return Err(ParseError(format!("unknown option `--{}` for {verb}; {verb} takes {takes}", clip(&name))));
            }
            if options.iter().any(|(n, _)| *n == name) {
                return Err(ParseError(format!("--{name} is given twice")));
            }
            let value = match inline {
                Some(v) => v,
                None => words.next().cloned().ok_or_else(|| ParseError(format!("--{name} needs a value")))?,
            };
            options.push((name, value));
        }
        Ok(Args { positionals, options })
    }

    fn option(&self, name: &str) -> Option<&str> {
        self.options.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    fn env(&self) -> Result<Option<Environment>, ParseError> {
        Ok(self.option("env").map(Environment::parse).transpose()?)
    }

    fn address(&self, verb: &str) -> Result<Cidr, ParseError> {
        let text = self
            .positionals
            .first()
            .ok_or_else(|| ParseError(format!("{verb} needs an IP address or CIDR, e.g. `{verb} 203.0.113.7`")))?;
        Ok(Cidr::parse(text)?)
    }

    fn no_more_positionals(&self, verb: &str, allowed: usize) -> Result<(), ParseError> {
        match self.positionals.get(allowed) {
            None => Ok(()),
            Some(extra) => Err(ParseError(format!(
                "unexpected `{}` after {verb}; quote a description that has spaces, e.g. --description='Home office'",
                clip(extra)
            ))),
        }
    }
}

/// Echoes a user's word back at most 40 characters long.
fn clip(word: &str) -> String {
    match word.char_indices().nth(40) {
        Some((i, _)) => format!("{}…", &word[..i]),
        None => word.to_string(),
    }
}

/// The help text, for the slash command `command` (e.g. `/infra`).
pub fn usage(command: &str) -> String {
    format!(
        "{command} whitelist add <ip|cidr> [--ttl=T] [--description='…'] [--env E]\n\
         {command} whitelist remove <ip|cidr> [--env E]\n\
         {command} whitelist list [E]\n\
         {command} whitelist refresh [E]\n\
         {command} whitelist help\n\
         \n\
         T is Nm (1-1440 minutes), Nh (1-24 hours) or Nd (1-365 days); the default is 30d.\n\
         `allowlist` works in place of `whitelist`.\n\
         Example: {command} whitelist add 203.0.113.7 --ttl=7d --description='Home office'"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(s: &str) -> Cidr {
        Cidr::parse(s).unwrap()
    }

    fn env(s: &str) -> Option<Environment> {
        Some(Environment::parse(s).unwrap())
    }

    #[test]
    fn add_forms() {
        let home = Description::parse("Home office").unwrap();
        let expect = |ttl: &str, env_name: Option<&str>| Command::Add {
            cidr: cidr("1.2.3.4/32"),
            ttl: Some(Ttl::parse(ttl).unwrap()),
            description: home.clone(),
            env: env_name.and_then(env),
        };
        assert_eq!(parse("whitelist add 1.2.3.4 --ttl=7d --description='Home office'"), Ok(expect("7d", None)));
        assert_eq!(parse("allowlist add 1.2.3.4 --ttl 7d --description \"Home office\""), Ok(expect("7d", None)));
        assert_eq!(parse("add 1.2.3.4 --description=“Home office” --ttl=5m --env prod"), Ok(expect("5m", Some("prod"))));
        assert_eq!(parse("whitelist add 1.2.3.4 --ttl=7d --description=‘Home office’"), Ok(expect("7d", None)));
        assert_eq!(parse("whitelist add 1.2.3.4 --ttl=7d --description=Home\\ office"), Ok(expect("7d", None)));
        assert_eq!(
            parse("WHITELIST ADD 198.51.100.7"),
            Ok(Command::Add { cidr: cidr("198.51.100.7"), ttl: None, description: Description::parse("").unwrap(), env: None })
        );
        let Ok(Command::Add { description, .. }) = parse("add 1.2.3.4 --description='R&amp;D &lt;lab&gt; \"x\"'") else {
            panic!()
        };
        assert_eq!(description.as_str(), "R&D <lab> \"x\"");
        let Ok(Command::Add { description, .. }) = parse(r#"add 1.2.3.4 --description "it's \"here\"""#) else { panic!() };
        assert_eq!(description.as_str(), "it's \"here\"");
    }

    #[test]
    fn other_verbs() {
        assert_eq!(
            parse("whitelist remove 2001:db8::1 --env=prod"),
            Ok(Command::Remove { cidr: cidr("2001:db8::1"), env: env("prod") })
        );
        assert_eq!(parse("whitelist list dev"), Ok(Command::List { env: env("dev") }));
        assert_eq!(parse("whitelist list --env dev"), Ok(Command::List { env: env("dev") }));
        assert_eq!(parse("whitelist list"), Ok(Command::List { env: None }));
        assert_eq!(parse("whitelist refresh dev"), Ok(Command::Refresh { env: env("dev") }));
        assert_eq!(parse("whitelist help"), Ok(Command::Help));
        assert_eq!(parse("whitelist"), Ok(Command::Help));
        assert_eq!(parse("  "), Ok(Command::Help));
    }

    #[test]
    fn mistakes_are_explained() {
        let err = |t: &str| parse(t).unwrap_err().0;
        assert!(err("whitelist frobnicate").contains("unknown command `frobnicate`"));
        assert!(err("whitelist add").contains("add needs an IP address"));
        assert!(err("whitelist add 1.2.3.4 --ttl=8w").contains("invalid TTL"));
        assert!(err("whitelist add 1.2.3.4 --ttl").contains("--ttl needs a value"));
        assert!(err("whitelist add 1.2.3.4 --ttl=1d --ttl=2d").contains("given twice"));
        assert!(err("whitelist add 1.2.3.4 --color=red").contains("unknown option `--color` for add"));
        assert!(err("whitelist add 1.2.3.4 --description=Home office").contains("unexpected `office`"));
        assert!(err("whitelist add 1.2.3.4 --description='Home office").contains("unterminated quote"));
        assert!(err("whitelist add 300.1.1.1").contains("invalid address"));
        assert!(err("whitelist list dev --env prod").contains("give the environment once"));
        assert!(err("whitelist list dev prod").contains("unexpected `prod`"));
        assert!(err("whitelist remove 1.2.3.4 --ttl=1d").contains("unknown option"));
        assert!(err("whitelist list d@v").contains("invalid environment name"));
        assert!(err(&format!("whitelist {}", "x".repeat(500))).len() < 200);
    }

    #[test]
    fn usage_names_the_command() {
        assert!(usage("/infra").starts_with("/infra whitelist add"));
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn command_like_text_never_panics(
            parts in proptest::collection::vec(
                prop_oneof![
                    Just("whitelist".to_string()), Just("add".to_string()), Just("remove".to_string()),
                    Just("list".to_string()), Just("--ttl".to_string()), Just("--ttl=".to_string()),
                    Just("--env".to_string()), Just("--description=".to_string()), Just("'".to_string()),
                    Just("\"".to_string()), Just("“".to_string()), Just("\\".to_string()), Just("&amp;".to_string()),
                    "[0-9a-f:./]{0,20}", "\\PC{0,8}",
                ],
                0..10,
            )
        ) {
            let text = parts.join(" ");
            let _ = parse(&text);
            let _ = parse(&parts.concat());
        }

        /// What Slack really sends: any description a user may write (quotes of every kind,
        /// backslashes, `&`, `<`, `>`, entities typed literally, non-ASCII), quoted each way a
        /// user may quote it, then escaped as Slack escapes `&`, `<` and `>`.
        #[test]
        fn any_description_typed_any_way_round_trips(
            d in proptest::collection::vec(
                prop_oneof![
                    "[a-zA-Z0-9 ]", Just("'".to_string()), Just("\"".to_string()), Just("\\".to_string()),
                    Just("‘".to_string()), Just("’".to_string()), Just("“".to_string()), Just("”".to_string()),
                    Just("&".to_string()), Just("<".to_string()), Just(">".to_string()), Just("&amp;".to_string()),
                    Just("&lt;".to_string()), Just(";".to_string()), "[éüß日本語🙂ñ€]", "\\PC",
                ],
                0..30,
            ).prop_map(|parts| parts.concat()).prop_filter("a valid description", |d| Description::parse(d).is_ok()),
        ) {
            let slack = |typed: String| typed.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
            let mut typings = vec![
                format!("'{}'", d.replace('\'', "'\\''")),
                format!("\"{}\"", d.replace('\\', "\\\\").replace('"', "\\\"")),
            ];
            if !d.contains(['“', '”']) {
                typings.push(format!("“{d}”"));
            }
            if !d.contains(['‘', '’']) {
                typings.push(format!("‘{d}’"));
            }
            for typed in typings {
                let text = slack(format!("whitelist add 203.0.113.7 --description={typed}"));
                let parsed = parse(&text);
                let Ok(Command::Add { description, .. }) = &parsed else {
                    return Err(TestCaseError::fail(format!("{text:?} did not parse: {parsed:?}")));
                };
                prop_assert_eq!(description.as_str(), d.as_str(), "typed as {:?}, sent as {:?}", typed, text);
            }
        }

        #[test]
        fn quoted_descriptions_round_trip(d in "[a-zA-Z0-9 .,:()@#-]{0,100}") {
            let text = format!("whitelist add 203.0.113.7 --description='{d}'");
            let Ok(Command::Add { description, .. }) = parse(&text) else { panic!("{text}") };
            prop_assert_eq!(description.as_str(), d.as_str());
        }
    }
}
