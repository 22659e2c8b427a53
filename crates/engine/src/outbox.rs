//! Delivering announcements from the store's outbox.
//!
//! Every announced change (added, removed, expired, drift repaired) is written to the outbox
//! in the same transaction as the change, leased to the process that made it. [`Outbox`]
//! delivers them one at a time, oldest first, as fast as the notifier allows, honouring a
//! service's `Retry-After` and backing off on failures; a failure never reaches the change
//! that caused it. Delivery is at-least-once: a crash between the post and its record may
//! repeat one message, never lose it.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use portcullis_core::{AuditEvent, Timestamp};
use portcullis_store::{Settlement, Store, StoreError};
use thiserror::Error;
use tokio::sync::{Notify, watch};

use crate::Clock;

/// Where announcements go.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Announces one change.
    async fn announce(&self, event: &AuditEvent) -> Result<(), NotifyError>;

    /// The least time between two announcements the service accepts (none by default).
    fn min_interval(&self) -> time::Duration {
        time::Duration::ZERO
    }
}

/// Why an announcement did not go out.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum NotifyError {
    /// The service asked us to wait (HTTP 429 with `Retry-After`).
    #[error("rate limited; retry after {retry_after}")]
    RateLimited { retry_after: time::Duration },
    /// Worth trying again later: the network, a 5xx, a refused post.
    #[error("{0}")]
    Transient(String),
    /// The same message will never be accepted (e.g. Slack calls the payload invalid).
    #[error("{0}")]
    Permanent(String),
}

/// Announces to the log alone: the notifier when no webhook is configured.
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn announce(&self, event: &AuditEvent) -> Result<(), NotifyError> {
        tracing::info!(action = event.action.as_str(), environment = %event.environment,
            cidr = %event.cidr_label(), actor = %event.actor, "change announced (log only)");
        Ok(())
    }
}

/// How delivery retries (the notifier sets the interval between posts).
#[derive(Debug, Clone, Copy)]
pub struct Pacing {
    /// The longest wait between retries of a failing notice.
    pub max_backoff: time::Duration,
    /// Notices older than this are abandoned (logged as errors) instead of delivered late.
    pub max_age: time::Duration,
}

impl Default for Pacing {
    fn default() -> Self {
        Pacing { max_backoff: time::Duration::minutes(5), max_age: time::Duration::days(7) }
    }
}

/// What one delivery step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Delivered,
    /// Too old to deliver; recorded as abandoned.
    Abandoned,
    /// Nothing may be posted before this time (pacing, or an earlier failure's wait).
    Paced(Timestamp),
    /// The post failed; the notice is due again at `retry_at`.
    Failed {
        retry_at: Timestamp,
    },
    /// The post failed and could not be retried in time; the notice is left due now for the
    /// next process.
    LeftForLater,
    /// Nothing is due.
    Idle,
}

/// What a flush did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushReport {
    pub delivered: usize,
    /// Notices still in the outbox afterwards (this process's or others').
    pub pending: usize,
}

/// Delivers the outbox through a [`Notifier`].
pub struct Outbox {
    store: Arc<dyn Store>,
    notifier: Arc<dyn Notifier>,
    clock: Arc<dyn Clock>,
    pacing: Pacing,
    /// Nothing is posted before this time.
    gate: Mutex<Option<Timestamp>>,
    wake: Notify,
}

impl Outbox {
    pub fn new(store: Arc<dyn Store>, notifier: Arc<dyn Notifier>, clock: Arc<dyn Clock>, pacing: Pacing) -> Outbox {
        Outbox { store, notifier, clock, pacing, gate: Mutex::new(None), wake: Notify::new() }
    }

