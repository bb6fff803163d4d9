//! DynamoDB behind the ports, with the layout of DESIGN.md:
//!
//! - Events table, `pk` = account, `sk`:
//!   - `v#<first version, 20 digits>`: a page (`page` = the encoded page, `last`, `balance`),
//!     written with `attribute_not_exists(sk)`: two writers deciding on the same tip collide
//!     on the same key, which is the optimistic lock;
//!   - `t#<txn id>`: the transaction marker (`version`, `kind`, `delta`, `reversed`,
//!     optional `expires_at` TTL), written in the same `TransactWriteItems`, also with
//!     `attribute_not_exists(sk)`; a reversal flips its target's `reversed` under the
//!     condition that it is still false.
//! - Balances table, `pk` = account, plain readable attributes, one conditional `PutItem`
//!   per account per batch with `ReturnValuesOnConditionCheckFailure=ALL_OLD`.
//! - Quarantine table, `pk` = shard, `sk` = sequence number (the head item: `error`,
//!   `size`, `chunks`, the first chunk of the bytes in `data`), and `sk` = sequence number
//!   then `#` and the chunk index for the rest: a Kinesis record (≤ 1 MiB) is kept whole
//!   although an item holds 400 KB.
//!
//! Every call asks for `ReturnConsumedCapacity=TOTAL` and adds the units to the shared
//! [`Metrics`] (what the cost table in BENCHMARKS.md is measured with, and what CloudWatch
//! sees per invocation). Appends of different accounts, and snapshot writes, run
//! concurrently (at most [`CONCURRENCY_MAX`] in flight); one account's pages go in order.
//!
//! `events` implements the event store, `snapshots` the snapshot store, `quarantine` the
//! quarantine (chunked), `scan` the parallel whole-table listing audits use; this module holds the client, the
//! capacity accounting and what they share.
//!
//! Every SDK error becomes a port error here: conditional failures become `Conflict` /
//! `DuplicateTxn` / `TargetReversed` (read from `CancellationReasons`), throttling becomes
//! `Throttled`, the rest `Unavailable`.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConsumedCapacity, KeySchemaElement, KeyType,
    KeysAndAttributes, ReturnConsumedCapacity, ScalarAttributeType, StreamSpecification,
    StreamViewType,
};

use super::AwsConfig;
use crate::ports::StoreError;
use crate::service::metrics::{Metrics, milli_units};

mod append;
mod events;
mod items;
mod quarantine;
mod scan;
mod snapshots;

pub use scan::SCAN_SEGMENTS_MAX;

/// Keys per `BatchGetItem` call (the service's limit).
const BATCH_GET_KEYS_MAX: usize = 100;
/// Rounds of retrying `UnprocessedKeys` before giving up as throttled.
const UNPROCESSED_RETRIES_MAX: u32 = 8;
/// Requests one store call keeps in flight by default (transactions of appends, tip
/// queries, marker reads, snapshot writes); [`DynamoStore::with_concurrency`] changes it.
pub const CONCURRENCY_MAX: usize = 16;

/// The DynamoDB adapter; cheap to clone (the client and the metrics are shared).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    config: AwsConfig,
    metrics: Arc<Metrics>,
    concurrency: usize,
}

/// Which counter a call's consumed capacity goes to.
#[derive(Clone, Copy)]
enum Units {
    Read,
    Write,
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Maps any SDK error: throttling codes to `Throttled`, everything else to `Unavailable`.
fn store_error<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> StoreError {
    let code = e
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .unwrap_or_default();
    match code {
        "ProvisionedThroughputExceededException"
        | "ThrottlingException"
        | "RequestLimitExceeded" => StoreError::Throttled,
        _ => StoreError::Unavailable(format!(
            "{code} {}",
            e.as_service_error()
                .and_then(ProvideErrorMetadata::message)
                .unwrap_or(&format!("{e:?}"))
        )),
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn get_n<T: std::str::FromStr>(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| corrupt(format!("attribute {name}: {v:?} is not a number"))),
        _ => Err(corrupt(format!("attribute {name} missing or not a number"))),
    }
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

fn built<T>(r: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Unavailable(format!("request could not be built: {e}")))
}

impl DynamoStore {
    pub fn new(client: Client, config: AwsConfig) -> DynamoStore {
        DynamoStore {
            client,
            config,
            metrics: Arc::default(),
            concurrency: CONCURRENCY_MAX,
        }
    }

