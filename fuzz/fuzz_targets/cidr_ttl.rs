//! Addresses and durations as users type them (`1.2.3.4`, `2001:db8::/64`, `7d`, `90`).
//!
//! Beyond "never panics": what parses displays as text that parses to the same value, and a
//! TTL survives the serde round trip the stores use.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis_core::{Cidr, Description, Environment, PortSet, Ttl, UserName};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(cidr) = Cidr::parse(text) {
        assert_eq!(Cidr::parse(&cidr.to_string()).as_ref(), Ok(&cidr), "{text:?} → {cidr}");
        assert!(cidr.net().trunc() == cidr.net(), "{text:?} → {cidr} has host bits set");
    }
    for ttl in [Ttl::parse(text), Ttl::parse_or_seconds(text)].into_iter().flatten() {
        let json = serde_json::to_string(&ttl).expect("a TTL serialises");
        let back: Ttl = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{text:?} → {json} does not read back: {e}"));
        assert_eq!(back, ttl);
        assert_eq!(Ttl::from_seconds(u64::from(ttl.seconds())).as_ref(), Ok(&ttl));
    }
    if let Ok(ttl) = Ttl::parse(text) {
        assert_eq!(Ttl::parse(&ttl.to_string()).as_ref(), Ok(&ttl), "{text:?} → {ttl}");
    }
    if let Ok(d) = Description::parse(text) {
        assert_eq!(Description::parse(d.as_str()).as_ref(), Ok(&d), "{text:?}: a description parses to itself");
    }
    if let Ok(e) = Environment::parse(text) {
        assert_eq!(Environment::parse(e.as_str()).as_ref(), Ok(&e));
    }
    if let Ok(u) = UserName::parse(text) {
        assert_eq!(UserName::parse(u.as_str()).as_ref(), Ok(&u));
    }
    if let Ok(ports) = PortSet::parse(text) {
        assert_eq!(PortSet::parse(&ports.to_string()).as_ref(), Ok(&ports), "{text:?} → {ports}");
    }
});
