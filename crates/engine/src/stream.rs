//! Changes to the grants table seen on its DynamoDB stream, from whichever writer: another
//! replica, the old Lambda, someone at the console, or DynamoDB's TTL.
//!
//! INSERT and MODIFY reconcile the environment. A REMOVE that carries our removal mark was made
//! by portcullis and announced already: it only reconciles. Any other REMOVE is announced once
//! (⌛ when DynamoDB's TTL deleted the item, 🗑 otherwise), keyed by the record's id so a
//! redelivered record is not announced twice, then reconciles. A record that cannot be read is
//! logged, audited as `refused` and skipped. A record whose processing fails is reported by its
//! sequence number, so the caller (Lambda, or the stream reader in `serve`) retries from it.

use std::collections::BTreeMap;

use portcullis_core::{Action, AuditEvent, Environment, Interface};
use portcullis_store::seed::{self, Item};
use serde::Serialize;

use crate::{Cause, Engine, Scope};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    Insert,
    Modify,
    Remove,
}

impl ChangeKind {
    pub fn parse(name: &str) -> Option<ChangeKind> {
        match name {
            "INSERT" => Some(ChangeKind::Insert),
            "MODIFY" => Some(ChangeKind::Modify),
            "REMOVE" => Some(ChangeKind::Remove),
            _ => None,
        }
    }
}

/// One stream record, read.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamChange {
    /// The record's `eventID`: the same record delivered twice has the same id.
    pub event_id: String,
    pub sequence: String,
    pub kind: ChangeKind,
    /// Made by the DynamoDB service itself (`userIdentity` principal `dynamodb.amazonaws.com`):
    /// a TTL deletion.
    pub by_service: bool,
    pub keys: Item,
    pub old: Option<Item>,
    pub new: Option<Item>,
}

/// A record as it arrived: readable, or not (a poison record, skipped after it is audited).
#[derive(Debug, Clone, PartialEq)]
pub enum StreamRecord {
    Change(StreamChange),
    Unreadable { event_id: Option<String>, sequence: Option<String>, error: String },
}

impl StreamRecord {
    pub fn sequence(&self) -> Option<&str> {
        match self {
            StreamRecord::Change(c) => Some(&c.sequence),
            StreamRecord::Unreadable { sequence, .. } => sequence.as_deref(),
        }
    }
}

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

