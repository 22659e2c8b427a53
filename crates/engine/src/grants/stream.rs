//! Changes to the grants table from whichever writer (another replica, the old Lambda,
//! someone at the console, DynamoDB's TTL), as decoded change-feed records.
//!
//! What each record calls for is decided by `core::external_step`; this module only carries
//! it out: reconcile the environments touched, record (once) and announce foreign removals,
//! audit unreadable records and skip them. A record whose processing fails is reported by its
//! sequence number, so the caller (Lambda, or the stream reader in `serve`) retries from it.

use std::collections::BTreeMap;

use portcullis_core::{Environment, ExternalChange, ExternalStep, external_step};
use serde::Serialize;

use crate::{Cause, Grants, Scope};

/// What handling a batch did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StreamOutcome {
    pub records: usize,
    pub unreadable: usize,
    pub announced: usize,
    pub reconciled: Vec<Environment>,
    /// The sequence number of the first record that must be processed again (a partial batch
    /// failure); records before it are done.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failed_at: Option<String>,
    /// How many records are done (all of them unless `failed_at` is set).
    pub done: usize,
}

impl Grants {
    /// Handles a batch of records in order. See the module docs.
    pub async fn handle_stream(&self, records: Vec<ExternalChange>) -> StreamOutcome {
        let mut out = StreamOutcome { records: records.len(), ..StreamOutcome::default() };
        // Environment → index of the first record that touched it.
        let mut touched: BTreeMap<Environment, usize> = BTreeMap::new();
        let mut failed: Option<usize> = None;
        let manages = |env: &Environment| self.policy(env).is_ok();
        for (i, record) in records.iter().enumerate() {
            match external_step(record, &manages, self.clock().now()) {
                ExternalStep::Ignore => {
                    tracing::debug!(record = ?record.id, "stream record for an environment this process does not manage");
                }
                ExternalStep::Reconcile(env) => {
                    touched.entry(env).or_insert(i);
                }
                ExternalStep::Announce { key, environment, event } => {
                    touched.entry(environment).or_insert(i);
                    match self.store().record_once(event, &key).await {
                        Ok(true) => {
                            out.announced += 1;
                            self.announce();
                        }
                        Ok(false) => tracing::info!(%key, "stream record already recorded; not announced again"),
                        Err(err) => {
                            tracing::warn!(error = %err, sequence = ?record.sequence, "could not record a stream change; will retry");
                            failed = Some(i);
                            break;
                        }
                    }
                }
                ExternalStep::Refuse { key, event } => {
                    out.unreadable += 1;
                    tracing::error!(record = key.as_deref().unwrap_or("-"), reason = %event.reason, "skipping a stream record that cannot be read");
                    let recorded = match &key {
                        Some(k) => self.store().record_once(event, k).await.map(|_| ()),
                        None => self.store().record(event).await,
                    };
                    if let Err(err) = recorded {
                        tracing::warn!(error = %err, "could not audit an unreadable stream record; will retry");
                        failed = Some(i);
                        break;
                    }
                }
            }
        }
        for (env, first) in touched {
            if failed.is_some_and(|f| f <= first) {
                continue; // retried from an earlier record anyway
            }
            let result = self.reconcile(Scope::Environment(env.clone()), Cause::Change).await;
            match result {
                Ok(report) if !report.failed_to_apply() => out.reconciled.push(env),
                Ok(report) => {
                    tracing::warn!(environment = %env, failures = %crate::Failure::joined(&report.failures()), "reconcile after a stream change failed; will retry");
                    failed = Some(failed.map_or(first, |f| f.min(first)));
                }
                Err(err) => {
                    tracing::warn!(environment = %env, error = %err, "reconcile after a stream change failed; will retry");
                    failed = Some(failed.map_or(first, |f| f.min(first)));
                }
            }
        }
        out.done = failed.unwrap_or(records.len());
        out.failed_at = failed.and_then(|i| records[i].sequence.clone());
        out
    }
}
