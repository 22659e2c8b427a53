//! Grants as items of the docustack IP Whitelist Manager's DynamoDB table, so a table written by the old Lambda reads
//! correctly here and the other way round.
//!
//! The IP Whitelist Manager's attributes: `ip_address` (partition key), `environment` (sort key), `added_at`
//! and `expires_at` (ISO 8601 with `+00:00`, as Python's `isoformat()` writes them), `ttl`
//! (epoch seconds, DynamoDB's TTL attribute), `user_id`, `username`, `description`. What only
//! portcullis needs is kept in extra attributes prefixed `pc_`, which the old Lambda ignores.
//!
//! Pure: no AWS types. The DynamoDB adapter and the stream parsers convert to and from [`Item`].

use std::collections::BTreeMap;

use portcullis_core::{Cidr, Description, Environment, ExternalChange, ExternalKind, Grant, GrantKey, Owner, Source, Timestamp};
use time::format_description::well_known::Rfc3339;

/// One attribute value; its schema uses strings and numbers only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attr {
    S(String),
    /// A number, as DynamoDB sends it (decimal text).
    N(String),
    /// Any other type, which no attribute of the schema has.
    Other,
}

/// An item: attribute name to value.
pub type Item = BTreeMap<String, Attr>;

/// An item in DynamoDB JSON (`{"S": "…"}`, `{"N": "…"}`), as stream events carry it; `None`
/// when the value is not an object.
pub fn item_from_json(value: Option<&serde_json::Value>) -> Option<Item> {
    let serde_json::Value::Object(map) = value? else { return None };
    Some(
        map.iter()
            .map(|(k, v)| {
                let text = |tag| v.get(tag).and_then(serde_json::Value::as_str);
                let attr = match (text("S"), text("N")) {
                    (Some(s), _) => Attr::S(s.to_string()),
                    (None, Some(n)) => Attr::N(n.to_string()),
                    _ => Attr::Other,
                };
                (k.clone(), attr)
            })
            .collect(),
    )
}

pub const IP_ADDRESS: &str = "ip_address";
pub const ENVIRONMENT: &str = "environment";
pub const ADDED_AT: &str = "added_at";
pub const EXPIRES_AT: &str = "expires_at";
pub const TTL: &str = "ttl";
pub const USER_ID: &str = "user_id";
pub const USERNAME: &str = "username";
pub const DESCRIPTION: &str = "description";
/// The owner's display name (portcullis only).
pub const DISPLAY_NAME: &str = "pc_display_name";
/// How the grant came to be (portcullis only; its items are `manual`).
pub const SOURCE: &str = "pc_source";
/// Set by portcullis on an item it is about to delete, naming why (`removed:<audit id>` or
/// `expired:<audit id>`): the REMOVE stream record then shows the deletion was ours and has
/// been announced already. An item carrying it is no longer a grant.
pub const REMOVAL: &str = "pc_removal";

/// `2025-01-10T12:00:00+00:00`, or with microseconds when there are any (as Python writes).
pub fn iso(t: Timestamp) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    let (date, clock) = (t.date(), t.time());
    let base = format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        date.year(),
        u8::from(date.month()),
        date.day(),
        clock.hour(),
        clock.minute(),
        clock.second()
    );
    match clock.microsecond() {
        0 => format!("{base}+00:00"),
        micros => format!("{base}.{micros:06}+00:00"),
    }
}

/// A timestamp as the items keep it: whole microseconds.
pub fn to_micros(t: Timestamp) -> Timestamp {
    let nanos = t.unix_timestamp_nanos();
    Timestamp::from_unix_timestamp_nanos(nanos - nanos.rem_euclid(1_000)).expect("in range")
}

/// Parses an ISO 8601 timestamp with an offset (`+00:00` or `Z`); a naive one is taken as UTC.
pub fn parse_iso(text: &str) -> Option<Timestamp> {
    Timestamp::parse(text, &Rfc3339)
        .ok()
        .or_else(|| Timestamp::parse(&format!("{text}+00:00"), &Rfc3339).ok())
        .map(|t| t.to_offset(time::UtcOffset::UTC))
}

fn s(item: &Item, name: &str) -> Option<String> {
    match item.get(name) {
        Some(Attr::S(v)) => Some(v.clone()),
        _ => None,
    }
}

fn n(item: &Item, name: &str) -> Option<i64> {
    match item.get(name) {
        Some(Attr::N(v)) => v.split('.').next().and_then(|i| i.parse().ok()),
        _ => None,
    }
}

