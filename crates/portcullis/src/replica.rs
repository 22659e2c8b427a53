//! What a `serve` replica runs beside the HTTP API: the sweeper lease, and (with the DynamoDB
//! store) the stream reader that makes replicas converge whoever changes the table.
//!
//! Only the lease holder sweeps, reconciles periodically and reads the streams, so each change
//! another writer makes is handled (and announced) once; a new holder resumes each shard from
//! its checkpoint in the store.

use std::sync::Arc;

use portcullis_aws::StreamTail;
use portcullis_engine::Engine;
use tokio::sync::watch;

/// How often the streams are read while the lease is held.
pub const STREAM_POLL: time::Duration = time::Duration::seconds(1);

/// Reads the streams while this replica holds the lease, until shut down. `shards` reports
/// how many shards are being read (0 until the first read has positioned them).
pub async fn follow_streams(
    engine: Arc<Engine>,
    mut tail: StreamTail,
    mut shutdown: watch::Receiver<bool>,
    shards: watch::Sender<usize>,
) {
    loop {
        if let Some(lease) = engine.lease() {
            if !lease.wait_held(&mut shutdown).await {
                return;
            }
        } else if *shutdown.borrow() {
            return;
        }
        let now = engine.clock().now();
        match tail.poll(now).await {
            Ok(batches) => {
                for batch in batches {
                    let outcome = engine.grants().handle_stream(batch.records.clone()).await;
                    if let Err(err) = tail.commit(&batch, outcome.done, now).await {
                        tracing::warn!(shard = %batch.shard, error = %err, "could not save the stream checkpoint");
                    }
                }
            }
            Err(err) => tracing::warn!(error = %err, "could not read the grants table's stream; will retry"),
        }
        shards.send_replace(tail.shards());
        let next = engine.clock().now() + STREAM_POLL;
        tokio::select! {
            _ = engine.clock().sleep_until(next) => {}
            _ = shutdown.changed() => {}
        }
    }
}
