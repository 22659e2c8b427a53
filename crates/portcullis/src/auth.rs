//! Who is calling the HTTP API: an API token (`Authorization: Bearer …`) or an AWS IAM principal
//! (`Authorization: PortcullisIAM <base64 JSON of a signed sts:GetCallerIdentity>`), and from
//! which address.

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::HeaderMap;
use base64::Engine as _;
use portcullis_aws::iam::{CallerIdentity, IamError, IamLogin, IamVerifier};
use portcullis_core::{ApiToken, Cidr, Credential, Environment, Interface, Owner, Role, TokenState, principal_name};
use portcullis_engine::{Engine, Requester};
use sha2::{Digest, Sha256};

/// The `Authorization` scheme of an IAM login.
pub const IAM_SCHEME: &str = "PortcullisIAM";
/// Every token starts with this, so secret scanners and people can recognise one.
pub const TOKEN_PREFIX: &str = "pct_";

/// The operating system gave no randomness for a new token.
#[derive(Debug, thiserror::Error)]
#[error("no randomness for a token: {0}")]
pub struct IssueError(getrandom::Error);

/// A forwarding header that cannot be read, from a trusted proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardingError {
    #[error("{0} is not text")]
    NotText(String),
    #[error("{header}: {value:?} is not an address")]
    NotAnAddress { header: &'static str, value: String },
}

/// A new token: the prefix and 256 random bits.
fn new_token() -> Result<String, IssueError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(IssueError)?;
    Ok(format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)))
}

/// What the store keeps of a token: its SHA-256, in hex.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A token's public id: the start of its hash.
fn token_id(hash: &str) -> String {
    hash[..12].to_string()
}