/// The item that stores a grant.
pub fn to_item(g: &Grant) -> Item {
    let mut item = key_item(&g.key());
    let mut put = |k: &str, v: Attr| {
        item.insert(k.to_string(), v);
    };
    put(ADDED_AT, Attr::S(iso(g.created_at)));
    if let Some(at) = g.expires_at {
        put(EXPIRES_AT, Attr::S(iso(at)));
        put(TTL, Attr::N(at.unix_timestamp().to_string()));
    }
    put(USER_ID, Attr::S(g.owner.id.clone()));
    put(USERNAME, Attr::S(g.owner.name.clone()));
    put(DESCRIPTION, Attr::S(g.description.as_str().to_string()));
    if !g.owner.display_name.is_empty() {
        put(DISPLAY_NAME, Attr::S(g.owner.display_name.clone()));
    }
    put(SOURCE, Attr::S(g.source.as_str().to_string()));
    item
}

/// The key attributes of a grant's item.
pub fn key_item(key: &GrantKey) -> Item {
    Item::from([
        (IP_ADDRESS.to_string(), Attr::S(key.cidr.to_string())),
        (ENVIRONMENT.to_string(), Attr::S(key.environment.to_string())),
    ])
}

/// Why portcullis is deleting this item, if it is.
pub fn removal(item: &Item) -> Option<String> {
    s(item, REMOVAL)
}

/// Why an item is not a grant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ItemError {
    #[error("no {0}")]
    Missing(&'static str),
    #[error(transparent)]
    Invalid(#[from] portcullis_core::InvalidInput),
    #[error("unknown {SOURCE} {0:?}")]
    UnknownSource(String),
    #[error("{attribute} {value:?} is not ISO 8601")]
    NotIso { attribute: &'static str, value: String },
    #[error("ttl {0} is out of range")]
    TtlOutOfRange(i64),
    #[error("no expires_at or ttl")]
    NoExpiry,
}

/// 9999-12-31T23:59:59Z, the last second the ISO form (four-digit years) can write.
const MAX_TTL_SECS: i64 = 253_402_300_799;

/// Reads a grant from an item, as the old Lambda or portcullis wrote it. Lenient where the
/// old Lambda was (a missing user name or description); an error names what is wrong.
pub fn from_item(item: &Item) -> Result<Grant, ItemError> {
    let raw_ip = s(item, IP_ADDRESS).ok_or(ItemError::Missing(IP_ADDRESS))?;
    let cidr = Cidr::parse(&raw_ip)?;
    let raw_env = s(item, ENVIRONMENT).ok_or(ItemError::Missing(ENVIRONMENT))?;
    let environment = Environment::parse(&raw_env)?;
    let source = match s(item, SOURCE) {
        Some(text) => Source::parse(&text).ok_or(ItemError::UnknownSource(text))?,
        None => Source::Manual,
    };
    // Kept to whole microseconds, as `to_item` writes them, so a grant read and written back
    // reads the same.
    let iso = |attribute: &'static str, text: String| {
        parse_iso(&text).map(to_micros).ok_or(ItemError::NotIso { attribute, value: text })
    };
    let expires_at = match (s(item, EXPIRES_AT), n(item, TTL)) {
        (Some(text), _) => Some(iso(EXPIRES_AT, text)?),
        // Epoch seconds the ISO form can write (years 1970 to 9999); DynamoDB's TTL ignores
        // anything else, and so do we.
        (None, Some(secs)) if !(0..=MAX_TTL_SECS).contains(&secs) => return Err(ItemError::TtlOutOfRange(secs)),
        (None, Some(secs)) => Some(Timestamp::from_unix_timestamp(secs).map_err(|_| ItemError::TtlOutOfRange(secs))?),
        (None, None) if source.may_be_permanent() => None,
        (None, None) => return Err(ItemError::NoExpiry),
    };
    let created_at = match s(item, ADDED_AT) {
        Some(text) => iso(ADDED_AT, text)?,
        None => expires_at.unwrap_or(Timestamp::UNIX_EPOCH),
    };
    // Names other writers chose are shown in lists and announcements: nothing invisible in them.
    let visible = |t: String| -> String { t.chars().filter(|c| !c.is_control() && !portcullis_core::is_spoofing(*c)).collect() };
    let id = visible(s(item, USER_ID).unwrap_or_default());
    let name = s(item, USERNAME)
        .map(visible)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| if id.is_empty() { "unknown".into() } else { id.clone() });
    let owner = Owner {
        id: if id.is_empty() { name.clone() } else { id },
        name,
        display_name: s(item, DISPLAY_NAME).unwrap_or_default(),
    };
    let description = description_lenient(&s(item, DESCRIPTION).unwrap_or_default());
    Ok(Grant { cidr, environment, owner, source, description, created_at, expires_at })
}

