//! What an apply does about a failed call, by class of error (kube-runtime's `error_policy`).
//! The engine matches classes only: the adapter that made the call says which class the
//! service's answer is (`portcullis-aws`'s `classify` maps EC2's error codes).
//!
//! | class       | what failed                                              | within the round             |
//! |-------------|----------------------------------------------------------|------------------------------|
//! | `Transient` | throttling, 5xx, a timeout or a dropped connection       | observe again after a jittered backoff, the first within 1 s |
//! | `Conflict`  | another writer changed the group (a duplicate, a rule gone, a quota met, a stale version) | observe again at once |
//! | `Denied`    | the credentials may not (unauthorized, expired, opted out) | none: reported (status, log); the periodic reconcile tries again |
//! | `GroupGone` | the security group does not exist                        | none: the group is dropped from this round and reported |
//! | `Permanent` | anything else (a malformed request)                      | none: reported                |
//!
//! A round is one observe, plan and apply; an apply makes at most [`ROUNDS`] of them. What is
//! left after that (and everything `Denied`, `GroupGone` or `Permanent`) is in the report, in
//! `/v1/status` and the log, and the next change, sweep or periodic reconcile tries again, so
//! nothing loops hot. An expired grant whose revoke failed stays stored (overdue) and the
//! sweeper retries it with its own backoff (`sweeper`).

use std::time::Duration;

use serde::Serialize;

use crate::ReconcileReport;

/// At most this many rounds (observe, plan, apply) per apply.
pub const ROUNDS: u32 = 4;

/// The pause before the first transient retry; it doubles each round (100, 200, 400 ms before
/// jitter), so the three retries take under a second in all.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// What kind of failure a firewall call met.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    Transient,
    Conflict,
    Denied,
    GroupGone,
    Permanent,
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
        .map(|o| o.class.unwrap_or(ErrorClass::Transient))
        .chain(report.observe_failures.iter().map(|f| f.class))
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
