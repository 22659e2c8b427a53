//! AWS IAM authentication, as Vault's IAM auth method does it: the client signs an
//! `sts:GetCallerIdentity` request with its own credentials and hands it over unsent; the server
//! checks it is exactly that request, bound to this server and fresh, sends it to the one STS
//! endpoint it is configured with, and trusts the ARN STS answers with.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{SignableBody, SignableRequest, SigningSettings, sign};
use aws_sigv4::sign::v4;
use portcullis_core::Timestamp;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The header that binds a signed request to one server; it must be among the signed headers.
pub const SERVER_ID_HEADER: &str = "x-portcullis-server-id";
/// The only request body accepted (form fields in any order).
const BODY: &str = "Action=GetCallerIdentity&Version=2011-06-15";

/// A signed, unsent `GetCallerIdentity` request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IamLogin {
    pub method: String,
    pub url: String,
    /// Header names in lower case.
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Who STS says signed the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallerIdentity {
    pub arn: String,
    pub account: String,
    pub user_id: String,
}

#[derive(Debug, Error)]
pub enum IamError {
    /// The request is not one we accept, or STS refused its signature: the caller is not
    /// authenticated.
    #[error("IAM authentication refused: {0}")]
    Refused(String),
    /// STS could not be asked (network, STS failure): try again later.
    #[error("IAM authentication unavailable: {0}")]
    Unavailable(String),
    /// The client could not sign (no credentials).
    #[error("cannot sign the IAM request: {0}")]
    Signing(String),
}

fn refused(message: impl Into<String>) -> IamError {
    IamError::Refused(message.into())
}

/// `scheme://authority` of a URL, lower-cased, without a path.
fn authority(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split(['/', '?', '#']).next().filter(|h| !h.is_empty())?;
    Some(format!("{}://{}", scheme.to_ascii_lowercase(), host.to_ascii_lowercase()))
}

/// Signs `GetCallerIdentity` for `sts_endpoint` with `sdk`'s credentials at `time`.
pub async fn sign_login(
    sdk: &aws_config::SdkConfig,
    sts_endpoint: &str,
    server_id: &str,
    time: SystemTime,
) -> Result<IamLogin, IamError> {
    let provider = sdk.credentials_provider().ok_or_else(|| IamError::Signing("no AWS credentials are configured".into()))?;
    let credentials = provider.provide_credentials().await.map_err(|e| IamError::Signing(e.to_string()))?;
    let region = sdk.region().map(|r| r.to_string()).unwrap_or_else(|| "us-east-1".into());
    // The global endpoint signs for us-east-1, whatever the client's region.
    let region = if sts_endpoint.contains("://sts.amazonaws.com") { "us-east-1".to_string() } else { region };
    sign_with(credentials, &region, sts_endpoint, server_id, time)
}

/// [`sign_login`] with explicit credentials.
pub fn sign_with(
    credentials: aws_credential_types::Credentials,
    region: &str,
    sts_endpoint: &str,
    server_id: &str,
    time: SystemTime,
) -> Result<IamLogin, IamError> {
    let url = format!("{}/", sts_endpoint.trim_end_matches('/'));
    let mut headers = BTreeMap::from([
        ("content-type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string()),
        (SERVER_ID_HEADER.to_string(), server_id.to_string()),
    ]);
    let identity = credentials.into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("sts")
        .time(time)
        .settings(SigningSettings::default())
        .build()
        .map_err(|e| IamError::Signing(e.to_string()))?
        .into();
    let signable = SignableRequest::new(
        "POST",
        &url,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        SignableBody::Bytes(BODY.as_bytes()),
    )
    .map_err(|e| IamError::Signing(e.to_string()))?;
    let (instructions, _) = sign(signable, &params).map_err(|e| IamError::Signing(e.to_string()))?.into_parts();
    for (name, value) in instructions.headers() {
        headers.insert(name.to_ascii_lowercase(), value.to_string());
    }
    Ok(IamLogin { method: "POST".into(), url, headers, body: BODY.into() })
}

/// The parts of a SigV4 `Authorization` header we check.
struct Authorization<'a> {
    service: &'a str,
    signed_headers: Vec<&'a str>,
    signature: &'a str,
}

fn parse_authorization(value: &str) -> Option<Authorization<'_>> {
    let rest = value.strip_prefix("AWS4-HMAC-SHA256 ")?;
    let mut fields = HashMap::new();
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        fields.insert(k, v);
    }
    // Credential=AKID/20260101/us-east-1/sts/aws4_request
    let scope: Vec<&str> = fields.get("Credential")?.split('/').collect();
    if scope.len() != 5 || scope[4] != "aws4_request" {
        return None;
    }
    Some(Authorization {
        service: scope[3],
        signed_headers: fields.get("SignedHeaders")?.split(';').collect(),
        signature: fields.get("Signature")?,
    })
}