/// A description another writer stored: kept when valid, else made valid (control characters
/// become spaces, cut to the maximum length) rather than hiding the grant.
fn description_lenient(text: &str) -> Description {
    Description::parse(text).unwrap_or_else(|_| {
        let cleaned: String = text
            .chars()
            .map(|c| if c.is_control() || portcullis_core::is_spoofing(c) { ' ' } else { c })
            .take(Description::MAX_CHARS)
            .collect();
        Description::parse(&cleaned).unwrap_or_else(|_| Description::parse("").expect("empty is valid"))
    })
}

/// What a stream record says was done to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Modify,
    Remove,
}

impl ChangeKind {
    /// DynamoDB's `eventName`.
    pub fn parse(name: &str) -> Option<ChangeKind> {
        match name {
            "INSERT" => Some(ChangeKind::Insert),
            "MODIFY" => Some(ChangeKind::Modify),
            "REMOVE" => Some(ChangeKind::Remove),
            _ => None,
        }
    }
}

/// A stream record of the grants table, its images as items (from the SDK or the Lambda
/// event's JSON).
#[derive(Debug, Clone, PartialEq)]
pub struct StreamItems {
    pub event_id: String,
    pub sequence: String,
    pub kind: ChangeKind,
    /// Made by the DynamoDB service itself (`userIdentity` principal `dynamodb.amazonaws.com`):
    /// a TTL deletion.
    pub by_service: bool,
    pub keys: Item,
    pub old: Option<Item>,
    pub new: Option<Item>,
}

/// A record that could not even be read as [`StreamItems`].
pub fn unreadable_record(event_id: Option<String>, sequence: Option<String>, error: impl Into<String>) -> ExternalChange {
    ExternalChange { id: event_id, sequence, kind: ExternalKind::Unreadable { environment: None, error: error.into() } }
}

/// What a record means, in the domain's words: the environment from its keys (or old image),
/// and for a removal, whose it was and the grant removed.
pub fn external_change(record: StreamItems) -> ExternalChange {
    let kind = external_kind(&record);
    ExternalChange { id: Some(record.event_id), sequence: Some(record.sequence), kind }
}