/// A new token for `user`: the secret (to show once) and what the store keeps.
pub fn issue(
    user: &str,
    role: Role,
    environments: std::collections::BTreeSet<Environment>,
    created_at: portcullis_core::Timestamp,
    expires_at: Option<portcullis_core::Timestamp>,
    created_by: &str,
) -> Result<(String, ApiToken), IssueError> {
    let secret = new_token()?;
    let hash = token_hash(&secret);
    let token = ApiToken {
        id: token_id(&hash),
        hash,
        user: user.to_string(),
        role,
        environments,
        created_at,
        expires_at,
        revoked_at: None,
        created_by: created_by.to_string(),
    };
    Ok((secret, token))
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub enum Principal {
    Token(ApiToken),
    Iam(CallerIdentity),
}

impl Principal {
    /// The id policy matches: a token's user, or the IAM ARN.
    pub fn id(&self) -> &str {
        match self {
            Principal::Token(t) => &t.user,
            Principal::Iam(i) => &i.arn,
        }
    }

    /// Admin tokens may use `/v1`; IAM principals are self-service.
    pub fn is_admin(&self) -> bool {
        matches!(self, Principal::Token(t) if t.role == Role::Admin)
    }

    /// A token for AWS events only (`POST /v1/events`).
    pub fn is_events(&self) -> bool {
        matches!(self, Principal::Token(t) if t.role == Role::Events)
    }

    pub fn requester(&self) -> Requester {
        let owner = match self {
            Principal::Token(t) => Owner::named(&t.user),
            Principal::Iam(i) => {
                Owner { id: i.arn.clone(), name: principal_name(&i.arn).to_string(), display_name: i.arn.clone() }
            }
        };
        let credential = match self {
            Principal::Token(t) => t.credential(),
            Principal::Iam(i) => Credential::Iam { arn: i.arn.clone() },
        };
        Requester { owner, groups: Vec::new(), interface: Interface::Http, credential }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("authentication required: send Authorization: Bearer <token> (or an IAM login)")]
    Missing,
    #[error("{0}")]
    Invalid(String),
    /// The IAM path could not reach STS.
    #[error("{0}")]
    Unavailable(String),
}

/// Checks credentials against the store (tokens, looked up on every request so a revocation
/// takes effect at once) and STS (IAM).
pub struct Authenticator {
    engine: Arc<Engine>,
    iam: Option<IamVerifier>,
}

impl Authenticator {
    pub fn new(engine: Arc<Engine>, iam: Option<IamVerifier>) -> Authenticator {
        Authenticator { engine, iam }
    }

    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let value = headers.get(axum::http::header::AUTHORIZATION).ok_or(AuthError::Missing)?;
        let value = value.to_str().map_err(|_| AuthError::Invalid("the Authorization header is not text".into()))?;
        let (scheme, credentials) =
            value.trim().split_once(' ').ok_or_else(|| AuthError::Invalid("malformed Authorization header".into()))?;
        let credentials = credentials.trim();
        if scheme.eq_ignore_ascii_case("Bearer") {
            self.token(credentials).await
        } else if scheme.eq_ignore_ascii_case(IAM_SCHEME) {
            self.iam(credentials).await
        } else {
            Err(AuthError::Invalid(format!("unknown Authorization scheme {scheme:?}: use Bearer or {IAM_SCHEME}")))
        }
    }

    async fn token(&self, token: &str) -> Result<Principal, AuthError> {
        let invalid = || AuthError::Invalid("invalid token".into());
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
            return Err(invalid());
        }
        let found = self.engine.grants().token_by_hash(&token_hash(token)).await.map_err(|e| {
            tracing::error!(error = %e, "cannot read tokens");
            AuthError::Unavailable(format!("cannot check the token: {e}"))
        })?;
        let token = found.ok_or_else(invalid)?;
        match token.state(self.engine.clock().now()) {
            TokenState::Valid => Ok(Principal::Token(token)),
            TokenState::Revoked => Err(AuthError::Invalid(format!("token {} was revoked", token.id))),
            TokenState::Expired => Err(AuthError::Invalid(format!("token {} has expired", token.id))),
        }
    }

    async fn iam(&self, credentials: &str) -> Result<Principal, AuthError> {
        let Some(verifier) = &self.iam else {
            return Err(AuthError::Invalid("IAM authentication is not enabled on this server ([auth.iam])".into()));
        };
        let login = decode_iam_login(credentials)?;
        let now = self.engine.clock().now();
        // Replays are refused by every replica: the signature is claimed in the store.
        let (key, window) = verifier.replay_key(&login, now).map_err(|e| AuthError::Invalid(e.to_string()))?;
        match self.engine.grants().first_use(&key, window).await {
            Ok(true) => {}
            Ok(false) => return Err(AuthError::Invalid("this signed request was used before".into())),
            Err(e) => return Err(AuthError::Unavailable(format!("cannot check the login against replays: {e}"))),
        }
        match verifier.verify(&login, now).await {
            Ok(identity) => Ok(Principal::Iam(identity)),
            Err(IamError::Unavailable(m)) => Err(AuthError::Unavailable(m)),
            Err(e) => Err(AuthError::Invalid(e.to_string())),
        }
    }
}

/// Decodes what follows the IAM scheme in an `Authorization` header (`iam_header`'s inverse).
pub fn decode_iam_login(credentials: &str) -> Result<IamLogin, AuthError> {
    let json = base64::engine::general_purpose::STANDARD
        .decode(credentials)
        .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(credentials))
        .map_err(|_| AuthError::Invalid("the IAM login is not base64".into()))?;
    serde_json::from_slice(&json).map_err(|e| AuthError::Invalid(format!("the IAM login is not valid JSON: {e}")))
}

/// Encodes a login for the `Authorization` header.
pub fn iam_header(login: &IamLogin) -> String {
    let json = serde_json::to_vec(login).expect("logins serialise");
    format!("{IAM_SCHEME} {}", base64::engine::general_purpose::STANDARD.encode(json))
}

/// The client's address: the socket peer, or what a trusted proxy says it forwarded for.
/// Proxies' headers are read right to left, skipping trusted hops, so a client cannot choose
/// its address by sending its own `X-Forwarded-For`.
pub fn client_address(peer: IpAddr, headers: &HeaderMap, trusted: &[Cidr]) -> Result<IpAddr, ForwardingError> {
    let peer = peer.to_canonical();
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|c| c.net().contains(&ip.to_canonical()));
    if !is_trusted(&peer) {
        return Ok(peer);
    }
    let hops = forwarded_hops(headers)?;
    let mut client = peer;
    for hop in hops.iter().rev() {
        client = hop.to_canonical();
        if !is_trusted(&client) {
            break;
        }
    }
    Ok(client)
}

