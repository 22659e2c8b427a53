//! What an apply does about a failed call, by class of error (kube-runtime's `error_policy`).
//!
//! | class       | codes (EC2's, and none)                                   | within the round             |
//! |-------------|-----------------------------------------------------------|------------------------------|
//! | `Transient` | throttling, 5xx, a timeout or a dropped connection (no code) | observe again after a jittered backoff, the first within 1 s |
//! | `Conflict`  | `InvalidPermission.Duplicate`/`.NotFound`, `RulesPerSecurityGroupLimitExceeded` | observe again at once: another writer changed the group |
//! | `Denied`    | `UnauthorizedOperation`, `AccessDenied`, `AuthFailure`, … | none: reported (status, log); the periodic reconcile tries again |
//! | `GroupGone` | `InvalidGroup.NotFound`                                  | none: the group is dropped from this round and reported |
//! | `Permanent` | anything else (a malformed request)                      | none: reported                |
//!
//! A round is one observe, plan and apply; an apply makes at most [`ROUNDS`] of them. What is
//! left after that (and everything `Denied`, `GroupGone` or `Permanent`) is in the report, in
//! `/v1/status` and the log, and the next change, sweep or periodic reconcile tries again, so
//! nothing loops hot. An expired grant whose revoke failed stays stored (overdue) and the
//! sweeper retries it with its own backoff (`sweeper`).

use std::time::Duration;

use crate::ReconcileReport;

/// At most this many rounds (observe, plan, apply) per apply.
pub const ROUNDS: u32 = 4;

/// The pause before the first transient retry; it doubles each round (100, 200, 400 ms before
/// jitter), so the three retries take under a second in all.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What kind of failure a firewall call met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    Transient,
    Conflict,
    Denied,
    GroupGone,
    Permanent,
}

impl ErrorClass {
    /// The class of a failure with the service's error `code` (none: no answer came).
    pub fn of(code: Option<&str>) -> ErrorClass {
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
}

/// After round `round` (from 0) produced `report`: the pause before the next round, or `None`
/// when the apply is done (succeeded, or failed in a way another round would not cure).
pub fn next_round(report: &ReconcileReport, round: u32) -> Option<Duration> {
    if round + 1 >= ROUNDS {
        return None;
    }
    let classes: Vec<ErrorClass> = report
        .outcomes
        .iter()
        .filter(|o| o.error.is_some())
        .map(|o| ErrorClass::of(o.code.as_deref()))
        .chain(report.observe_failures.iter().map(|f| ErrorClass::of(f.code.as_deref())))
        .collect();
    if classes.contains(&ErrorClass::Transient) {
        let base = FIRST_BACKOFF.saturating_mul(1 << round);
        Some(Duration::from_micros(crate::jitter_down(base.as_micros() as u64)))
    } else if classes.contains(&ErrorClass::Conflict) {
        Some(Duration::ZERO)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_codes() {
        assert_eq!(ErrorClass::of(None), ErrorClass::Transient);
        assert_eq!(ErrorClass::of(Some("RequestLimitExceeded")), ErrorClass::Transient);
        assert_eq!(ErrorClass::of(Some("Unavailable")), ErrorClass::Transient);
        assert_eq!(ErrorClass::of(Some("InvalidPermission.Duplicate")), ErrorClass::Conflict);
        assert_eq!(ErrorClass::of(Some("PrefixListVersionMismatch")), ErrorClass::Conflict);
        assert_eq!(ErrorClass::of(Some("IncorrectState")), ErrorClass::Transient);
        assert_eq!(ErrorClass::of(Some("RulesPerSecurityGroupLimitExceeded")), ErrorClass::Conflict);
        assert_eq!(ErrorClass::of(Some("UnauthorizedOperation")), ErrorClass::Denied);
        assert_eq!(ErrorClass::of(Some("InvalidGroup.NotFound")), ErrorClass::GroupGone);
        assert_eq!(ErrorClass::of(Some("InvalidParameterValue")), ErrorClass::Permanent);
    }
}
