use crate::description::ec2_safe;
use crate::{Description, Environment};

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
        let mut text = format!("{}:{}", self.prefix, environment);
        let owner = ec2_safe(owner.trim());
        if !owner.is_empty() {
            text.push(' ');
            text.push_str(&owner);
            text.push(':');
        }
        let description = ec2_safe(description.as_str());
        if !description.is_empty() {
            text.push(' ');
            text.push_str(&description);
        }
        // Every character is ASCII after ec2_safe, so a byte cut is a character cut.
        text.truncate(Self::MAX_BYTES);
        text.truncate(text.trim_end().len());
        text
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
        fn text_without_the_prefix_is_never_ours(text in "\\PC{0,80}") {
            prop_assume!(!text.starts_with("pc:"));
            prop_assert_eq!(Marker::default().decode(&text), None);
        }
    }
}