impl Engine {
    /// Handles a batch of stream records in order. See the module docs.
    pub async fn handle_stream(&self, records: Vec<StreamRecord>) -> StreamOutcome {
        let mut out = StreamOutcome { records: records.len(), ..StreamOutcome::default() };
        // Environment → index of the first record that touched it.
        let mut touched: BTreeMap<Environment, usize> = BTreeMap::new();
        let mut failed: Option<usize> = None;
        for (i, record) in records.iter().enumerate() {
            let change = match record {
                StreamRecord::Change(c) => c,
                StreamRecord::Unreadable { event_id, sequence, error } => {
                    out.unreadable += 1;
                    let key = event_id.clone().or_else(|| sequence.clone());
                    if self.refuse_record(None, key.as_deref(), error).await.is_err() {
                        failed = Some(i);
                        break;
                    }
                    continue;
                }
            };
            let env_name = match seed_env(&change.keys).or_else(|| change.old.as_ref().and_then(seed_env)) {
                Some(name) => name,
                None => {
                    out.unreadable += 1;
                    if self.refuse_record(None, Some(&change.event_id), "no environment in its keys").await.is_err() {
                        failed = Some(i);
                        break;
                    }
                    continue;
                }
            };
            let env = match Environment::parse(&env_name) {
                Ok(env) if self.policy(&env).is_ok() => env,
                // Another deployment's environment sharing the table: not ours to act on.
                Ok(_) => {
                    tracing::debug!(environment = %env_name, "stream record for an environment this process does not manage");
                    continue;
                }
                Err(e) => {
                    out.unreadable += 1;
                    if self.refuse_record(None, Some(&change.event_id), &e.to_string()).await.is_err() {
                        failed = Some(i);
                        break;
                    }
                    continue;
                }
            };
            touched.entry(env.clone()).or_insert(i);
            if change.kind != ChangeKind::Remove {
                continue;
            }
            let old = change.old.clone().unwrap_or_else(|| change.keys.clone());
            if seed::removal(&old).is_some() {
                continue; // our own deletion, announced when it was made
            }
            let grant = match seed::from_item(&old) {
                Ok(g) => g,
                Err(error) => {
                    out.unreadable += 1;
                    if self.refuse_record(Some(&env), Some(&change.event_id), &error).await.is_err() {
                        failed = Some(i);
                        break;
                    }
                    continue;
                }
            };
            let (action, actor, reason) = if change.by_service {
                let at = grant.expires_at.map(portcullis_core::format_utc).unwrap_or_default();
                (Action::Expired, "dynamodb-ttl", format!("expired at {at}; deleted by DynamoDB's TTL"))
            } else {
                (Action::Removed, "outside-portcullis", "deleted from the table outside portcullis".to_string())
            };
            let event = AuditEvent {
                id: 0,
                at: self.clock().now(),
                actor: actor.into(),
                interface: Interface::Stream,
                action,
                environment: env.to_string(),
                cidr: Some(grant.cidr.to_string()),
                before: Some(grant),
                after: None,
                reason,
            };
            match self.store().record_once(event, &format!("stream:{}", change.event_id)).await {
                Ok(true) => {
                    out.announced += 1;
                    self.announce();
                }
                Ok(false) => tracing::info!(event_id = %change.event_id, "stream record already recorded; not announced again"),
                Err(err) => {
                    tracing::warn!(error = %err, sequence = %change.sequence, "could not record a stream change; will retry");
                    failed = Some(i);
                    break;
                }
            }
        }
        for (env, first) in touched {
            if failed.is_some_and(|f| f <= first) {
                continue; // retried from an earlier record anyway
            }
            match self.reconcile(Scope::Environment(env.clone()), Cause::Change).await {
                Ok(report) if report.observe_failures.is_empty() && report.outcomes.iter().all(|o| o.error.is_none()) => {
                    out.reconciled.push(env);
                }
                Ok(report) => {
                    tracing::warn!(environment = %env, failures = ?report.failure_messages(), "reconcile after a stream change failed; will retry");
                    failed = Some(failed.map_or(first, |f| f.min(first)));
                }
                Err(err) => {
                    tracing::warn!(environment = %env, error = %err, "reconcile after a stream change failed; will retry");
                    failed = Some(failed.map_or(first, |f| f.min(first)));
                }
            }
        }
        out.done = failed.unwrap_or(records.len());
        out.failed_at = failed.and_then(|i| records[i].sequence().map(str::to_string));
        out
    }

    /// Audits a record that cannot be read (once per record), so it is seen and skipped.
    async fn refuse_record(&self, env: Option<&Environment>, key: Option<&str>, error: &str) -> Result<(), ()> {
        tracing::error!(record = key.unwrap_or("-"), error = %error, "skipping a stream record that cannot be read");
        let event = AuditEvent {
            id: 0,
            at: self.clock().now(),
            actor: "stream".into(),
            interface: Interface::Stream,
            action: Action::Refused,
            environment: env.map(|e| e.to_string()).unwrap_or_else(|| "-".into()),
            cidr: None,
            before: None,
            after: None,
            reason: format!("unreadable stream record {}: {error}", key.unwrap_or("(no id)")),
        };
        let result = match key {
            Some(k) => self.store().record_once(event, &format!("stream:{k}")).await.map(|_| ()),
            None => self.store().record(event).await,
        };
        result.map_err(|err| tracing::warn!(error = %err, "could not audit an unreadable stream record"))
    }
}

fn seed_env(item: &Item) -> Option<String> {
    match item.get(seed::ENVIRONMENT) {
        Some(seed::Attr::S(e)) => Some(e.clone()),
        _ => None,
    }
}
