//! What the engine measures for `/metrics`: how long applies and reconciles take and how they
//! end, and how long past its expiry each grant's rules were gone. The binary registers these
//! beside its own (HTTP requests, AWS calls) and the gauges it reads when scraped
//! ([`Engine::gauges`](crate::Engine::gauges)).
//!
//! Durations are measured on the monotonic clock: they are reported, never stored or compared
//! with a stored time. Expiry lag is measured on the engine's [`Clock`](crate::Clock), since it
//! is a distance from a stored `expires_at` (and so runs on virtual time in the tests).

use std::collections::BTreeMap;

use portcullis_core::{Environment, Source};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};

use crate::{Cause, EngineError, ReconcileReport};

/// A reconcile's labels: why it ran, and how it ended (`ok`, `failed`: some group or region
/// was left as it was, `error`: it could not run, the store failing, say).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub cause: &'static str,
    pub outcome: &'static str,
}

/// The engine's own metrics; cheap to clone (each part is shared).
#[derive(Debug, Clone)]
pub struct Metrics {
    reconcile: Family<ReconcileLabels, Histogram, fn() -> Histogram>,
    expiry_lag: Histogram,
    /// Requesters who applied their own change for a time (guard's break-glass).
    pub(crate) break_glass: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        fn durations() -> Histogram {
            // 5 ms to about 80 s: an apply on a quiet group to a slow region retried four times.
            Histogram::new(exponential_buckets(0.005, 2.0, 15))
        }
        Metrics {
            reconcile: Family::new_with_constructor(durations),
            // 1 ms to about 65 s: the sweeper's target is under a second, a retried revoke longer.
            expiry_lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            break_glass: Counter::default(),
        }
    }
}

impl Metrics {
    /// Registers every metric of the engine's under `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "portcullis_guard_break_glass",
            "Break-glass decisions: requesters who applied their own change for a time",
            self.break_glass.clone(),
        );
        registry.register_with_unit(
            "portcullis_reconcile_duration",
            "Applies and reconciles (observe, plan, apply and any retry rounds), by cause and outcome",
            Unit::Seconds,
            self.reconcile.clone(),
        );
        registry.register_with_unit(
            "portcullis_expiry_lag",
            "How long past its expires_at each expired grant's rules were gone",
            Unit::Seconds,
            self.expiry_lag.clone(),
        );
    }

    /// Records one reconcile or apply that started at `started` (monotonic).
    pub(crate) fn reconciled(&self, cause: Cause, started: std::time::Instant, result: &Result<ReconcileReport, EngineError>) {
        let outcome = match result {
            Ok(report) if report.failed() => "failed",
            Ok(_) => "ok",
            Err(_) => "error",
        };
        self.reconcile
            .get_or_create(&ReconcileLabels { cause: cause.as_str(), outcome })
            .observe(started.elapsed().as_secs_f64());
    }

    /// Records that an expired grant's rules were gone `lag` after its expiry.
    pub(crate) fn expired(&self, lag: time::Duration) {
        self.expiry_lag.observe(lag.as_seconds_f64().max(0.0));
    }
}

/// What the gauges show, read from the store when `/metrics` is scraped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Live grants by environment and source.
    pub live_grants: BTreeMap<(Environment, Source), usize>,
    /// Announcements not yet delivered.
    pub outbox_pending: usize,
    /// Whether this process holds the sweeper lease (`None`: it runs without one).
    pub lease_held: Option<bool>,
    /// Guard's change requests awaiting a decision (0 without guard).
    pub pending_requests: usize,
}
