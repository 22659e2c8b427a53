use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::Duration;

use crate::ValidationError;

/// How long a grant lasts: seed 000's grammar `Nm` (1-1440), `Nh` (1-24), `Nd` (1-365).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl {
    minutes: u32,
}

impl Ttl {
    /// The longest TTL any form allows: 365 days.
    pub const MAX: Ttl = Ttl { minutes: 365 * 24 * 60 };
    /// The TTL used when none is given: 30 days.
    pub const DEFAULT: Ttl = Ttl { minutes: 30 * 24 * 60 };

    /// Parses `Nm`, `Nh` or `Nd` within the seed's ranges.
    pub fn parse(input: &str) -> Result<Ttl, ValidationError> {
        let invalid = || ValidationError::InvalidTtl { input: input.to_string() };
        let text = input.trim();
        let unit = text.chars().last().ok_or_else(invalid)?;
        let digits = &text[..text.len() - unit.len_utf8()];
        if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
        let n: u32 = digits.parse().map_err(|_| invalid())?;
        let minutes = match unit {
            'm' if (1..=1440).contains(&n) => n,
            'h' if (1..=24).contains(&n) => n * 60,
            'd' if (1..=365).contains(&n) => n * 24 * 60,
            _ => return Err(invalid()),
        };
        Ok(Ttl { minutes })
    }

    /// The seed event's integer `ttl_minutes`: any value from 1 minute to 365 days.
    pub fn from_minutes(minutes: u64) -> Result<Ttl, ValidationError> {
        if (1..=u64::from(Ttl::MAX.minutes)).contains(&minutes) {
            Ok(Ttl { minutes: minutes as u32 })
        } else {
            Err(ValidationError::InvalidTtl { input: format!("{minutes} minutes") })
        }
    }

    pub fn minutes(&self) -> u32 {
        self.minutes
    }

    pub fn duration(&self) -> Duration {
        Duration::minutes(i64::from(self.minutes))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.minutes;
        if m % (24 * 60) == 0 {
            write!(f, "{}d", m / (24 * 60))
        } else if m % 60 == 0 && m <= 24 * 60 {
            write!(f, "{}h", m / 60)
        } else {
            write!(f, "{m}m")
        }
    }
}

impl FromStr for Ttl {
    type Err = ValidationError;
    fn from_str(s: &str) -> Result<Ttl, ValidationError> {
        Ttl::parse(s)
    }
}

impl Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ttl, D::Error> {
        let text = String::deserialize(d)?;
        Ttl::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grammar_bounds() {
        assert_eq!(Ttl::parse("1m").unwrap().minutes(), 1);
        assert_eq!(Ttl::parse("1440m").unwrap().minutes(), 1440);
        assert_eq!(Ttl::parse("24h").unwrap().minutes(), 1440);
        assert_eq!(Ttl::parse("7d").unwrap().minutes(), 10080);
        assert_eq!(Ttl::parse("365d").unwrap(), Ttl::MAX);
        for bad in ["0m", "1441m", "25h", "0h", "366d", "0d", "7x", "", "d", "-1d", "1.5d", "7 d", "+7d", "99999d", "7D"] {
            assert!(Ttl::parse(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(Ttl::DEFAULT.to_string(), "30d");
    }

    #[test]
    fn seed_minutes() {
        assert_eq!(Ttl::from_minutes(10080).unwrap().to_string(), "7d");
        assert_eq!(Ttl::from_minutes(90).unwrap().to_string(), "90m");
        assert!(Ttl::from_minutes(0).is_err());
        assert!(Ttl::from_minutes(365 * 24 * 60 + 1).is_err());
    }

    proptest! {
        #[test]
        fn display_parses_back(minutes in 1u64..=525_600) {
            let ttl = Ttl::from_minutes(minutes).unwrap();
            // Every TTL whose display is in the grammar parses back to itself.
            if let Ok(back) = Ttl::parse(&ttl.to_string()) {
                prop_assert_eq!(back, ttl);
            }
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,12}") {
            let _ = Ttl::parse(&text);
        }
    }
}
