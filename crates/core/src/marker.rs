use crate::description::ec2_safe;
use crate::{Description, Environment};

/// What follows the prefix in a timed rule's marker.
const TIMED_RULE: &str = "timed/";
/// The same in rules made before it had its name (`pc:grant/…`): still read, never written.
const TIMED_RULE_BEFORE: &str = "grant/";

/// The ownership marker at the start of every EC2 rule description portcullis writes:
/// `pc:<environment> <owner>: <description>`. A rule without it is never revoked or edited.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    prefix: String,
}

impl Default for Marker {
    fn default() -> Self {
        Marker { prefix: "pc".to_string() }
    }
}

impl Marker {
    /// EC2 allows 255 bytes of description.
    pub const MAX_BYTES: usize = 255;

    /// A marker with a configured prefix: 1-16 characters from `a-zA-Z0-9_-`.
    pub fn new(prefix: &str) -> Option<Marker> {
        let ok =
            !prefix.is_empty() && prefix.len() <= 16 && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b));
        ok.then(|| Marker { prefix: prefix.to_string() })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The EC2 rule description for a grant: marker, owner and description in EC2's
    /// charset, cut to 255 bytes.
    pub fn encode(&self, environment: &Environment, owner: &str, description: &Description) -> String {
        self.mark(environment.as_str(), owner, description.as_str())
    }

    /// `<prefix>:<what> <owner>: <description>` in EC2's charset, cut to 255 bytes.
    fn mark(&self, what: &str, owner: &str, description: &str) -> String {
        let mut text = format!("{}:{what}", self.prefix);
        let owner = ec2_safe(owner.trim());
        if !owner.is_empty() {
            text.push(' ');
            text.push_str(&owner);
            text.push(':');
        }
        let description = ec2_safe(description);
        if !description.is_empty() {
            text.push(' ');
            text.push_str(&description);
        }
        // Every character is ASCII after ec2_safe, so a byte cut is a character cut.
        text.truncate(Self::MAX_BYTES);
        text.truncate(text.trim_end().len());
        text
    }

    /// The EC2 rule description for a timed rule (a temporary approval of request
    /// `request_id`): `pc:timed/<request> <approvers>: <the rule's own description>`. The `/`
    /// is outside every environment name, so the reconcile of an environment never takes a
    /// timed rule's rule for its own.
    pub fn encode_timed_rule(&self, request_id: &str, approvers: &str, description: Option<&str>) -> String {
        self.mark(&format!("{TIMED_RULE}{}", ec2_safe(request_id)), approvers, description.unwrap_or_default())
    }

    /// The request a timed rule's rule was made for, if its description carries our
    /// timed-rule marker.
    pub fn decode_timed_rule<'a>(&self, rule_description: &'a str) -> Option<&'a str> {
        let marked = rule_description.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        let rest = marked.strip_prefix(TIMED_RULE).or_else(|| marked.strip_prefix(TIMED_RULE_BEFORE))?;
        let id = rest.split(' ').next().unwrap_or(rest);
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')).then_some(id)
    }

    /// Whether a description carries our marker of either kind.
    pub fn is_ours(&self, rule_description: &str) -> bool {
        self.decode(rule_description).is_some() || self.decode_timed_rule(rule_description).is_some()
    }

    /// Whether a rule's description carries our marker for `environment` (what
    /// `decode(d) == Some(environment)` says, without building an `Environment`).
    pub fn is_for(&self, rule_description: &str, environment: &Environment) -> bool {
        let Some(rest) = rule_description.strip_prefix(self.prefix.as_str()).and_then(|r| r.strip_prefix(':')) else {
            return false;
        };
        rest.strip_prefix(environment.as_str()).is_some_and(|after| after.is_empty() || after.starts_with(' '))
    }

    /// The environment a rule belongs to, if its description carries our marker.
    pub fn decode(&self, rule_description: &str) -> Option<Environment> {
        let rest = rule_description.strip_prefix(self.prefix.as_str())?.strip_prefix(':')?;
        let name = rest.split(' ').next().unwrap_or(rest);
        if name.len() != rest.len() && !rest[name.len()..].starts_with(' ') {
            return None;
        }
        Environment::parse(name).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn env(s: &str) -> Environment {
        Environment::parse(s).unwrap()
    }

    #[test]
    fn encodes_like_the_design() {
        let m = Marker::default();
        let d = Description::parse("Home office").unwrap();
        assert_eq!(m.encode(&env("dev"), "john.doe", &d), "pc:dev john.doe: Home office");
        assert_eq!(m.encode(&env("dev"), "", &Description::default()), "pc:dev");
        assert_eq!(m.decode("pc:dev john.doe: Home office"), Some(env("dev")));
        assert_eq!(m.decode("pc:dev"), Some(env("dev")));
    }

    #[test]
    fn hand_made_descriptions_are_not_ours() {
        let m = Marker::default();
        for d in ["", "2020-01-01", "Jan 5", "10", "pc", "pc:", "pc: dev", "PC:dev x", "xpc:dev", "pc:dev/x", "pc:de v"] {
            // "pc:de v" decodes to "de": a rule that starts with our marker is ours by contract.
            if d == "pc:de v" {
                assert_eq!(m.decode(d), Some(env("de")));
            } else {
                assert_eq!(m.decode(d), None, "{d:?}");
            }
        }
    }

    #[test]
    fn a_timed_rule_marker_names_its_request_and_no_environment() {
        let m = Marker::default();
        let d = m.encode_timed_rule("r-00ff", "U0BOB, U0CAROL", Some("vendor VPN"));
        assert_eq!(d, "pc:timed/r-00ff U0BOB, U0CAROL: vendor VPN");
        assert_eq!(m.decode_timed_rule(&d), Some("r-00ff"));
        assert_eq!(m.decode(&d), None, "an environment's reconcile never takes it for its own");
        assert!(m.is_ours(&d) && m.is_ours("pc:dev") && !m.is_ours("grant/r-1"));
        assert_eq!(m.encode_timed_rule("r-1", "", None), "pc:timed/r-1");
        assert_eq!(m.decode_timed_rule("pc:grant/r-1 U0BOB: x"), Some("r-1"), "the name it had before is still read");
        for other in ["pc:timed/", "pc:timed", "pc:dev x", "xpc:timed/r-1", "pc:timed/r 1", "pc:grant/"] {
            assert_ne!(m.decode_timed_rule(other), Some("r-1"), "{other:?}");
        }
        assert_eq!(m.decode_timed_rule("pc:timed/"), None);
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(
            name in "[a-zA-Z0-9._-]{1,64}",
            owner in "\\PC{0,40}",
            text in "\\PC{0,200}",
        ) {
            let m = Marker::default();
            let e = env(&name);
            let description = Description::parse(&text).unwrap();
            let encoded = m.encode(&e, &owner, &description);
            prop_assert!(encoded.len() <= Marker::MAX_BYTES);
            prop_assert!(encoded.chars().all(|c| c.is_ascii() && !c.is_control()));
            prop_assert_eq!(m.decode(&encoded), Some(e));
        }

        #[test]
        fn is_for_agrees_with_decode(text in "(pc:)?(dev|de|prod|dev2|dev/x)?( .{0,10})?", env in "(dev|de|prod)") {
            let m = Marker::default();
            let e = Environment::parse(&env).unwrap();
            prop_assert_eq!(m.is_for(&text, &e), m.decode(&text).as_ref() == Some(&e), "{:?}", text);
        }

        #[test]
        fn text_without_the_prefix_is_never_ours(text in "\\PC{0,80}") {
            prop_assume!(!text.starts_with("pc:"));
            prop_assert_eq!(Marker::default().decode(&text), None);
        }
    }
}
