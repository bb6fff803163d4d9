//! Plays the backstop's Lambda event source mapping against a real DynamoDB Streams API
//! (DynamoDB Local serves one): finds the Events table's stream, reads every shard from
//! TRIM_HORIZON with GetShardIterator/GetRecords, keeps only page inserts (what the
//! template's filter criteria let through), and hands each to the backstop once it is a
//! delay old. `tally serve --backend aws` runs it beside the Kinesis poller, so the
//! emulators are the whole system.
//!
//! Only this module knows DynamoDB Streams types. A page's age counts from when this
//! poller first saw it (never earlier than its append), so a check is never early. A check
//! that fails (stores unavailable) keeps its notices and tries again next round: nothing
//! read is dropped while the process lives. Positions are in memory: after a restart it
//! reads the stream's 24 hours again, which only repeats checks.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_dynamodbstreams::Client;
use aws_sdk_dynamodbstreams::error::ProvideErrorMetadata;
use aws_sdk_dynamodbstreams::types::{AttributeValue, Record, ShardIteratorType};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::ddb_stream::page_notice;
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::backstop::{Backstop, PageNotice, due};

/// Pause between polling rounds.
const POLL_INTERVAL_MS: u64 = 200;
/// Rounds between two listings of the stream's shards (new shards appear as DynamoDB
/// rolls them over).
const LIST_EVERY_ROUNDS: u64 = 25;
/// Records per GetRecords call (the service's limit).
const RECORDS_PER_CALL_MAX: i32 = 1_000;

/// The running backstop poller.
pub struct StreamBackstop {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
}

impl StreamBackstop {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[derive(Debug, Default)]
struct ShardState {
    iterator: Option<String>,
    last_sequence: Option<String>,
    finished: bool,
}

/// Starts reading the stream of `table` and checking its pages with `backstop`.
pub fn spawn_stream_backstop<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    dynamodb: aws_sdk_dynamodb::Client,
    streams: Client,
    table: String,
    backstop: Arc<Backstop<E, S, Q>>,
) -> StreamBackstop {
    let (stop, mut stopped) = watch::channel(false);
    let task = tokio::spawn(async move {
        let mut poller = Poll {
            dynamodb,
            streams,
            table,
            arn: None,
            shards: BTreeMap::new(),
            pending: Vec::new(),
        };
        let mut round: u64 = 0;
        while !*stopped.borrow() {
            if round.is_multiple_of(LIST_EVERY_ROUNDS) || poller.arn.is_none() {
                poller.list_shards().await;
            }
            poller.read().await;
            poller.check(&backstop).await;
            round += 1;
            tokio::select! {
                _ = stopped.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)) => {}
            }
        }
    });
    StreamBackstop { task, stop }
}

struct Poll {
    dynamodb: aws_sdk_dynamodb::Client,
    streams: Client,
    table: String,
    arn: Option<String>,
    shards: BTreeMap<String, ShardState>,
    pending: Vec<PageNotice>,
}