fn parse_amz_date(text: &str) -> Option<Timestamp> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::PrimitiveDateTime::parse(text, format).ok().map(|t| t.assume_utc())
}

/// The text of the first `<tag>…</tag>` in an XML document.
fn xml_text<'a>(xml: &'a str, tag: &str) -> Option<&'a str> {
    let open = format!("<{tag}>");
    let start = xml.find(&open)? + open.len();
    let end = xml[start..].find(&format!("</{tag}>"))? + start;
    Some(xml[start..end].trim())
}

/// Checks signed logins and asks STS who signed them.
pub struct IamVerifier {
    sts_endpoint: String,
    server_id: String,
    max_skew: time::Duration,
    http: reqwest::Client,
    /// Signatures accepted recently, with when they may be forgotten: a captured request cannot
    /// be replayed against this process while it is fresh.
    seen: Mutex<HashMap<String, Timestamp>>,
}

impl IamVerifier {
    pub fn new(sts_endpoint: &str, server_id: &str, max_skew: time::Duration) -> IamVerifier {
        let http = reqwest::Client::builder()
            // Only ever the configured endpoint: never follow STS (or anything posing as it)
            // elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .expect("an HTTP client");
        IamVerifier {
            sts_endpoint: sts_endpoint.trim_end_matches('/').to_string(),
            server_id: server_id.to_string(),
            max_skew,
            http,
            seen: Mutex::new(HashMap::new()),
        }
    }

    pub fn server_id(&self) -> &str {
        &self.server_id
    }

