use std::fmt;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// A grant's description: printable Unicode, at most 200 characters, kept as given.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Description(String);

impl Description {
    pub const MAX_CHARS: usize = 200;

    pub fn parse(input: &str) -> Result<Description, InvalidInput> {
        let count = input.chars().count();
        if count > Self::MAX_CHARS {
            return Err(InvalidInput::InvalidDescription {
                reason: format!("it has {count} characters, at most {} are allowed", Self::MAX_CHARS),
            });
        }
        if let Some(c) = input.chars().find(|c| c.is_control()) {
            return Err(InvalidInput::InvalidDescription {
                reason: format!("it contains the control character U+{:04X}", c as u32),
            });
        }
        if let Some(c) = input.chars().find(|c| is_spoofing(*c)) {
            return Err(InvalidInput::InvalidDescription {
                reason: format!("it contains the invisible formatting character U+{:04X}, which can disguise text", c as u32),
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

/// Invisible characters that reorder or hide text (bidirectional overrides and isolates,
/// zero-width spaces and marks, the byte-order mark): in a list or an announcement they make
/// one address or name look like another. The zero-width joiner is allowed (emoji use it).
pub fn is_spoofing(c: char) -> bool {
    matches!(c, '\u{061C}' | '\u{200B}' | '\u{200C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
}

/// Maps text onto the characters EC2 accepts in a rule description
/// (`a-zA-Z0-9 ._-:/()#,@[]+=&;{}!$*`); anything else becomes `_`.
pub(crate) fn ec2_safe(text: &str) -> String {
    text.chars().map(|c| if c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c) { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invisible_formatting_is_refused() {
        for c in ['\u{202E}', '\u{2066}', '\u{2069}', '\u{200B}', '\u{FEFF}'] {
            assert!(Description::parse(&format!("home{c}office")).is_err(), "U+{:04X}", c as u32);
        }
        assert!(Description::parse("family \u{1F468}\u{200D}\u{1F469}").is_ok(), "emoji keep their joiner");
    }

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