/// The addresses a request was forwarded for, oldest first: `Forwarded` (RFC 7239) if present,
/// else `X-Forwarded-For`.
fn forwarded_hops(headers: &HeaderMap) -> Result<Vec<IpAddr>, ForwardingError> {
    let all = |name: &str| -> Result<Vec<String>, ForwardingError> {
        headers
            .get_all(name)
            .iter()
            .map(|v| v.to_str().map(str::to_string).map_err(|_| ForwardingError::NotText(name.to_string())))
            .collect()
    };
    let forwarded = all("forwarded")?;
    if !forwarded.is_empty() {
        let mut out = Vec::new();
        for element in forwarded.iter().flat_map(|v| v.split(',')) {
            let Some(value) = element.split(';').find_map(|pair| {
                let (k, v) = pair.trim().split_once('=')?;
                k.eq_ignore_ascii_case("for").then_some(v.trim().trim_matches('"'))
            }) else {
                continue;
            };
            // for=192.0.2.1, for="192.0.2.1:8080", for="[2001:db8::1]:443"; obfuscated ids are refused.
            let host = match value.strip_prefix('[') {
                Some(rest) => rest.split(']').next().unwrap_or_default(),
                None => value.split(':').next().unwrap_or_default(),
            };
            let not_an_address = || ForwardingError::NotAnAddress { header: "Forwarded", value: value.to_string() };
            out.push(host.parse().map_err(|_| not_an_address())?);
        }
        return Ok(out);
    }
    let mut out = Vec::new();
    for part in all("x-forwarded-for")?.iter().flat_map(|v| v.split(',')) {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        out.push(part.parse().map_err(|_| ForwardingError::NotAnAddress { header: "X-Forwarded-For", value: part.to_string() })?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let proxy: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted = [Cidr::parse("10.0.0.0/8").unwrap()];
        let xff = headers(&[("x-forwarded-for", "198.51.100.1, 203.0.113.9")]);
        // Untrusted peer: its headers mean nothing.
        assert_eq!(client_address("192.0.2.7".parse().unwrap(), &xff, &trusted).unwrap(), "192.0.2.7".parse::<IpAddr>().unwrap());
        // Trusted proxy: the last hop it saw, not what the client wrote further left.
        assert_eq!(client_address(proxy, &xff, &trusted).unwrap(), "203.0.113.9".parse::<IpAddr>().unwrap());
        // Chains of trusted proxies are skipped.
        let chain = headers(&[("x-forwarded-for", "203.0.113.9, 10.1.1.1")]);
        assert_eq!(client_address(proxy, &chain, &trusted).unwrap(), "203.0.113.9".parse::<IpAddr>().unwrap());
        let fwd = headers(&[("forwarded", "for=\"[2001:db8::7]:443\";proto=https")]);
        assert_eq!(client_address(proxy, &fwd, &trusted).unwrap(), "2001:db8::7".parse::<IpAddr>().unwrap());
        assert!(client_address(proxy, &headers(&[("x-forwarded-for", "nonsense")]), &trusted).is_err());
        // No header: the proxy itself.
        assert_eq!(client_address(proxy, &HeaderMap::new(), &trusted).unwrap(), proxy);
        // IPv4-mapped peers count as IPv4.
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(client_address(mapped, &xff, &[]).unwrap(), "192.0.2.7".parse::<IpAddr>().unwrap());
        // Loopback is not trusted by default.
        assert_eq!(client_address("127.0.0.1".parse().unwrap(), &xff, &[]).unwrap(), "127.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn tokens() {
        let t = new_token().unwrap();
        assert!(t.starts_with(TOKEN_PREFIX) && t.len() > 40);
        assert_ne!(t, new_token().unwrap());
        assert_eq!(token_hash(&t).len(), 64);
        assert_eq!(token_id(&token_hash(&t)).len(), 12);
    }
}
