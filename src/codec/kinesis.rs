//! A lean reader of the JSON event Lambda delivers from a Kinesis event source mapping.
//!
//! `aws_lambda_events::KinesisEvent` allocates a dozen strings per record that the
//! projector never reads. This reader borrows the three fields it needs (`eventID` for the
//! shard, `sequenceNumber`, `data`) and skips the rest, then decodes base64 into one arena
//! where each record starts 16-byte aligned, so records are read in place.

use std::borrow::Cow;

use base64_simd::{Out, STANDARD};
use rkyv::util::AlignedVec;
use serde::Deserialize;

use super::CodecError;
use super::record::PAYLOAD_ALIGN;

/// The Lambda Kinesis event, borrowed from the input JSON.
#[derive(Debug, Deserialize)]
pub struct KinesisBatch<'a> {
    #[serde(rename = "Records", borrow)]
    pub records: Vec<KinesisRecordRef<'a>>,
}

#[derive(Debug, Deserialize)]
pub struct KinesisRecordRef<'a> {
    /// `shardId-000000000006:<sequence number>`; absent in some hand-made events.
    #[serde(rename = "eventID", borrow, default)]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub kinesis: KinesisDataRef<'a>,
}

#[derive(Debug, Deserialize)]
pub struct KinesisDataRef<'a> {
    #[serde(rename = "sequenceNumber", borrow)]
    pub sequence_number: Cow<'a, str>,
    #[serde(rename = "partitionKey", borrow, default)]
    pub partition_key: Cow<'a, str>,
    /// Base64 of the record's bytes.
    #[serde(borrow)]
    pub data: Cow<'a, str>,
}

impl<'a> KinesisBatch<'a> {
    pub fn parse(json: &'a [u8]) -> Result<KinesisBatch<'a>, serde_json::Error> {
        serde_json::from_slice(json)
    }
}

impl KinesisRecordRef<'_> {
    /// The shard id part of `eventID`, if present.
    pub fn shard_id(&self) -> Option<&str> {
        self.event_id
            .as_deref()
            .and_then(|id| id.split_once(':'))
            .map(|(shard, _)| shard)
    }
}

/// Decoded record bytes of a whole batch, each starting at a 16-byte boundary.
#[derive(Default)]
pub struct Arena {
    bytes: AlignedVec,
    spans: Vec<Result<(usize, usize), CodecError>>,
}

impl Arena {
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.spans.clear();
    }

    /// Decodes every record's base64; a record with bad base64 keeps its error in place so
    /// the caller can quarantine it by index.
    pub fn fill(&mut self, batch: &KinesisBatch<'_>) {
        self.clear();
        let total: usize = batch
            .records
            .iter()
            .map(|r| r.kinesis.data.len() / 4 * 3 + PAYLOAD_ALIGN)
            .sum();
        self.bytes.reserve(total);
        for record in &batch.records {
            self.push_base64(record.kinesis.data.as_bytes());
        }
    }

    /// Appends one record given as base64 text.
    pub fn push_base64(&mut self, data: &[u8]) {
        let start = self.bytes.len().next_multiple_of(PAYLOAD_ALIGN);
        // `decoded_length` validates length and padding, so `decode` below cannot panic on
        // a short destination.
        let span = STANDARD.decoded_length(data).and_then(|n| {
            self.bytes.resize(start + n, 0);
            STANDARD
                .decode(data, Out::from_slice(&mut self.bytes[start..start + n]))
                .map(|d| d.len())
        });
        let span = match span {
            Ok(n) => Ok((start, start + n)),
            Err(e) => {
                self.bytes.resize(start, 0);
                Err(CodecError::Base64(e.to_string()))
            }
        };
        self.spans.push(span);
    }

    /// Appends one record given as raw bytes (as `aws_lambda_events` hands them over),
    /// copying it to an aligned position.
    pub fn push_bytes(&mut self, data: &[u8]) {
        let start = self.bytes.len().next_multiple_of(PAYLOAD_ALIGN);
        self.bytes.resize(start, 0);
        self.bytes.extend_from_slice(data);
        self.spans.push(Ok((start, start + data.len())));
    }

    /// The decoded bytes of record `i`, or why they could not be decoded.
    pub fn record(&self, i: usize) -> Result<&[u8], CodecError> {
        match self.spans.get(i) {
            Some(Ok((start, end))) => Ok(&self.bytes[*start..*end]),
            Some(Err(e)) => Err(e.clone()),
            None => Err(CodecError::Invalid {
                what: "record index",
                detail: i.to_string(),
            }),
        }
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

/// One record of a `KinesisEvent` as Lambda's event source mapping builds it; shared by the
/// embedded stream and the Kinesis poller so both hand the projector the same shape.
pub fn lambda_record(
    stream: &str,
    shard_id: &str,
    sequence_number: &str,
    partition_key: &str,
    data: &[u8],
) -> aws_lambda_events::event::kinesis::KinesisEventRecord {
    use aws_lambda_events::event::kinesis::{KinesisEventRecord, KinesisRecord};
    let mut kinesis = KinesisRecord::default();
    kinesis.partition_key = partition_key.to_owned();
    kinesis.sequence_number = sequence_number.to_owned();
    kinesis.kinesis_schema_version = Some("1.0".into());
    *kinesis.data = data.to_vec();
    let mut record = KinesisEventRecord::default();
    record.event_id = Some(format!("{shard_id}:{sequence_number}"));
    record.event_name = Some("aws:kinesis:record".into());
    record.event_source = Some("aws:kinesis".into());
    record.event_source_arn = Some(format!(
        "arn:aws:kinesis:local:000000000000:stream/{stream}"
    ));
    record.event_version = Some("1.0".into());
    record.kinesis = kinesis;
    record
}
