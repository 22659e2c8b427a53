//! AWS's error codes, translated to the engine's error classes: the one place a code is matched
//! to decide what happens next (`portcullis_engine::ErrorClass`, and its error policy).

use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use portcullis_engine::{ErrorClass, FirewallError};

/// The class of a failure with the service's error `code` (none: no answer came).
pub fn classify(code: Option<&str>) -> ErrorClass {
    let Some(code) = code else { return ErrorClass::Transient };
    match code {
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "RequestThrottledException"
        | "TooManyRequestsException"
        | "SlowDown"
        | "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "RequestTimeout"
        | "RequestTimeoutException"
        // A prefix list with a modification in progress: wait, then try again.
        | "IncorrectState" => ErrorClass::Transient,
        "InvalidPermission.Duplicate"
        | "InvalidPermission.NotFound"
        | "InvalidSecurityGroupRuleId.NotFound"
        | "RulesPerSecurityGroupLimitExceeded"
        // A prefix list someone changed since it was observed: observe again, plan anew.
        | "PrefixListVersionMismatch" => ErrorClass::Conflict,
        "UnauthorizedOperation"
        | "AccessDenied"
        | "AccessDeniedException"
        | "AuthFailure"
        | "InvalidClientTokenId"
        | "UnrecognizedClientException"
        | "ExpiredToken"
        | "OptInRequired"
        | "Blocked" => ErrorClass::Denied,
        "InvalidGroup.NotFound" => ErrorClass::GroupGone,
        _ => ErrorClass::Permanent,
    }
}

/// An error with `code` and `message`, classified.
pub(crate) fn coded(code: &str, message: impl Into<String>) -> FirewallError {
    FirewallError::new(classify(Some(code)), message).with_code(code)
}

/// An SDK error's code, and a message naming it (`Code: message`, else the whole error chain).
pub(crate) fn error_parts<E, R>(err: &SdkError<E, R>) -> (Option<String>, String)
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let message = match (err.code(), err.message()) {
        (Some(code), Some(message)) => format!("{code}: {message}"),
        _ => aws_smithy_types::error::display::DisplayErrorContext(err).to_string(),
    };
    (err.code().map(str::to_string), message)
}

/// An SDK error as the engine's firewall error: classified by its code.
pub(crate) fn firewall_error<E, R>(err: SdkError<E, R>) -> FirewallError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let (code, message) = error_parts(&err);
    FirewallError { class: classify(code.as_deref()), code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_codes() {
        assert_eq!(classify(None), ErrorClass::Transient);
        assert_eq!(classify(Some("RequestLimitExceeded")), ErrorClass::Transient);
        assert_eq!(classify(Some("Unavailable")), ErrorClass::Transient);
        assert_eq!(classify(Some("InvalidPermission.Duplicate")), ErrorClass::Conflict);
        assert_eq!(classify(Some("PrefixListVersionMismatch")), ErrorClass::Conflict);
        assert_eq!(classify(Some("IncorrectState")), ErrorClass::Transient);
        assert_eq!(classify(Some("RulesPerSecurityGroupLimitExceeded")), ErrorClass::Conflict);
        assert_eq!(classify(Some("UnauthorizedOperation")), ErrorClass::Denied);
        assert_eq!(classify(Some("InvalidGroup.NotFound")), ErrorClass::GroupGone);
        assert_eq!(classify(Some("InvalidParameterValue")), ErrorClass::Permanent);
    }
}
