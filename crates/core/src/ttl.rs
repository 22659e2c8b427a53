use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use time::Duration;

use crate::InvalidInput;

/// How long a grant lasts: the IP Whitelist Manager's grammar `Nm` (1-1440), `Nh` (1-24), `Nd` (1-365), or
/// (the authenticating security group's `time_to_expire`) whole seconds from 60.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ttl {
    seconds: u32,
}

impl Ttl {
    /// The longest TTL any form allows: 365 days.
    pub const MAX: Ttl = Ttl { seconds: 365 * 24 * 60 * 60 };
    /// The TTL used when none is given: 30 days.
    pub const DEFAULT: Ttl = Ttl { seconds: 30 * 24 * 60 * 60 };
    /// The self-service (`/connection`) TTL when none is configured: 1 hour.
    pub const CONNECTION_DEFAULT: Ttl = Ttl { seconds: 60 * 60 };

    /// Parses `Nm`, `Nh` or `Nd` within the IP Whitelist Manager's ranges.
    pub fn parse(input: &str) -> Result<Ttl, InvalidInput> {
        let invalid = || InvalidInput::InvalidTtl { input: input.to_string() };
        let (n, unit) = count_and_unit(input.trim(), 4).ok_or_else(invalid)?;
        let n = n as u32; // at most 4 digits
        let minutes = match unit {
            'm' if (1..=1440).contains(&n) => n,
            'h' if (1..=24).contains(&n) => n * 60,
            'd' if (1..=365).contains(&n) => n * 24 * 60,
            _ => return Err(invalid()),
        };
        Ok(Ttl { seconds: minutes * 60 })
    }

    /// The authenticating security group's `time_to_expire`: whole seconds from 60 to 365 days.
    pub fn from_seconds(seconds: u64) -> Result<Ttl, InvalidInput> {
        if (60..=u64::from(Ttl::MAX.seconds)).contains(&seconds) {
            Ok(Ttl { seconds: seconds as u32 })
        } else {
            Err(InvalidInput::InvalidTtl { input: format!("{seconds} seconds") })
        }
    }

    /// `Nm`/`Nh`/`Nd`, or plain seconds (at least 60).
    pub fn parse_or_seconds(input: &str) -> Result<Ttl, InvalidInput> {
        let text = input.trim();
        if !text.is_empty() && text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit()) {
            return Ttl::from_seconds(text.parse().map_err(|_| InvalidInput::InvalidTtl { input: input.to_string() })?)
                .map_err(|_| InvalidInput::InvalidTtl { input: input.to_string() });
        }
        Ttl::parse(input)
    }

    /// The seed event's integer `ttl_minutes`: any value from 1 minute to 365 days.
    pub fn from_minutes(minutes: u64) -> Result<Ttl, InvalidInput> {
        if (1..=u64::from(Ttl::MAX.seconds / 60)).contains(&minutes) {
            Ok(Ttl { seconds: minutes as u32 * 60 })
        } else {
            Err(InvalidInput::InvalidTtl { input: format!("{minutes} minutes") })
        }
    }

    /// Whole minutes (rounded down).
    pub fn minutes(&self) -> u32 {
        self.seconds / 60
    }

    pub fn seconds(&self) -> u32 {
        self.seconds
    }

    pub fn duration(&self) -> Duration {
        Duration::seconds(i64::from(self.seconds))
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.seconds.is_multiple_of(60) {
            return write!(f, "{}s", self.seconds);
        }
        let m = self.minutes();
        if m.is_multiple_of(24 * 60) {
            write!(f, "{}d", m / (24 * 60))
        } else if m.is_multiple_of(60) && m <= 24 * 60 {
            write!(f, "{}h", m / 60)
        } else {
            write!(f, "{m}m")
        }
    }
}

impl FromStr for Ttl {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Ttl, InvalidInput> {
        Ttl::parse(s)
    }
}

impl Serialize for Ttl {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Reads back what [`fmt::Display`] writes, so every TTL survives a serde round trip: the
/// grammar, plus `Ns` (whole seconds from 60) and `Nm`/`Nh`/`Nd` past the grammar's per-unit
/// ranges up to [`Ttl::MAX`] (the authenticating security group's seconds and the IP Whitelist Manager event's minutes display so).
impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Ttl, D::Error> {
        let text = String::deserialize(d)?;
        Ttl::parse(&text).or_else(|_| Ttl::parse_displayed(&text)).map_err(serde::de::Error::custom)
    }
}

impl Ttl {
    /// The display form, with any count: `N` then `s`, `m`, `h` or `d`, within 60 s..=[`Ttl::MAX`].
    fn parse_displayed(input: &str) -> Result<Ttl, InvalidInput> {
        let invalid = || InvalidInput::InvalidTtl { input: input.to_string() };
        let (n, unit) = count_and_unit(input, 9).ok_or_else(invalid)?;
        let scale = match unit {
            's' => 1,
            'm' => 60,
            'h' => 60 * 60,
            'd' => 24 * 60 * 60,
            _ => return Err(invalid()),
        };
        Ttl::from_seconds(n * scale).map_err(|_| invalid())
    }
}

/// `N` (1 to `max_digits` ASCII digits) then one unit character.
fn count_and_unit(text: &str, max_digits: usize) -> Option<(u64, char)> {
    let unit = text.chars().last()?;
    let digits = &text[..text.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > max_digits || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some((digits.parse().ok()?, unit))
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

    #[test]
    fn seed_seconds() {
        assert_eq!(Ttl::parse_or_seconds("120").unwrap().to_string(), "2m");
        assert_eq!(Ttl::parse_or_seconds("90").unwrap().to_string(), "90s");
        assert_eq!(Ttl::parse_or_seconds("90").unwrap().duration(), Duration::seconds(90));
        assert_eq!(Ttl::parse_or_seconds("1h").unwrap(), Ttl::CONNECTION_DEFAULT);
        for bad in ["59", "0", "", "31536001", "1.5", "-60", "60s"] {
            assert!(Ttl::parse_or_seconds(bad).is_err(), "{bad} should be refused");
        }
    }

    proptest! {
        #[test]
        fn what_the_grammar_accepts_displays_in_the_grammar(
            (n, unit) in prop_oneof![(1u32..=1440, Just('m')), (1u32..=24, Just('h')), (1u32..=365, Just('d'))]
        ) {
            let ttl = Ttl::parse(&format!("{n}{unit}")).unwrap();
            // No value is skipped: a TTL a user typed is shown in a form they could type back.
            prop_assert_eq!(Ttl::parse(&ttl.to_string()).unwrap(), ttl);
        }

        #[test]
        fn every_ttl_survives_a_serde_round_trip(seconds in 60u64..=31_536_000) {
            let ttl = Ttl::from_seconds(seconds).unwrap();
            let json = serde_json::to_string(&ttl).unwrap();
            prop_assert_eq!(serde_json::from_str::<Ttl>(&json).unwrap(), ttl, "{}", json);
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,12}") {
            let _ = Ttl::parse(&text);
        }
    }
}
