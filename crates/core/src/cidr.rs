use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use crate::InvalidInput;

/// An address family; EC2 counts rule quotas per family.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "IPv4",
            Family::Ipv6 => "IPv6",
        })
    }
}

/// A canonical network: host bits cleared, a bare address is a /32 or /128, and an
/// IPv4-mapped IPv6 network (`::ffff:a.b.c.d`) is the IPv4 network it maps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Cidr(IpNet);

impl Cidr {
    /// Parses and canonicalises user input or an address read back from EC2.
    pub fn parse(input: &str) -> Result<Cidr, InvalidInput> {
        let text = input.trim();
        let invalid = |reason: &str| InvalidInput::InvalidAddress { input: input.to_string(), reason: reason.to_string() };
        if text.is_empty() {
            return Err(invalid("it is empty"));
        }
        let net = if let Some((addr, len)) = text.split_once('/') {
            let addr = IpAddr::from_str(addr).map_err(|_| invalid("not an IPv4 or IPv6 address"))?;
            if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) || len.len() > 3 {
                return Err(invalid("the prefix length is not a number"));
            }
            let len: u8 = len.parse().map_err(|_| invalid("the prefix length is not a number"))?;
            IpNet::new(addr, len).map_err(|_| match addr {
                IpAddr::V4(_) => invalid("an IPv4 prefix length is at most 32"),
                IpAddr::V6(_) => invalid("an IPv6 prefix length is at most 128"),
            })?
        } else {
            let addr = IpAddr::from_str(text).map_err(|_| invalid("not an IPv4 or IPv6 address"))?;
            IpNet::from(addr)
        };
        Ok(Cidr::from_net(net))
    }

    /// Canonicalises any network.
    pub fn from_net(net: IpNet) -> Cidr {
        let net = match net {
            IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
                Some(v4) => IpNet::V4(Ipv4Net::new(v4, v6.prefix_len() - 96).expect("a mapped prefix fits IPv4")),
                None => net,
            },
            _ => net,
        };
        Cidr(net.trunc())
    }

    /// A single host: /32 or /128.
    pub fn host(addr: IpAddr) -> Cidr {
        Cidr::from_net(IpNet::from(addr))
    }

    pub fn family(&self) -> Family {
        match self.0 {
            IpNet::V4(_) => Family::Ipv4,
            IpNet::V6(_) => Family::Ipv6,
        }
    }

    pub fn prefix_len(&self) -> u8 {
        self.0.prefix_len()
    }

    pub fn net(&self) -> IpNet {
        self.0
    }

    /// True for `0.0.0.0/0` and `::/0`, which are always refused.
    pub fn is_whole_internet(&self) -> bool {
        self.0.prefix_len() == 0
    }

    /// How much of `family`'s address space the union of `cidrs` covers, from 0 to 1:
    /// overlapping networks count once, so `0.0.0.0/1` and `128.0.0.0/1` together are 1.
    pub fn share_of(family: Family, cidrs: &[Cidr]) -> f64 {
        let nets: Vec<IpNet> = cidrs.iter().filter(|c| c.family() == family).map(|c| c.0).collect();
        IpNet::aggregate(&nets).iter().map(|n| 0.5f64.powi(i32::from(n.prefix_len()))).sum()
    }

    /// True for loopback, private, link-local, documentation, shared, multicast and other
    /// special-purpose ranges (IANA special-purpose registries), which a policy may refuse.
    pub fn is_special_purpose(&self) -> bool {
        match self.0 {
            IpNet::V4(n) => {
                const SPECIAL: &[(Ipv4Addr, u8)] = &[
                    (Ipv4Addr::new(0, 0, 0, 0), 8),
                    (Ipv4Addr::new(10, 0, 0, 0), 8),
                    (Ipv4Addr::new(100, 64, 0, 0), 10),
                    (Ipv4Addr::new(127, 0, 0, 0), 8),
                    (Ipv4Addr::new(169, 254, 0, 0), 16),
                    (Ipv4Addr::new(172, 16, 0, 0), 12),
                    (Ipv4Addr::new(192, 0, 0, 0), 24),
                    (Ipv4Addr::new(192, 0, 2, 0), 24),
                    (Ipv4Addr::new(192, 168, 0, 0), 16),
                    (Ipv4Addr::new(198, 18, 0, 0), 15),
                    (Ipv4Addr::new(198, 51, 100, 0), 24),
                    (Ipv4Addr::new(203, 0, 113, 0), 24),
                    (Ipv4Addr::new(224, 0, 0, 0), 4),
                    (Ipv4Addr::new(240, 0, 0, 0), 4),
                ];
                SPECIAL.iter().any(|(addr, len)| {
                    let range = Ipv4Net::new(*addr, *len).expect("valid constant");
                    range.contains(&n) || n.contains(&range)
                })
            }
            IpNet::V6(n) => {
                const SPECIAL: &[(&str, u8)] = &[
                    ("::", 96),
                    ("64:ff9b::", 96),
                    ("100::", 64),
                    ("2001::", 23),
                    ("2001:db8::", 32),
                    ("fc00::", 7),
                    ("fe80::", 10),
                    ("ff00::", 8),
                ];
                SPECIAL.iter().any(|(addr, len)| {
                    let range = Ipv6Net::new(addr.parse().expect("valid constant"), *len).expect("valid constant");
                    range.contains(&n) || n.contains(&range)
                })
            }
        }
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for Cidr {
    type Err = InvalidInput;
    fn from_str(s: &str) -> Result<Cidr, InvalidInput> {
        Cidr::parse(s)
    }
}

impl Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cidr, D::Error> {
        let text = String::deserialize(d)?;
        Cidr::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_counts_a_family_s_union_once() {
        let cidrs = |list: &[&str]| list.iter().map(|c| Cidr::parse(c).unwrap()).collect::<Vec<_>>();
        assert_eq!(Cidr::share_of(Family::Ipv4, &cidrs(&["0.0.0.0/1", "128.0.0.0/1"])), 1.0);
        assert_eq!(Cidr::share_of(Family::Ipv4, &cidrs(&["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"])), 1.0);
        assert_eq!(Cidr::share_of(Family::Ipv4, &cidrs(&["10.0.0.0/8", "10.1.0.0/16"])), 1.0 / 256.0);
        assert_eq!(Cidr::share_of(Family::Ipv6, &cidrs(&["2000::/3", "0.0.0.0/1"])), 0.125);
        assert_eq!(Cidr::share_of(Family::Ipv6, &cidrs(&["10.0.0.0/8"])), 0.0);
    }
    use proptest::prelude::*;

    fn canon(s: &str) -> String {
        Cidr::parse(s).unwrap().to_string()
    }

    #[test]
    fn canonical_forms() {
        assert_eq!(canon("1.2.3.4"), "1.2.3.4/32");
        assert_eq!(canon(" 1.2.3.4/24 "), "1.2.3.0/24");
        assert_eq!(canon("2001:DB8::1"), "2001:db8::1/128");
        assert_eq!(canon("2001:db8::1/48"), "2001:db8::/48");
        assert_eq!(canon("::ffff:198.51.100.7"), "198.51.100.7/32");
        assert_eq!(canon("::ffff:198.51.100.7/120"), "198.51.100.0/24");
        assert_eq!(canon("0.0.0.0/0"), "0.0.0.0/0");
    }

    #[test]
    fn malformed_input_is_refused_with_reason() {
        for bad in ["", "1.2.3", "1.2.3.4/33", "1.2.3.4/", "1.2.3.4/-1", "::1/129", "x", "1.2.3.4/1a", "1.2.3.4 /32", "01.2.3.4"]
        {
            let err = Cidr::parse(bad).unwrap_err();
            assert!(matches!(err, InvalidInput::InvalidAddress { .. }), "{bad}: {err}");
        }
    }

    #[test]
    fn special_purpose() {
        assert!(Cidr::parse("10.1.2.3").unwrap().is_special_purpose());
        assert!(Cidr::parse("198.51.100.7").unwrap().is_special_purpose());
        assert!(Cidr::parse("2001:db8::1").unwrap().is_special_purpose());
        assert!(!Cidr::parse("8.8.8.8").unwrap().is_special_purpose());
        assert!(!Cidr::parse("2a00:1450::1").unwrap().is_special_purpose());
    }

    proptest! {
        #[test]
        fn canonicalising_twice_is_once(addr in any::<IpAddr>(), len in 0u8..=128) {
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let text = format!("{addr}/{}", len % (max + 1));
            let once = Cidr::parse(&text).unwrap();
            let twice = Cidr::parse(&once.to_string()).unwrap();
            prop_assert_eq!(once, twice);
            prop_assert_eq!(once.net(), once.net().trunc());
        }

        #[test]
        fn mapped_ipv6_is_ipv4(v4 in any::<Ipv4Addr>()) {
            let mapped = format!("{}", v4.to_ipv6_mapped());
            prop_assert_eq!(Cidr::parse(&mapped).unwrap(), Cidr::parse(&v4.to_string()).unwrap());
        }

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,64}") {
            let _ = Cidr::parse(&text);
        }
    }
}