    /// Everything that can be checked without STS; returns the parsed signature.
    fn check<'a>(&self, login: &'a IamLogin, now: Timestamp) -> Result<Authorization<'a>, IamError> {
        if login.method != "POST" {
            return Err(refused(format!("the method must be POST, not {:?}", login.method)));
        }
        let path = login.url.split_once("://").map(|(_, rest)| rest.find('/').map_or("/", |i| &rest[i..]));
        if authority(&login.url) != authority(&self.sts_endpoint) || path != Some("/") {
            return Err(refused(format!("the request must be signed for {}/, not {:?}", self.sts_endpoint, login.url)));
        }
        let fields: Vec<(String, String)> =
            serde_urlencoded::from_str(&login.body).map_err(|_| refused("the body is not a form"))?;
        let mut fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        fields.sort();
        if fields != [("Action", "GetCallerIdentity"), ("Version", "2011-06-15")] {
            return Err(refused("only sts:GetCallerIdentity (Action=GetCallerIdentity&Version=2011-06-15) is accepted"));
        }
        let header = |name: &str| login.headers.get(name).map(String::as_str);
        let auth = header("authorization")
            .and_then(parse_authorization)
            .ok_or_else(|| refused("the Authorization header is not an AWS SigV4 (AWS4-HMAC-SHA256) signature"))?;
        if auth.service != "sts" {
            return Err(refused(format!("the request is signed for {:?}, not sts", auth.service)));
        }
        if !auth.signed_headers.contains(&SERVER_ID_HEADER) {
            return Err(refused(format!("{SERVER_ID_HEADER} must be a signed header")));
        }
        if header(SERVER_ID_HEADER) != Some(self.server_id.as_str()) {
            return Err(refused(format!(
                "the request is bound to another server (its {SERVER_ID_HEADER} is not {:?})",
                self.server_id
            )));
        }
        if !auth.signed_headers.contains(&"x-amz-date") {
            return Err(refused("x-amz-date must be a signed header"));
        }
        let date = header("x-amz-date").and_then(parse_amz_date).ok_or_else(|| refused("X-Amz-Date is missing or malformed"))?;
        if (now - date).abs() > self.max_skew {
            return Err(refused(format!(
                "the request was signed at {date}, more than {} s from now",
                self.max_skew.whole_seconds()
            )));
        }
        for name in &auth.signed_headers {
            if *name != "host" && header(name).is_none() {
                return Err(refused(format!("the signed header {name} is missing")));
            }
        }
        Ok(auth)
    }

    /// The key under which a login is remembered against replay (its signature), once it
    /// passes the local checks, and how long it must be remembered: while a copy of it could
    /// still pass them.
    pub fn replay_key(&self, login: &IamLogin, now: Timestamp) -> Result<(String, time::Duration), IamError> {
        let auth = self.check(login, now)?;
        Ok((format!("iam:{}", auth.signature), self.max_skew * 2))
    }

    /// Verifies a login: checks it, refuses a replay, and asks STS.
    pub async fn verify(&self, login: &IamLogin, now: Timestamp) -> Result<CallerIdentity, IamError> {
        let auth = self.check(login, now)?;
        let signature = auth.signature;
        {
            let mut seen = self.seen.lock().expect("replay cache poisoned");
            seen.retain(|_, until| *until > now);
            if seen.contains_key(signature) {
                return Err(refused("this signed request was used before"));
            }
        }
        let mut request = self.http.post(format!("{}/", self.sts_endpoint)).body(login.body.clone());
        // Exactly the signed headers (the client's Host is implied by the URL) and the signature.
        for name in auth.signed_headers.iter().filter(|n| **n != "host").chain(std::iter::once(&"authorization")) {
            if let Some(value) = login.headers.get(*name) {
                request = request.header(*name, value);
            }
        }
        let response = request.send().await.map_err(|e| IamError::Unavailable(format!("STS at {}: {e}", self.sts_endpoint)))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| IamError::Unavailable(format!("STS at {}: {e}", self.sts_endpoint)))?;
        if status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(IamError::Unavailable(format!("STS answered {status}")));
        }
        if !status.is_success() {
            let code = xml_text(&text, "Code").unwrap_or("unknown error");
            return Err(refused(format!("STS refused the signature: {code}")));
        }
        let field = |tag| xml_text(&text, tag).map(str::to_string);
        let (Some(arn), Some(account)) = (field("Arn"), field("Account")) else {
            return Err(IamError::Unavailable("STS answered without an Arn".into()));
        };
        let mut seen = self.seen.lock().expect("replay cache poisoned");
        if seen.insert(signature.to_string(), now + self.max_skew * 2).is_some() {
            return Err(refused("this signed request was used before"));
        }
        Ok(CallerIdentity { arn, account, user_id: field("UserId").unwrap_or_default() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(server_id: &str, at: SystemTime) -> IamLogin {
        let creds = aws_credential_types::Credentials::new("AKIDEXAMPLE", "secret", None, None, "test");
        sign_with(creds, "us-east-1", "https://sts.amazonaws.com", server_id, at).unwrap()
    }

    /// A fixed time: the checks are about the login's own date, not the machine's.
    fn at() -> SystemTime {
        SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_780_000_000)
    }

    fn verifier() -> IamVerifier {
        IamVerifier::new("https://sts.amazonaws.com", "portcullis.example", time::Duration::minutes(5))
    }

    #[test]
    fn a_signed_login_passes_the_local_checks() {
        let now = at();
        let l = login("portcullis.example", now);
        assert!(l.headers["authorization"].contains("x-portcullis-server-id"));
        verifier().check(&l, Timestamp::from(now)).unwrap();
    }

    #[test]
    fn local_checks_refuse() {
        let now = at();
        let v = verifier();
        let ts = Timestamp::from(now);
        let refused = |l: &IamLogin| matches!(v.check(l, ts), Err(IamError::Refused(_)));
        assert!(refused(&login("other.example", now)), "bound to another server");
        assert!(refused(&login("portcullis.example", now - std::time::Duration::from_secs(600))), "stale");
        let mut l = login("portcullis.example", now);
        l.body = "Action=AssumeRole&Version=2011-06-15&RoleArn=x".into();
        assert!(refused(&l), "another action");
        let mut l = login("portcullis.example", now);
        l.url = "https://evil.example/".into();
        assert!(refused(&l), "another host");
        let mut l = login("portcullis.example", now);
        l.method = "GET".into();
        assert!(refused(&l));
        let mut l = login("portcullis.example", now);
        l.headers.insert("authorization".into(), l.headers["authorization"].replace("x-portcullis-server-id", "x-other"));
        assert!(refused(&l), "server id not signed");
        let mut l = login("portcullis.example", now);
        l.headers.insert("authorization".into(), l.headers["authorization"].replace("/sts/", "/s3/"));
        assert!(refused(&l), "another service");
    }

    #[test]
    fn xml_fields() {
        let xml = "<GetCallerIdentityResponse><GetCallerIdentityResult><Arn>arn:aws:iam::1:user/a</Arn>\
                   <UserId>AID</UserId><Account>1</Account></GetCallerIdentityResult></GetCallerIdentityResponse>";
        assert_eq!(xml_text(xml, "Arn"), Some("arn:aws:iam::1:user/a"));
        assert_eq!(xml_text(xml, "Account"), Some("1"));
        assert_eq!(xml_text(xml, "Nope"), None);
        assert_eq!(authority("HTTPS://STS.amazonaws.com/x"), Some("https://sts.amazonaws.com".into()));
    }
}
