use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ValidationError;

/// A grant's description: printable Unicode, at most 200 characters, kept as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(input: &str) -> Result<Description, ValidationError> {
        let count = input.chars().count();
        if count > Self::MAX_CHARS {
            return Err(ValidationError::InvalidDescription {
                reason: format!("it has {count} characters, at most {} are allowed", Self::MAX_CHARS),
            });
        }
        if let Some(c) = input.chars().find(|c| c.is_control()) {
            return Err(ValidationError::InvalidDescription {
                reason: format!("it contains the control character U+{:04X}", c as u32),
            });
        }
        Ok(Description(input.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Description {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Description {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Description, D::Error> {
        let text = String::deserialize(d)?;
        Description::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// Maps text onto the characters EC2 accepts in a rule description
/// (`a-zA-Z0-9 ._-:/()#,@[]+=&;{}!$*`); anything else becomes `_`.
pub(crate) fn ec2_safe(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_unicode_refuses_control_and_length() {
        assert_eq!(Description::parse("Büro – 🏠").unwrap().as_str(), "Büro – 🏠");
        assert!(Description::parse(&"é".repeat(200)).is_ok());
        assert!(Description::parse(&"a".repeat(201)).is_err());
        assert!(Description::parse("line\nbreak").is_err());
        assert!(Description::parse("bell\u{7}").is_err());
    }

    #[test]
    fn ec2_charset() {
        assert_eq!(ec2_safe("Home office (Büro) #1 'x'"), "Home office (B_ro) #1 _x_");
    }
}
