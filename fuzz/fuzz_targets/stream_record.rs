//! One DynamoDB Stream record as the Lambda receives it (fixture
//! `dynamodb-stream-ttl-remove.json`), read into the change the engine announces.
//!
//! Beyond "never panics": a record that is not readable still names itself (event id and
//! sequence number, when it has them), so the batch can be retried from it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use portcullis::lambda::stream_record;
use portcullis_core::ExternalKind;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = serde_json::from_slice::<Value>(data) else { return };
    // A whole event's records, or a record alone.
    let records = match value.get("Records").and_then(Value::as_array) {
        Some(records) => records.clone(),
        None => vec![value],
    };
    for record in &records {
        let change = stream_record(record);
        let sequence = record.pointer("/dynamodb/SequenceNumber").and_then(Value::as_str);
        assert_eq!(change.sequence.as_deref(), sequence, "the record's sequence number is kept: {record}");
        if let ExternalKind::Unreadable { .. } = change.kind {
            continue;
        }
        assert!(change.id.is_some(), "a readable record has an event id: {record}");
    }
});