fn external_kind(record: &StreamItems) -> ExternalKind {
    let unreadable = |environment: Option<Environment>, error: String| ExternalKind::Unreadable { environment, error };
    let Some(name) = s(&record.keys, ENVIRONMENT).or_else(|| record.old.as_ref().and_then(|o| s(o, ENVIRONMENT))) else {
        return unreadable(None, "no environment in its keys".into());
    };
    let environment = match Environment::parse(&name) {
        Ok(env) => env,
        Err(e) => return unreadable(None, e.to_string()),
    };
    if record.kind != ChangeKind::Remove {
        // A written item that is not a grant (wrong attribute types, say) is refused on
        // record, not just skipped by the next scan.
        return match record.new.as_ref().map(from_item) {
            Some(Err(error)) => unreadable(Some(environment), format!("the new item is not a grant: {error}")),
            _ => ExternalKind::Written { environment },
        };
    }
    let old = record.old.as_ref().unwrap_or(&record.keys);
    if removal(old).is_some() {
        return ExternalKind::RemovedByUs { environment };
    }
    match from_item(old) {
        Ok(grant) if record.by_service => ExternalKind::Expired { grant },
        Ok(grant) => ExternalKind::RemovedOutside { grant },
        Err(error) => unreadable(Some(environment), error.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(kind: ChangeKind, new: Option<Item>) -> StreamItems {
        let keys = Item::from([
            (IP_ADDRESS.to_string(), Attr::S("203.0.113.7/32".into())),
            (ENVIRONMENT.to_string(), Attr::S("dev".into())),
        ]);
        StreamItems { event_id: "e1".into(), sequence: "1".into(), kind, by_service: false, keys, old: None, new }
    }

    #[test]
    fn a_written_item_that_is_not_a_grant_is_unreadable() {
        let mut item = Item::from([
            (IP_ADDRESS.to_string(), Attr::S("203.0.113.7/32".into())),
            (ENVIRONMENT.to_string(), Attr::S("dev".into())),
            (EXPIRES_AT.to_string(), Attr::N("1780000000".into())),
        ]);
        let change = external_change(record(ChangeKind::Insert, Some(item.clone())));
        let ExternalKind::Unreadable { environment, error } = change.kind else { panic!("{change:?}") };
        assert_eq!(environment.map(|e| e.to_string()).as_deref(), Some("dev"));
        assert!(error.contains("not a grant"), "{error}");
        item.insert(EXPIRES_AT.to_string(), Attr::S("2026-06-01T00:00:00+00:00".into()));
        let change = external_change(record(ChangeKind::Modify, Some(item)));
        assert!(matches!(change.kind, ExternalKind::Written { .. }), "{change:?}");
    }
    /// Found by the `seed_item` fuzz target: an item with only a `ttl` far in the past read
    /// as a grant expiring in year -366, which `to_item` wrote as text no reader accepts.
    #[test]
    fn a_ttl_the_iso_form_cannot_write_is_refused_and_what_reads_writes_back_the_same() {
        let item = |extra: (&str, Attr)| {
            Item::from([
                (IP_ADDRESS.to_string(), Attr::S("1.2.3.34/2".into())),
                (ENVIRONMENT.to_string(), Attr::S("dev".into())),
                (ADDED_AT.to_string(), Attr::S("2025-01-10T12:00:00+00:01".into())),
                (extra.0.to_string(), extra.1),
            ])
        };
        assert_eq!(from_item(&item((TTL, Attr::N("-73700115200".into())))), Err(ItemError::TtlOutOfRange(-73_700_115_200)));
        assert_eq!(from_item(&item((TTL, Attr::N("253402300800".into())))), Err(ItemError::TtlOutOfRange(253_402_300_800)));
        for extra in [
            (TTL, Attr::N("253402300799".into())),
            (TTL, Attr::N("0".into())),
            (EXPIRES_AT, Attr::S("2026-06-01T00:00:00.123456789+00:00".into())),
        ] {
            let grant = from_item(&item(extra)).unwrap();
            assert_eq!(from_item(&to_item(&grant)), Ok(grant));
        }
    }

    use time::macros::datetime;

    fn seed_item() -> Item {
        let s = |v: &str| Attr::S(v.into());
        Item::from([
            ("ip_address".into(), s("1.2.3.4/32")),
            ("environment".into(), s("dev")),
            ("added_at".into(), s("2025-01-10T12:00:00+00:00")),
            ("expires_at".into(), s("2025-01-17T12:00:00+00:00")),
            ("ttl".into(), Attr::N("1737115200".into())),
            ("user_id".into(), s("U01234567")),
            ("username".into(), s("john.doe")),
            ("description".into(), s("Home office")),
        ])
    }

    #[test]
    fn reads_the_seed_item() {
        let g = from_item(&seed_item()).unwrap();
        assert_eq!(g.cidr.to_string(), "1.2.3.4/32");
        assert_eq!(g.environment.as_str(), "dev");
        assert_eq!(g.owner.id, "U01234567");
        assert_eq!(g.owner.name, "john.doe");
        assert_eq!(g.description.as_str(), "Home office");
        assert_eq!(g.created_at, datetime!(2025-01-10 12:00 UTC));
        assert_eq!(g.expires_at, Some(datetime!(2025-01-17 12:00 UTC)));
        assert_eq!(g.source, Source::Manual);
    }

    #[test]
    fn writes_the_seed_schema_and_round_trips() {
        let g = from_item(&seed_item()).unwrap();
        let item = to_item(&g);
        for (k, v) in seed_item() {
            assert_eq!(item.get(&k), Some(&v), "{k}");
        }
        assert_eq!(from_item(&item).unwrap(), g);
    }

    #[test]
    fn iso_matches_python_isoformat() {
        assert_eq!(iso(datetime!(2025-01-17 12:00 UTC)), "2025-01-17T12:00:00+00:00");
        assert_eq!(iso(datetime!(2025-01-17 12:00:00.25 UTC)), "2025-01-17T12:00:00.250000+00:00");
        assert_eq!(parse_iso("2025-01-17T12:00:00.250000+00:00"), Some(datetime!(2025-01-17 12:00:00.25 UTC)));
        assert_eq!(parse_iso("2025-01-17T12:00:00"), Some(datetime!(2025-01-17 12:00 UTC)));
    }

    #[test]
    fn old_lambda_items_with_little_in_them_still_read() {
        let mut item = seed_item();
        item.remove("username");
        item.remove("description");
        item.remove("expires_at");
        let g = from_item(&item).unwrap();
        assert_eq!(g.owner.name, "U01234567");
        assert_eq!(g.expires_at, Some(datetime!(2025-01-17 12:00 UTC)));
        item.remove("ttl");
        assert!(from_item(&item).unwrap_err().to_string().contains("expires_at"));
        item.insert("ip_address".into(), Attr::S("nonsense".into()));
        assert!(from_item(&item).is_err());
    }
}
