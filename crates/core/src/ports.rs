use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// A transport protocol a rule opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    /// The name EC2 uses in `IpProtocol`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }

    /// Reads EC2's `IpProtocol` (`tcp`, `udp`, or their numbers); others are not ours.
    pub fn from_ec2(value: &str) -> Option<Protocol> {
        match value {
            "tcp" | "6" => Some(Protocol::Tcp),
            "udp" | "17" => Some(Protocol::Udp),
            _ => None,
        }
    }
}

/// A protocol and an inclusive port range, as one EC2 permission names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: Protocol,
    pub from: u16,
    pub to: u16,
}

impl PortRange {
    /// What a managed prefix list's entry stands for in a plan: an address with no ports of its
    /// own (the groups that reference the list decide the ports).
    pub const ENTRY: PortRange = PortRange { protocol: Protocol::Tcp, from: 0, to: 65535 };

    pub fn single(protocol: Protocol, port: u16) -> PortRange {
        PortRange { protocol, from: port, to: port }
    }

    /// True when `other` lies within this range.
    pub fn covers(&self, other: &PortRange) -> bool {
        self.protocol == other.protocol && self.from <= other.from && other.to <= self.to
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.from == self.to {
            write!(f, "{}:{}", self.protocol.as_str(), self.from)
        } else {
            write!(f, "{}:{}-{}", self.protocol.as_str(), self.from, self.to)
        }
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// The ports a target opens for each grant: profile `alb` (tcp 80, 443), `nlb` (tcp 7233), or
/// a list such as `tcp:80,tcp:443,udp:500-501`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct PortSet(BTreeSet<PortRange>);

impl PortSet {
    pub fn alb() -> PortSet {
        PortSet([80, 443].into_iter().map(|p| PortRange::single(Protocol::Tcp, p)).collect())
    }

    pub fn nlb() -> PortSet {
        PortSet([PortRange::single(Protocol::Tcp, 7233)].into_iter().collect())
    }

    /// A prefix list's "ports": its entries, one per address.
    pub fn entries() -> PortSet {
        PortSet([PortRange::ENTRY].into_iter().collect())
    }

    pub fn new(ranges: impl IntoIterator<Item = PortRange>) -> PortSet {
        PortSet(ranges.into_iter().collect())
    }

    pub fn parse(input: &str) -> Result<PortSet, InvalidInput> {
        let invalid = |reason: String| InvalidInput::InvalidPorts { input: input.to_string(), reason };
        let text = input.trim();
        match text {
            "alb" => return Ok(PortSet::alb()),
            "nlb" => return Ok(PortSet::nlb()),
            "" => return Err(invalid("it is empty".into())),
            _ => {}
        }
        let mut set = BTreeSet::new();
        for item in text.split(',') {
            let item = item.trim();
            let (proto, ports) = item.split_once(':').ok_or_else(|| invalid(format!("{item:?} has no protocol")))?;
            let protocol = match proto {
                "tcp" => Protocol::Tcp,
                "udp" => Protocol::Udp,
                _ => return Err(invalid(format!("{proto:?} is not tcp or udp"))),
            };
            let (from, to) = ports.split_once('-').unwrap_or((ports, ports));
            let port = |p: &str| {
                p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(|| invalid(format!("{p:?} is not a port from 1 to 65535")))
            };
            let (from, to) = (port(from)?, port(to)?);
            if from > to {
                return Err(invalid(format!("{item:?} runs backwards")));
            }
            set.insert(PortRange { protocol, from, to });
        }
        Ok(PortSet(set))
    }

    pub fn iter(&self) -> impl Iterator<Item = &PortRange> {
        self.0.iter()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// True when every range here lies within some range of `allowed`.
    pub fn within(&self, allowed: &PortSet) -> bool {
        self.0.iter().all(|r| allowed.0.iter().any(|a| a.covers(r)))
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for PortSet {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<PortSet, InvalidInput> {
        PortSet::parse(s)
    }
}

impl Serialize for PortSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PortSet, D::Error> {
        let text = String::deserialize(d)?;
        PortSet::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_and_lists() {
        assert_eq!(PortSet::parse("alb").unwrap().to_string(), "tcp:80,tcp:443");
        assert_eq!(PortSet::parse("nlb").unwrap().to_string(), "tcp:7233");
        assert_eq!(PortSet::parse("tcp:80, tcp:443,udp:500-501").unwrap().to_string(), "tcp:80,tcp:443,udp:500-501");
        for bad in ["", "80", "icmp:1", "tcp:0", "tcp:70000", "tcp:9-8", "tcp:", "tcp:a"] {
            assert!(PortSet::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn within_allowed() {
        let allowed = PortSet::parse("tcp:80,tcp:443,tcp:7000-8000").unwrap();
        assert!(PortSet::alb().within(&allowed));
        assert!(PortSet::nlb().within(&allowed));
        assert!(!PortSet::parse("tcp:22").unwrap().within(&allowed));
        assert!(!PortSet::parse("udp:80").unwrap().within(&allowed));
    }
}
