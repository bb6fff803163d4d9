//! Kinesis behind `EventPublisher`: `PutRecords` in calls of at most 500 records and 5 MiB,
//! retrying only the entries that failed, with exponential backoff and full jitter.
//! Throttling that outlasts the retries surfaces as `StoreError::Throttled`.
//!
//! A retried entry may land after a later one of the same partition key; the projector
//! does not depend on transport order (versions decide, gaps are filled).

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;

use crate::ports::{EventPublisher, OutRecord, StoreError};

/// Kinesis limits per `PutRecords` call.
pub const PUT_RECORDS_MAX: usize = 500;
pub const PUT_RECORDS_BYTES_MAX: usize = 5 * 1024 * 1024;
/// Attempts per call before giving up.
pub const PUT_RETRIES_MAX: u32 = 8;
/// Ceiling of the backoff between attempts.
pub const PUT_RETRY_DELAY_MS_MAX: u64 = 2_000;

#[derive(Clone)]
pub struct KinesisPublisher {
    client: Client,
    stream: String,
}

impl KinesisPublisher {
    pub fn new(client: Client, stream: impl Into<String>) -> KinesisPublisher {
        KinesisPublisher {
            client,
            stream: stream.into(),
        }
    }

    async fn put_call(&self, mut pending: Vec<OutRecord>) -> Result<(), StoreError> {
        let mut throttled = false;
        for attempt in 0..PUT_RETRIES_MAX {
            if attempt > 0 {
                tokio::time::sleep(backoff(attempt)).await;
            }
            let entries = pending
                .iter()
                .map(|r| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(&r.partition_key)
                        .data(Blob::new(r.data.clone()))
                        .build()
                        .map_err(|e| {
                            StoreError::Unavailable(format!("request could not be built: {e}"))
                        })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let out = match self
                .client
                .put_records()
                .stream_name(&self.stream)
                .set_records(Some(entries))
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    let code = e
                        .as_service_error()
                        .and_then(ProvideErrorMetadata::code)
                        .unwrap_or_default();
                    if matches!(
                        code,
                        "ProvisionedThroughputExceededException"
                            | "LimitExceededException"
                            | "ThrottlingException"
                    ) {
                        throttled = true;
                        continue;
                    }
                    return Err(StoreError::Unavailable(format!("PutRecords: {code} {e:?}")));
                }
            };
            if out.failed_record_count().unwrap_or(0) == 0 {
                return Ok(());
            }
            // Entries come back in request order; keep only the failed ones.
            let results = out.records();
            throttled = results
                .iter()
                .any(|r| r.error_code() == Some("ProvisionedThroughputExceededException"));
            pending = pending
                .into_iter()
                .zip(results)
                .filter(|(_, r)| r.error_code().is_some())
                .map(|(record, _)| record)
                .collect();
        }
        if throttled {
            Err(StoreError::Throttled)
        } else {
            Err(StoreError::Unavailable(format!(
                "{} records still failing after {PUT_RETRIES_MAX} attempts",
                pending.len()
            )))
        }
    }
}

/// Full jitter: uniform in (0, min(cap, 50 ms × 2^attempt)].
/// Drawn from [`crate::entropy`], the one source of randomness.
fn backoff(attempt: u32) -> std::time::Duration {
    let ceiling_ms = (50u64 << attempt.min(10)).min(PUT_RETRY_DELAY_MS_MAX);
    std::time::Duration::from_micros(crate::entropy::next_u64() % (ceiling_ms * 1_000) + 1)
}

/// Splits records into `PutRecords` calls within both limits, keeping order.
pub fn calls(records: Vec<OutRecord>) -> Vec<Vec<OutRecord>> {
    let mut out: Vec<Vec<OutRecord>> = Vec::new();
    let mut bytes = 0;
    for r in records {
        let size = r.data.len() + r.partition_key.len();
        let full = out
            .last()
            .is_none_or(|c| c.len() >= PUT_RECORDS_MAX || bytes + size > PUT_RECORDS_BYTES_MAX);
        if full {
            out.push(Vec::new());
            bytes = 0;
        }
        bytes += size;
        out.last_mut().expect("a call was just pushed").push(r);
    }
    out
}

impl EventPublisher for KinesisPublisher {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), StoreError> {
        for call in calls(records) {
            self.put_call(call).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(bytes: usize) -> OutRecord {
        OutRecord {
            partition_key: "b0001".into(),
            data: vec![0; bytes],
        }
    }

    #[test]
    fn calls_respect_both_limits_and_keep_order() {
        let small: Vec<OutRecord> = (0..1_201)
            .map(|i| OutRecord {
                partition_key: format!("k{i}"),
                data: vec![1],
            })
            .collect();
        let split = calls(small);
        assert_eq!(
            split.iter().map(Vec::len).collect::<Vec<_>>(),
            [500, 500, 201]
        );
        assert_eq!(split[1][0].partition_key, "k500");
        let big = calls((0..12).map(|_| rec(1024 * 1024 - 10)).collect());
        assert!(big.iter().all(|c| c.iter().map(|r| r.data.len() + 5).sum::<usize>() <= PUT_RECORDS_BYTES_MAX));
        assert_eq!(big.iter().map(Vec::len).sum::<usize>(), 12);
        assert!(calls(Vec::new()).is_empty());
    }
}