    /// Requests one store call keeps in flight (at least 1): more hides more latency on
    /// AWS; an emulator on a small machine may do better with fewer.
    pub fn with_concurrency(mut self, requests: usize) -> DynamoStore {
        self.concurrency = requests.max(1);
        self
    }

    /// Counts consumed capacity into shared metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> DynamoStore {
        self.metrics = metrics;
        self
    }

    /// Table names and marker TTL.
    pub fn config(&self) -> &AwsConfig {
        &self.config
    }

    fn charge<'a>(&self, units: Units, consumed: impl IntoIterator<Item = &'a ConsumedCapacity>) {
        let total: f64 = consumed
            .into_iter()
            .filter_map(ConsumedCapacity::capacity_units)
            .sum();
        let counter = match units {
            Units::Read => &self.metrics.read_capacity_milli,
            Units::Write => &self.metrics.write_capacity_milli,
        };
        Metrics::add(counter, milli_units(total));
    }

    /// Creates the three tables (on-demand) if they do not exist: for emulators and tests;
    /// in AWS the SAM template owns them. The Events table gets its stream (new images),
    /// which the backstop reads.
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        let tables = [
            (&self.config.events_table, true),
            (&self.config.balances_table, false),
            (&self.config.quarantine_table, true),
        ];
        for (name, with_sort) in tables {
            let (hash, range) = ("pk", "sk");
            let mut req = self
                .client
                .create_table()
                .table_name(name)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(built(
                    AttributeDefinition::builder()
                        .attribute_name(hash)
                        .attribute_type(ScalarAttributeType::S)
                        .build(),
                )?)
                .key_schema(built(
                    KeySchemaElement::builder()
                        .attribute_name(hash)
                        .key_type(KeyType::Hash)
                        .build(),
                )?);
            if name == &self.config.events_table {
                req = req.stream_specification(built(
                    StreamSpecification::builder()
                        .stream_enabled(true)
                        .stream_view_type(StreamViewType::NewImage)
                        .build(),
                )?);
            }
            if with_sort {
                req = req
                    .attribute_definitions(built(
                        AttributeDefinition::builder()
                            .attribute_name(range)
                            .attribute_type(ScalarAttributeType::S)
                            .build(),
                    )?)
                    .key_schema(built(
                        KeySchemaElement::builder()
                            .attribute_name(range)
                            .key_type(KeyType::Range)
                            .build(),
                    )?);
            }
            match req.send().await {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error().and_then(ProvideErrorMetadata::code)
                        == Some("ResourceInUseException") => {}
                Err(e) => return Err(store_error(&e)),
            }
        }
        Ok(())
    }

    /// `BatchGetItem` with consistent reads, retrying unprocessed keys.
    async fn batch_get(
        &self,
        table: &str,
        mut keys: Vec<HashMap<String, AttributeValue>>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        for attempt in 0..=UNPROCESSED_RETRIES_MAX {
            if keys.is_empty() {
                return Ok(items);
            }
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt.min(6))).await;
            }
            let request = built(
                KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build(),
            )?;
            let out = self
                .client
                .batch_get_item()
                .request_items(table, request)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            self.charge(Units::Read, out.consumed_capacity());
            if let Some(found) = out.responses().and_then(|r| r.get(table)) {
                items.extend(found.iter().cloned());
            }
            if let Some(rest) = out.unprocessed_keys().and_then(|u| u.get(table)) {
                keys = rest.keys().to_vec();
            }
        }
        Err(StoreError::Throttled)
    }
}
