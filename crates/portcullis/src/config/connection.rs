//! `[connection]` (who is believed about a caller's address, and how many changes and events a
//! principal may make) and `[auth.iam]` (IAM logins through STS).

use serde::Deserialize;

use super::{ConfigError, Env, error};

/// `[connection]`: the self-service endpoint.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileConnection {
    pub(super) trusted_proxies: Option<Vec<String>>,
    pub(super) trusted_proxies_max_share: Option<f64>,
    pub(super) rate_limit_per_minute: Option<u32>,
    pub(super) events_per_minute: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileAuth {
    pub(super) iam: Option<FileIam>,
}

/// `[auth.iam]`: AWS IAM authentication by a signed `sts:GetCallerIdentity`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct FileIam {
    pub(super) server_id: String,
    pub(super) sts_endpoint: Option<String>,
    pub(super) max_skew_secs: Option<u64>,
}

/// `POST|DELETE /connection`.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// Peers whose `X-Forwarded-For`/`Forwarded` is believed.
    pub trusted_proxies: Vec<portcullis_core::Cidr>,
    /// Mutating requests per principal per minute (all of `/connection` and `/v1`).
    pub rate_limit_per_minute: u32,
    /// AWS events (`POST /v1/events`) per principal per minute: a limit of their own, so a
    /// burst of lifecycle events never uses up a person's changes (a token with the `events`
    /// role is not limited).
    pub events_per_minute: u32,
}

/// AWS IAM authentication.
#[derive(Debug, Clone)]
pub struct IamConfig {
    /// The value clients must sign into `X-Portcullis-Server-ID`.
    pub server_id: String,
    /// The STS endpoint requests are forwarded to (and must be signed for).
    pub sts_endpoint: String,
    /// How far a request's `X-Amz-Date` may be from now.
    pub max_skew: time::Duration,
}

/// How much of an address family `trusted_proxies` may cover by default: 1 % (a /8 of IPv4,
/// or IPv6's unique local fc00::/7, are within it).
pub(super) const TRUSTED_SHARE: f64 = 0.01;

pub(super) fn connection(file: &FileConnection) -> Result<ConnectionConfig, ConfigError> {
    let rate = file.rate_limit_per_minute.unwrap_or(30);
    if rate == 0 {
        return Err(error("connection.rate_limit_per_minute", "must be at least 1"));
    }
    let events = file.events_per_minute.unwrap_or(1200);
    if events == 0 {
        return Err(error("connection.events_per_minute", "must be at least 1"));
    }
    let mut trusted_proxies = Vec::new();
    for text in file.trusted_proxies.iter().flatten() {
        trusted_proxies.push(portcullis_core::Cidr::parse(text).map_err(|e| error("connection.trusted_proxies", e))?);
    }
    let max_share = file.trusted_proxies_max_share.unwrap_or(TRUSTED_SHARE);
    if !(0.0..1.0).contains(&max_share) {
        return Err(error("connection.trusted_proxies_max_share", "must be at least 0 and less than 1"));
    }
    // Trusting every peer (or a good part of the internet) would let anyone choose the address
    // they are allowed from. The networks count together: two /1s are the whole internet.
    for family in [portcullis_core::Family::Ipv4, portcullis_core::Family::Ipv6] {
        let share = portcullis_core::Cidr::share_of(family, &trusted_proxies);
        if share >= 1.0 || share > max_share {
            return Err(error(
                "connection.trusted_proxies",
                format!(
                    "together they cover {:.4} % of {family} addresses, more than trusted_proxies_max_share ({} %) allows: \
                     that would trust peers nobody controls; name your proxies' addresses",
                    share * 100.0,
                    max_share * 100.0
                ),
            ));
        }
    }
    Ok(ConnectionConfig { trusted_proxies, rate_limit_per_minute: rate, events_per_minute: events })
}

pub(super) fn iam(file: &FileIam, env: Env<'_>) -> Result<IamConfig, ConfigError> {
    let server_id = file.server_id.trim();
    if server_id.is_empty() || server_id.len() > 255 || !server_id.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(error("auth.iam.server_id", "must be 1-255 visible ASCII characters, e.g. the server's host name"));
    }
    // Like the SDK: a service-specific endpoint variable, then the general one, then AWS's.
    let sts_endpoint = file
        .sts_endpoint
        .clone()
        .or_else(|| env("AWS_ENDPOINT_URL_STS"))
        .or_else(|| env("AWS_ENDPOINT_URL"))
        .unwrap_or_else(|| "https://sts.amazonaws.com".into());
    let valid = sts_endpoint
        .split_once("://")
        .is_some_and(|(scheme, rest)| matches!(scheme, "https" | "http") && !rest.is_empty() && !rest.contains(['?', '#', '@']));
    if !valid {
        return Err(error("auth.iam.sts_endpoint", format!("{sts_endpoint:?} is not an http(s) URL")));
    }
    let skew = file.max_skew_secs.unwrap_or(300);
    if !(1..=900).contains(&skew) {
        return Err(error("auth.iam.max_skew_secs", "must be from 1 to 900"));
    }
    Ok(IamConfig {
        server_id: server_id.to_string(),
        sts_endpoint: sts_endpoint.trim_end_matches('/').to_string(),
        max_skew: time::Duration::seconds(skew as i64),
    })
}