impl Poll {
    async fn list_shards(&mut self) {
        if self.arn.is_none() {
            match self
                .dynamodb
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
            {
                Ok(out) => {
                    self.arn = out
                        .table()
                        .and_then(|t| t.latest_stream_arn())
                        .map(str::to_owned);
                    if self.arn.is_none() {
                        tracing::error!(table = %self.table, "the Events table has no stream: the backstop cannot run");
                    }
                }
                Err(e) => {
                    tracing::warn!(error = ?e.as_service_error().and_then(aws_sdk_dynamodb::error::ProvideErrorMetadata::code), "DescribeTable failed")
                }
            }
        }
        let Some(arn) = self.arn.clone() else { return };
        let mut start: Option<String> = None;
        loop {
            let out = match self
                .streams
                .describe_stream()
                .stream_arn(&arn)
                .set_exclusive_start_shard_id(start.clone())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => {
                    tracing::warn!(error = ?e, "DescribeStream failed (is AWS_ENDPOINT_URL_DYNAMODB_STREAMS or --dynamodb-endpoint set for a local DynamoDB?)");
                    return;
                }
            };
            let Some(description) = out.stream_description() else {
                return;
            };
            for shard in description.shards() {
                if let Some(id) = shard.shard_id() {
                    self.shards.entry(id.to_owned()).or_default();
                }
            }
            start = description.last_evaluated_shard_id().map(str::to_owned);
            if start.is_none() {
                return;
            }
        }
    }

    /// One GetRecords per open shard; page notices go to `pending`.
    async fn read(&mut self) {
        let Some(arn) = self.arn.clone() else { return };
        let now = crate::lambda::now_ms();
        for (id, shard) in &mut self.shards {
            if shard.finished {
                continue;
            }
            if shard.iterator.is_none() {
                let (kind, seq) = match &shard.last_sequence {
                    Some(seq) => (ShardIteratorType::AfterSequenceNumber, Some(seq.clone())),
                    None => (ShardIteratorType::TrimHorizon, None),
                };
                match self
                    .streams
                    .get_shard_iterator()
                    .stream_arn(&arn)
                    .shard_id(id)
                    .shard_iterator_type(kind)
                    .set_sequence_number(seq)
                    .send()
                    .await
                {
                    Ok(out) => shard.iterator = out.shard_iterator().map(str::to_owned),
                    Err(e) => {
                        tracing::warn!(shard = %id, error = ?e.as_service_error().and_then(ProvideErrorMetadata::code), "GetShardIterator failed");
                        continue;
                    }
                }
            }
            let Some(iterator) = shard.iterator.take() else {
                shard.finished = true;
                continue;
            };
            match self
                .streams
                .get_records()
                .shard_iterator(iterator)
                .limit(RECORDS_PER_CALL_MAX)
                .send()
                .await
            {
                Ok(out) => {
                    for record in out.records() {
                        if let Some(seq) = record.dynamodb().and_then(|d| d.sequence_number()) {
                            shard.last_sequence = Some(seq.to_owned());
                        }
                        self.pending.extend(notice(record, now));
                    }
                    shard.iterator = out.next_shard_iterator().map(str::to_owned);
                    shard.finished = shard.iterator.is_none();
                }
                Err(e) => {
                    // Expired or trimmed iterator, or a cut: a new one from where we were.
                    tracing::warn!(shard = %id, error = ?e.as_service_error().and_then(ProvideErrorMetadata::code), "GetRecords failed");
                }
            }
        }
    }

    /// Checks the pending notices that are due; keeps them if the check fails.
    async fn check<E: EventStore, S: SnapshotStore, Q: Quarantine>(
        &mut self,
        backstop: &Backstop<E, S, Q>,
    ) {
        let ready = due(&self.pending, crate::lambda::now_ms(), backstop.delay());
        if ready == 0 {
            return;
        }
        match backstop.check(&self.pending[..ready]).await {
            Ok(checked) => {
                if checked.repaired > 0 || checked.failed > 0 {
                    tracing::warn!(?checked, "backstop check");
                }
                self.pending.drain(..ready);
            }
            Err(e) => tracing::warn!(error = %e, "backstop check failed; trying again"),
        }
    }
}

fn s(v: Option<&AttributeValue>) -> Option<&str> {
    v.and_then(|v| v.as_s().ok()).map(String::as_str)
}

fn n(v: Option<&AttributeValue>) -> Option<&str> {
    v.and_then(|v| v.as_n().ok()).map(String::as_str)
}

fn notice(record: &Record, now_ms: i64) -> Option<PageNotice> {
    let change = record.dynamodb()?;
    let keys = change.keys()?;
    let event = record.event_name().map(|e| e.as_str()).unwrap_or_default();
    page_notice(
        s(keys.get("pk")),
        s(keys.get("sk")),
        n(change.new_image().and_then(|i| i.get("last"))),
        event,
        now_ms,
    )
}
