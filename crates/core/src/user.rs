use std::fmt;

use crate::InvalidInput;

/// A user's name or id as an interface reports it (`--as`, the OS user, a Slack user name, a
/// seed event's `user_info`, a token's user): trimmed, 1-100 characters, none of them control
/// characters. Every interface reads names through [`UserName::parse`], so they agree on what
/// a name is.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UserName(String);

impl UserName {
    /// The most characters (not bytes) a name may have.
    pub const MAX_CHARS: usize = 100;

    pub fn parse(text: &str) -> Result<UserName, InvalidInput> {
        let name = text.trim();
        let refuse = |reason: &str| Err(InvalidInput::InvalidUserName { input: text.to_string(), reason: reason.into() });
        if name.is_empty() {
            return refuse("it is empty");
        }
        if name.chars().count() > Self::MAX_CHARS {
            return refuse("it is longer than 100 characters");
        }
        if name.chars().any(char::is_control) {
            return refuse("it contains control characters");
        }
        if name.chars().any(crate::description::is_spoofing) {
            return refuse("it contains invisible formatting characters, which can disguise it");
        }
        Ok(UserName(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for UserName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(UserName::parse("  alice ").unwrap().as_str(), "alice");
        assert!(UserName::parse("").is_err());
        assert!(UserName::parse("   ").is_err());
        assert!(UserName::parse("a\u{7}b").is_err());
        assert!(UserName::parse("line\nbreak").is_err());
        // Characters are counted, not bytes: 100 two-byte characters are a valid name.
        assert!(UserName::parse(&"é".repeat(100)).is_ok());
        assert!(UserName::parse(&"é".repeat(101)).is_err());
        assert!(UserName::parse(&"a".repeat(101)).is_err());
        assert!(UserName::parse("ad\u{202E}nim").is_err(), "a right-to-left override disguises a name");
    }
}
