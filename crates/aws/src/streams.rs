//! Reading the grants tables' DynamoDB streams in `serve`, so replicas converge whoever changes
//! the table (another replica, the old Lambda, the console, DynamoDB's TTL).
//!
//! Each shard is read from its checkpoint in our table (`AFTER_SEQUENCE_NUMBER`); a shard with
//! none is read from its start when the stream has checkpoints (a new child shard), else from
//! `LATEST` (the first start ever: old history is not replayed). The caller hands each batch to
//! the engine and commits how many records are done; a partial failure re-reads from there.

use std::collections::{BTreeMap, HashMap};

use aws_config::SdkConfig;
use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::types::{AttributeValue, OperationType, Record, ShardIteratorType};
use portcullis_core::ExternalChange;
use portcullis_core::Timestamp;
use portcullis_store::StoreError;
use portcullis_store::ip_whitelist::{Attr, Item};
use portcullis_store::ip_whitelist::{ChangeKind, StreamItems, external_change, unreadable_record};

use crate::DynamoStore;

/// How often shards are listed again (new shards appear every few hours).
const DISCOVER_EVERY: time::Duration = time::Duration::seconds(30);

/// Records read from one shard, to be handled then committed.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The shard's checkpoint key (`{stream arn}#{shard id}`).
    pub shard: String,
    pub records: Vec<ExternalChange>,
}

struct Shard {
    stream_arn: String,
    shard_id: String,
    iterator: Option<String>,
    /// The first record a partial failure left undone: read again from exactly there.
    retry_from: Option<String>,
    /// Read to its end: a closed shard with no more records.
    finished: bool,
}

/// Follows every grants table's stream.
pub struct StreamTail {
    store: DynamoStore,
    client: Client,
    shards: BTreeMap<String, Shard>,
    discovered_at: Option<Timestamp>,
}

fn err(location: &str, e: impl std::error::Error) -> StoreError {
    StoreError::Remote {
        location: location.to_string(),
        message: aws_sdk_dynamodbstreams::error::DisplayErrorContext(e).to_string(),
    }
}

impl StreamTail {
    pub fn new(sdk: &SdkConfig, store: DynamoStore) -> StreamTail {
        let config = aws_sdk_dynamodbstreams::config::Builder::from(sdk).interceptor(crate::CallCounter::default()).build();
        StreamTail { store, client: Client::from_conf(config), shards: BTreeMap::new(), discovered_at: None }
    }

    /// Shards being read now.
    pub fn shards(&self) -> usize {
        self.shards.values().filter(|s| !s.finished && s.iterator.is_some()).count()
    }

    async fn discover(&mut self, now: Timestamp) -> Result<(), StoreError> {
        if self.discovered_at.is_some_and(|at| now < at + DISCOVER_EVERY) {
            return Ok(());
        }
        for table in self.store.grants_tables().into_keys() {
            let described = self
                .store
                .client()
                .describe_table()
                .table_name(&table)
                .send()
                .await
                .map_err(|e| err(&format!("dynamodb:{table}"), aws_sdk_dynamodb::Error::from(e)))?;
            let Some(arn) = described.table().and_then(|t| t.latest_stream_arn()).map(str::to_string) else {
                if self.discovered_at.is_none() {
                    tracing::warn!(table = %table, "the grants table has no stream; changes other writers make are seen only by the periodic reconcile");
                }
                continue;
            };
            let mut start: Option<String> = None;
            let mut found = Vec::new();
            loop {
                let out = self
                    .client
                    .describe_stream()
                    .stream_arn(&arn)
                    .set_exclusive_start_shard_id(start.clone())
                    .send()
                    .await
                    .map_err(|e| err(&arn, aws_sdk_dynamodbstreams::Error::from(e)))?;
                let Some(desc) = out.stream_description() else { break };
                found.extend(desc.shards().iter().filter_map(|s| s.shard_id().map(str::to_string)));
                match desc.last_evaluated_shard_id() {
                    Some(last) => start = Some(last.to_string()),
                    None => break,
                }
            }
            for shard_id in found {
                let key = format!("{arn}#{shard_id}");
                if self.shards.contains_key(&key) {
                    continue;
                }
                let iterator = self.iterator(&arn, &shard_id, &key, None).await?;
                self.shards.insert(key, Shard { stream_arn: arn.clone(), shard_id, iterator, retry_from: None, finished: false });
            }
        }
        self.discovered_at = Some(now);
        Ok(())
    }

    /// Where to read a shard: at the record a partial failure left undone; else after its
    /// checkpoint; else from its start if the stream has checkpoints (a new child shard); else
    /// from now on (the first read of the stream ever).
    async fn iterator(
        &self,
        arn: &str,
        shard_id: &str,
        key: &str,
        retry_from: Option<&str>,
    ) -> Result<Option<String>, StoreError> {
        let request = self.client.get_shard_iterator().stream_arn(arn).shard_id(shard_id);
        let request = match retry_from {
            Some(seq) => request.shard_iterator_type(ShardIteratorType::AtSequenceNumber).sequence_number(seq),
            None => match self.store.checkpoint(key).await? {
                Some(seq) => request.shard_iterator_type(ShardIteratorType::AfterSequenceNumber).sequence_number(seq),
                None if self.store.has_checkpoints(arn).await? => request.shard_iterator_type(ShardIteratorType::TrimHorizon),
                None => request.shard_iterator_type(ShardIteratorType::Latest),
            },
        };
        match request.send().await {
            Ok(out) => Ok(out.shard_iterator().map(str::to_string)),
            Err(e) => {
                let e = aws_sdk_dynamodbstreams::Error::from(e);
                if let aws_sdk_dynamodbstreams::Error::TrimmedDataAccessException(_) = e {
                    // The checkpoint is older than the stream keeps (24 h): start over.
                    tracing::warn!(shard = %key, "checkpoint is past the stream's retention; reading from the oldest record");
                    let out = self
                        .client
                        .get_shard_iterator()
                        .stream_arn(arn)
                        .shard_id(shard_id)
                        .shard_iterator_type(ShardIteratorType::TrimHorizon)
                        .send()
                        .await
                        .map_err(|e| err(arn, aws_sdk_dynamodbstreams::Error::from(e)))?;
                    return Ok(out.shard_iterator().map(str::to_string));
                }
                Err(err(arn, e))
            }
        }
    }

