//! The IAM login a client sends in `Authorization: PortcullisIAM <base64 JSON>`, and the SigV4
//! `Authorization` header inside it, through every check made before STS is asked.
//!
//! Beyond "never panics": a login is only ever accepted with the signature it carries as its
//! replay key, and never when it is bound to another server.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use portcullis::auth::{IAM_SCHEME, decode_iam_login};
use portcullis_aws::iam::{IamLogin, IamVerifier, SERVER_ID_HEADER};
use portcullis_core::Timestamp;

const STS: &str = "https://sts.amazonaws.com";
const SERVER_ID: &str = "portcullis.example.com";

fn verifier() -> &'static IamVerifier {
    static VERIFIER: OnceLock<IamVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| IamVerifier::new(STS, SERVER_ID, time::Duration::minutes(5)))
}

fn now() -> Timestamp {
    time::macros::datetime!(2026-06-01 00:00:00 UTC)
}

/// A login that passes every local check, with `authorization` as its SigV4 header.
fn login(authorization: &str) -> IamLogin {
    let headers = BTreeMap::from([
        ("authorization".to_string(), authorization.to_string()),
        ("content-type".to_string(), "application/x-www-form-urlencoded; charset=utf-8".to_string()),
        ("x-amz-date".to_string(), "20260601T000000Z".to_string()),
        (SERVER_ID_HEADER.to_string(), SERVER_ID.to_string()),
    ]);
    IamLogin {
        method: "POST".into(),
        url: format!("{STS}/"),
        headers,
        body: "Action=GetCallerIdentity&Version=2011-06-15".into(),
    }
}

fn check(login: &IamLogin) {
    let Ok((key, window)) = verifier().replay_key(login, now()) else { return };
    let signature = key.strip_prefix("iam:").expect("replay keys are iam:<signature>");
    let authorization = &login.headers["authorization"];
    assert!(authorization.contains(&format!("Signature={signature}")), "{key} is not the signature of {authorization:?}");
    assert_eq!(login.headers.get(SERVER_ID_HEADER).map(String::as_str), Some(SERVER_ID), "accepted for another server");
    assert!(window > time::Duration::ZERO);
}

fuzz_target!(|data: &[u8]| {
    // The template must itself pass, or the third check below explores nothing.
    static TEMPLATE: std::sync::Once = std::sync::Once::new();
    TEMPLATE.call_once(|| {
        let sample = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260601/us-east-1/sts/aws4_request, \
                      SignedHeaders=content-type;host;x-amz-date;x-portcullis-server-id, Signature=abc123";
        assert!(verifier().replay_key(&login(sample), now()).is_ok(), "the template login is refused");
    });
    let Ok(text) = std::str::from_utf8(data) else { return };
    // The credentials of the whole header, as `Authenticator` decodes them.
    let credentials = text.strip_prefix(IAM_SCHEME).map_or(text, str::trim);
    if let Ok(login) = decode_iam_login(credentials) {
        check(&login);
    }
    // The login's JSON.
    if let Ok(login) = serde_json::from_str::<IamLogin>(text) {
        check(&login);
    }
    // The SigV4 header inside a login that is otherwise acceptable.
    check(&login(text));
});
