use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// The name of an environment (`dev`, `prod`, …): 1-64 characters from `a-zA-Z0-9._-`, so it
/// survives EC2's description charset and never contains the marker's separators.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Environment(String);

impl Environment {
    pub fn parse(input: &str) -> Result<Environment, InvalidInput> {
        let ok =
            !input.is_empty() && input.len() <= 64 && input.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if ok {
            Ok(Environment(input.to_string()))
        } else {
            Err(InvalidInput::InvalidEnvironmentName { input: input.to_string() })
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Environment {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Environment, InvalidInput> {
        Environment::parse(s)
    }
}

impl<'de> Deserialize<'de> for Environment {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Environment, D::Error> {
        let text = String::deserialize(d)?;
        Environment::parse(&text).map_err(serde::de::Error::custom)
    }
}
