//! Slack request signing: `v0=` HMAC-SHA256 over `v0:{timestamp}:{raw body}`, hex.
//!
//! <https://api.slack.com/authentication/verifying-requests-from-slack>

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use thiserror::Error;

/// Requests whose timestamp is further than this from now are refused (replay protection).
pub const MAX_SKEW_SECS: i64 = 300;

/// The header carrying the request's Unix time.
pub const TIMESTAMP_HEADER: &str = "x-slack-request-timestamp";
/// The header carrying `v0=<hex>`.
pub const SIGNATURE_HEADER: &str = "x-slack-signature";

/// Why a request's signature was refused. Each says only what is wrong with the request,
/// never anything about the secret.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureError {
    #[error("missing {0} header")]
    Missing(&'static str),
    #[error("{TIMESTAMP_HEADER} is not a Unix time")]
    BadTimestamp,
    #[error("request timestamp is {0} s from now, more than the {MAX_SKEW_SECS} s allowed")]
    Stale(i64),
    #[error("{SIGNATURE_HEADER} is not v0=<64 hex digits>")]
    Malformed,
    #[error("signature does not match")]
    Mismatch,
}

/// The secret Slack signs requests with. Its `Debug` never shows it.
#[derive(Clone)]
pub struct SigningSecret(Vec<u8>);

impl SigningSecret {
    pub fn new(secret: impl Into<Vec<u8>>) -> SigningSecret {
        SigningSecret(secret.into())
    }

    fn mac(&self, timestamp: &str, body: &[u8]) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC accepts keys of any length");
        mac.update(b"v0:");
        mac.update(timestamp.as_bytes());
        mac.update(b":");
        mac.update(body);
        mac
    }

    /// The `x-slack-signature` value Slack would send for this request.
    pub fn sign(&self, timestamp: &str, body: &[u8]) -> String {
        format!("v0={}", hex::encode(self.mac(timestamp, body).finalize().into_bytes()))
    }

    /// Checks a request's headers against its raw body at Unix time `now`; the comparison is
    /// constant-time.
    pub fn verify(&self, timestamp: Option<&str>, signature: Option<&str>, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let timestamp = timestamp.ok_or(SignatureError::Missing(TIMESTAMP_HEADER))?;
        let signature = signature.ok_or(SignatureError::Missing(SIGNATURE_HEADER))?;
        let at: i64 = timestamp.trim().parse().map_err(|_| SignatureError::BadTimestamp)?;
        let skew = at.saturating_sub(now);
        if skew.saturating_abs() > MAX_SKEW_SECS {
            return Err(SignatureError::Stale(skew));
        }
        let given = signature
            .strip_prefix("v0=")
            .and_then(|h| hex::decode(h).ok())
            .filter(|b| b.len() == 32)
            .ok_or(SignatureError::Malformed)?;
        self.mac(timestamp, body).verify_slice(&given).map_err(|_| SignatureError::Mismatch)
    }
}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret(..)")
    }
}

/// The signing secret in use and, during a rotation, the next one: a request signed with
/// either verifies, so rotating the secret in Slack causes no downtime.
#[derive(Clone)]
pub struct SigningSecrets {
    pub current: SigningSecret,
    pub next: Option<SigningSecret>,
}

impl SigningSecrets {
    /// A secret's value as kept in Secrets Manager: the bare secret, or JSON with
    /// `signing_secret` and, while rotating, `next_signing_secret`.
    pub fn from_secret_value(raw: &str) -> Result<SigningSecrets, crate::SecretError> {
        let current = SigningSecret::new(crate::secret_field(raw, "signing_secret")?);
        let next = match raw.trim().starts_with('{') {
            true => match crate::secret_field(raw, "next_signing_secret") {
                Ok(next) => Some(SigningSecret::new(next)),
                Err(crate::SecretError::MissingKey(_)) => None,
                Err(e) => return Err(e),
            },
            false => None,
        };
        Ok(SigningSecrets { current, next })
    }

    /// Verifies against the current secret, then the next; the current one's error if neither.
    pub fn verify(&self, timestamp: Option<&str>, signature: Option<&str>, body: &[u8], now: i64) -> Result<(), SignatureError> {
        let first = self.current.verify(timestamp, signature, body, now);
        match (&first, &self.next) {
            (Err(SignatureError::Mismatch), Some(next)) => next.verify(timestamp, signature, body, now),
            _ => first,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Slack's published example (../shared/fixtures/slack-signature.json).
    const SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
    const TS: &str = "1531420618";
    const BODY: &str = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
    const EXPECTED: &str = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";

    #[test]
    fn during_a_rotation_either_secret_verifies() {
        let (old, new) = (SigningSecret::new("old"), SigningSecret::new("new"));
        let body = b"text=list";
        let secrets = SigningSecrets::from_secret_value(r#"{"signing_secret": "old", "next_signing_secret": "new"}"#).unwrap();
        for signer in [&old, &new] {
            let signature = signer.sign("1000", body);
            assert!(secrets.verify(Some("1000"), Some(&signature), body, 1000).is_ok());
        }
        let wrong = SigningSecret::new("wrong").sign("1000", body);
        assert_eq!(secrets.verify(Some("1000"), Some(&wrong), body, 1000), Err(SignatureError::Mismatch));
        let only_old = SigningSecrets::from_secret_value("old").unwrap();
        assert!(only_old.verify(Some("1000"), Some(&new.sign("1000", body)), body, 1000).is_err());
        assert!(only_old.next.is_none());
    }

    #[test]
    fn slacks_example() {
        let s = SigningSecret::new(SECRET);
        assert_eq!(s.sign(TS, BODY.as_bytes()), EXPECTED);
        assert_eq!(s.verify(Some(TS), Some(EXPECTED), BODY.as_bytes(), 1531420618 + 10), Ok(()));
    }

    #[test]
    fn refusals() {
        let s = SigningSecret::new(SECRET);
        let now = 1531420618;
        let v = |ts: Option<&str>, sig: Option<&str>, body: &str, now: i64| s.verify(ts, sig, body.as_bytes(), now);
        assert_eq!(v(Some(TS), Some(EXPECTED), &format!("{BODY}x"), now), Err(SignatureError::Mismatch));
        assert_eq!(v(None, Some(EXPECTED), BODY, now), Err(SignatureError::Missing(TIMESTAMP_HEADER)));
        assert_eq!(v(Some(TS), None, BODY, now), Err(SignatureError::Missing(SIGNATURE_HEADER)));
        assert_eq!(v(Some(TS), Some(EXPECTED), BODY, now + 301), Err(SignatureError::Stale(-301)));
        assert_eq!(v(Some(TS), Some(EXPECTED), BODY, now - 301), Err(SignatureError::Stale(301)));
        assert_eq!(v(Some("soon"), Some(EXPECTED), BODY, now), Err(SignatureError::BadTimestamp));
        assert_eq!(v(Some(TS), Some("v1=abc"), BODY, now), Err(SignatureError::Malformed));
        assert_eq!(v(Some(TS), Some(&EXPECTED[..20]), BODY, now), Err(SignatureError::Malformed));
        let other = SigningSecret::new("another secret");
        assert_eq!(other.verify(Some(TS), Some(EXPECTED), BODY.as_bytes(), now), Err(SignatureError::Mismatch));
        assert_eq!(format!("{s:?}"), "SigningSecret(..)");
    }
}