    /// The next records of every shard that has some.
    pub async fn poll(&mut self, now: Timestamp) -> Result<Vec<Batch>, StoreError> {
        self.discover(now).await?;
        // Shards whose iterator was dropped (an error, a partial failure) get a new one first.
        let lost: Vec<(String, String, String, Option<String>)> = self
            .shards
            .iter()
            .filter(|(_, s)| s.iterator.is_none() && !s.finished)
            .map(|(k, s)| (k.clone(), s.stream_arn.clone(), s.shard_id.clone(), s.retry_from.clone()))
            .collect();
        for (key, arn, shard_id, retry_from) in lost {
            let iterator = self.iterator(&arn, &shard_id, &key, retry_from.as_deref()).await?;
            if let Some(shard) = self.shards.get_mut(&key) {
                shard.iterator = iterator;
            }
        }
        let mut batches = Vec::new();
        for (key, shard) in self.shards.iter_mut() {
            let Some(iterator) = shard.iterator.clone().filter(|_| !shard.finished) else { continue };
            let result = self.client.get_records().shard_iterator(iterator).limit(100).send().await;
            let out = match result {
                Ok(out) => out,
                Err(e) => {
                    let e = aws_sdk_dynamodbstreams::Error::from(e);
                    tracing::warn!(shard = %key, error = %aws_sdk_dynamodbstreams::error::DisplayErrorContext(&e), "could not read the stream; will retry");
                    // Iterators expire after 15 minutes; get a new one from the checkpoint.
                    shard.iterator = None;
                    continue;
                }
            };
            match out.next_shard_iterator() {
                Some(next) => shard.iterator = Some(next.to_string()),
                None => {
                    shard.finished = true;
                    self.discovered_at = None;
                }
            }
            if !out.records().is_empty() {
                batches.push(Batch { shard: key.clone(), records: out.records().iter().map(record).collect() });
            }
        }
        Ok(batches)
    }

    /// Records that the first `done` records of `batch` are processed. When some are not, the
    /// shard is read again from the first of them.
    pub async fn commit(&mut self, batch: &Batch, done: usize, now: Timestamp) -> Result<(), StoreError> {
        let last_done = batch.records[..done.min(batch.records.len())].iter().rev().find_map(|r| r.sequence.as_deref());
        if let Some(seq) = last_done {
            self.store.save_checkpoint(&batch.shard, seq, now).await?;
        }
        let first_undone = batch.records.get(done).and_then(|r| r.sequence.as_deref());
        if let (Some(seq), Some(shard)) = (first_undone, self.shards.get_mut(&batch.shard)) {
            shard.iterator = None;
            shard.finished = false;
            shard.retry_from = Some(seq.to_string());
        } else if let Some(shard) = self.shards.get_mut(&batch.shard) {
            shard.retry_from = None;
        }
        Ok(())
    }
}

fn attrs(map: Option<&HashMap<String, AttributeValue>>) -> Option<Item> {
    map.map(|m| {
        m.iter()
            .map(|(k, v)| {
                let v = match v {
                    AttributeValue::S(s) => Attr::S(s.clone()),
                    AttributeValue::N(n) => Attr::N(n.clone()),
                    _ => Attr::Other,
                };
                (k.clone(), v)
            })
            .collect()
    })
}

/// A stream record, decoded for the engine.
fn record(r: &Record) -> ExternalChange {
    let sequence = r.dynamodb().and_then(|d| d.sequence_number()).map(str::to_string);
    let unreadable = |error: &str| unreadable_record(r.event_id().map(str::to_string), sequence.clone(), error);
    let Some(event_id) = r.event_id() else { return unreadable("no eventID") };
    let kind = match r.event_name() {
        Some(OperationType::Insert) => ChangeKind::Insert,
        Some(OperationType::Modify) => ChangeKind::Modify,
        Some(OperationType::Remove) => ChangeKind::Remove,
        _ => return unreadable("unknown eventName"),
    };
    let Some(d) = r.dynamodb() else { return unreadable("no dynamodb section") };
    let Some(seq) = sequence.clone() else { return unreadable("no SequenceNumber") };
    let Some(keys) = attrs(d.keys()) else { return unreadable("no Keys") };
    let by_service =
        r.user_identity().is_some_and(|u| u.r#type() == Some("Service") && u.principal_id() == Some("dynamodb.amazonaws.com"));
    external_change(StreamItems {
        event_id: event_id.to_string(),
        sequence: seq,
        kind,
        by_service,
        keys,
        old: attrs(d.old_image()),
        new: attrs(d.new_image()),
    })
}