    /// Tells a running delivery loop that this process wrote a notice.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn backoff(&self, attempts: u32) -> time::Duration {
        let secs = 1i64.checked_shl(attempts.min(20)).unwrap_or(i64::MAX);
        time::Duration::seconds(secs).min(self.pacing.max_backoff)
    }

    fn close_gate_until(&self, at: Timestamp) {
        *self.gate.lock().expect("outbox mutex poisoned") = Some(at);
    }

    /// Tries the oldest due notice once. A failed notice is retried after `Retry-After` or a
    /// back-off, unless that is later than `retry_by` (a process about to exit): then it is left
    /// due at once for the next process.
    async fn step(&self, retry_by: Option<Timestamp>) -> Result<Step, StoreError> {
        let now = self.clock.now();
        if let Some(gate) = *self.gate.lock().expect("outbox mutex poisoned")
            && gate > now
        {
            return Ok(Step::Paced(gate));
        }
        let Some(notice) = self.store.claim_notice(now).await? else { return Ok(Step::Idle) };
        let (id, event) = (notice.event.id, &notice.event);
        if now - event.at > self.pacing.max_age {
            let error = format!("not delivered within {}", self.pacing.max_age);
            tracing::error!(notice = id, action = event.action.as_str(), environment = %event.environment,
                cidr = %event.cidr_label(), "announcement abandoned: {error}");
            self.store.settle_notice(id, Settlement::Abandoned { error }, now).await?;
            return Ok(Step::Abandoned);
        }
        let result = self.notifier.announce(event).await;
        let now = self.clock.now();
        let (settlement, step) = match result {
            Ok(()) => {
                tracing::info!(notice = id, action = event.action.as_str(), environment = %event.environment,
                    cidr = %event.cidr_label(), "change announced");
                self.close_gate_until(now + self.notifier.min_interval());
                (Settlement::Delivered, Step::Delivered)
            }
            Err(NotifyError::Permanent(error)) => {
                tracing::error!(notice = id, error = %error, "announcement refused for good; abandoned");
                self.close_gate_until(now + self.notifier.min_interval());
                (Settlement::Abandoned { error }, Step::Abandoned)
            }
            Err(err) => {
                let wait = match &err {
                    NotifyError::RateLimited { retry_after } => *retry_after,
                    _ => self.backoff(notice.attempts),
                };
                let retry_at = now + wait;
                tracing::warn!(notice = id, error = %err, retry_in = %wait, "announcement not delivered; will retry");
                // Later posts wait as well: every notice goes to the same service, and waiting
                // keeps the channel in order.
                self.close_gate_until(retry_at);
                let error = err.to_string();
                if retry_by.is_some_and(|limit| retry_at > limit) {
                    (Settlement::Retry { at: now, error }, Step::LeftForLater)
                } else {
                    (Settlement::Retry { at: retry_at, error }, Step::Failed { retry_at })
                }
            }
        };
        self.store.settle_notice(id, settlement, now).await?;
        Ok(step)
    }

    /// Delivers notices until shut down: this process's at once, other processes' once their
    /// lease lapses (checked every second). The outbox is read first, so an idle server takes
    /// no write lock.
    pub async fn run(&self, mut shutdown: watch::Receiver<bool>) {
        let poll = time::Duration::seconds(1);
        loop {
            if *shutdown.borrow() {
                return;
            }
            let now = self.clock.now();
            let until = match self.store.outbox_status().await {
                Ok(status) => match status.next_due {
                    Some(at) if at <= now => match self.step(None).await {
                        Ok(Step::Delivered | Step::Abandoned | Step::LeftForLater) => continue,
                        Ok(Step::Paced(at) | Step::Failed { retry_at: at }) => at,
                        // Another process claimed it first.
                        Ok(Step::Idle) => now + poll,
                        Err(err) => {
                            tracing::warn!(error = %err, "outbox delivery failed; retrying");
                            now + poll
                        }
                    },
                    Some(at) => at.min(now + poll),
                    None => now + poll,
                },
                Err(err) => {
                    tracing::warn!(error = %err, "could not read the outbox");
                    now + poll
                }
            };
            tokio::select! {
                _ = self.clock.sleep_until(until) => {}
                _ = self.wake.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Delivers what is due for at most `budget`, for a process about to exit: its own
    /// notices and any left over by earlier runs. A notice is retried once if its wait fits the
    /// budget; what is not delivered stays in the outbox for the next run or a server.
    pub async fn flush(&self, budget: time::Duration) -> FlushReport {
        let deadline = self.clock.now() + budget;
        let mut delivered = 0;
        let work = async {
            let mut failed = false;
            loop {
                let retry_by = if failed { self.clock.now() } else { deadline };
                match self.step(Some(retry_by)).await {
                    Ok(Step::Delivered) => {
                        delivered += 1;
                        failed = false;
                    }
                    Ok(Step::Abandoned) => {}
                    Ok(Step::Paced(at)) if at <= deadline => self.clock.sleep_until(at).await,
                    Ok(Step::Failed { retry_at }) => {
                        failed = true;
                        self.clock.sleep_until(retry_at).await;
                    }
                    Ok(Step::Paced(_) | Step::LeftForLater | Step::Idle) => return,
                    Err(err) => {
                        tracing::warn!(error = %err, "could not deliver the outbox");
                        return;
                    }
                }
            }
        };
        tokio::select! {
            () = work => {}
            () = self.clock.sleep_until(deadline) => {}
        }
        let pending = self.store.outbox_status().await.map(|s| s.pending).unwrap_or(0);
        FlushReport { delivered, pending }
    }
}
