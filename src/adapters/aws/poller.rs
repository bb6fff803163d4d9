//! Plays Lambda's Kinesis event source mapping against a real Kinesis API (kinesalite
//! locally): ListShards, GetShardIterator and GetRecords per shard; children only after
//! their parents are drained (resharding); batches handed to the projector exactly as
//! Lambda would (`KinesisEvent` in, `KinesisEventResponse` out); a reported failure is
//! retried from the lowest failed sequence number, and dropped after the mapping's retries.
//!
//! Positions are kept in memory: after a restart it reads from TRIM_HORIZON again, which
//! is safe (redelivered events are duplicates by version) but slower.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::adapters::embedded::stream::Mapping;
use crate::codec::kinesis::lambda_record;
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::projector::{Projector, lowest_failure};

/// Where to (re)start reading a shard.
#[derive(Debug, Clone)]
enum Resume {
    TrimHorizon,
    At(String),
    After(String),
}

#[derive(Debug)]
struct ShardState {
    parents: Vec<String>,
    iterator: Option<String>,
    resume: Resume,
    finished: bool,
    retries: u32,
}

/// The running poller.
pub struct Poller {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    progress: Arc<Progress>,
}

/// Polling rounds done, and how many of the latest ones in a row found nothing.
#[derive(Default)]
struct Progress {
    rounds: AtomicU64,
    quiet_rounds: AtomicU64,
}

impl Poller {
    /// Waits until two consecutive rounds, both begun after this call, found nothing new.
    pub async fn drain(&self) {
        let start = self.progress.rounds.load(Ordering::Acquire);
        loop {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let rounds = self.progress.rounds.load(Ordering::Acquire);
            if rounds >= start + 3 && self.progress.quiet_rounds.load(Ordering::Acquire) >= 2 {
                return;
            }
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts polling `stream` and feeding `projector`.
pub fn spawn_poller<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    client: Client,
    stream: String,
    projector: Arc<Projector<E, S, Q>>,
    mapping: Mapping,
) -> Poller {
    let (stop, stopped) = watch::channel(false);
    let progress = Arc::new(Progress::default());
    let shared = progress.clone();
    let task =
        tokio::spawn(
            async move { poll(client, stream, projector, mapping, stopped, shared).await },
        );
    Poller {
        task,
        stop,
        progress,
    }
}

async fn list_shards(client: &Client, stream: &str, shards: &mut BTreeMap<String, ShardState>) {
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = match req.send().await {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(error = ?e.as_service_error().and_then(ProvideErrorMetadata::code), "ListShards failed");
                return;
            }
        };
        for s in out.shards() {
            shards
                .entry(s.shard_id().to_owned())
                .or_insert_with(|| ShardState {
                    parents: s
                        .parent_shard_id()
                        .into_iter()
                        .chain(s.adjacent_parent_shard_id())
                        .map(str::to_owned)
                        .collect(),
                    iterator: None,
                    resume: Resume::TrimHorizon,
                    finished: false,
                    retries: 0,
                });
        }
        match out.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => return,
        }
    }
}

async fn poll<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    client: Client,
    stream: String,
    projector: Arc<Projector<E, S, Q>>,
    mapping: Mapping,
    stopped: watch::Receiver<bool>,
    progress: Arc<Progress>,
) {
    let mut shards: BTreeMap<String, ShardState> = BTreeMap::new();
    let mut round: u64 = 0;
    while !*stopped.borrow() {
        if round.is_multiple_of(10) {
            list_shards(&client, &stream, &mut shards).await;
        }
        round += 1;
        let finished: Vec<String> = shards
            .iter()
            .filter(|(_, s)| s.finished)
            .map(|(id, _)| id.clone())
            .collect();
        let ready: Vec<String> = shards
            .iter()
            .filter(|(_, s)| !s.finished)
            // A child waits for its parents: a parent we never saw has expired, so it counts as done.
            .filter(|(_, s)| {
                s.parents
                    .iter()
                    .all(|p| finished.contains(p) || !shards.contains_key(p))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut worked = false;
        for id in ready {
            let state = shards.get_mut(&id).expect("ready shards exist");
            worked |= poll_shard(&client, &stream, &id, state, &projector, mapping).await;
        }
        if worked {
            progress.quiet_rounds.store(0, Ordering::Release);
        } else {
            progress.quiet_rounds.fetch_add(1, Ordering::AcqRel);
        }
        progress.rounds.fetch_add(1, Ordering::AcqRel);
        if !worked {
            tokio::time::sleep(mapping.window.max(Duration::from_millis(50))).await;
        }
    }
}

/// One GetRecords on one shard, and its batch through the projector. True if it did work.
async fn poll_shard<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    client: &Client,
    stream: &str,
    shard_id: &str,
    state: &mut ShardState,
    projector: &Projector<E, S, Q>,
    mapping: Mapping,
) -> bool {
    if state.iterator.is_none() {
        let req = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(shard_id);
        let req = match &state.resume {
            Resume::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Resume::At(seq) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            Resume::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        match req.send().await {
            Ok(out) => state.iterator = out.shard_iterator().map(str::to_owned),
            Err(e) => {
                tracing::warn!(shard = shard_id, error = ?e.as_service_error().and_then(ProvideErrorMetadata::code), "GetShardIterator failed");
                return false;
            }
        }
    }
    let Some(iterator) = state.iterator.take() else {
        return false;
    };
    let out = match client
        .get_records()
        .shard_iterator(iterator)
        .limit(mapping.batch_size.min(10_000) as i32)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) => {
            tracing::warn!(shard = shard_id, error = ?e.as_service_error().and_then(ProvideErrorMetadata::code), "GetRecords failed; re-reading");
            return false;
        }
    };
    let next = out.next_shard_iterator().map(str::to_owned);
    if out.records().is_empty() {
        state.iterator = next.clone();
        state.finished = next.is_none(); // closed by a reshard and fully read
        return false;
    }
    let seqs: Vec<String> = out
        .records()
        .iter()
        .map(|r| r.sequence_number().to_owned())
        .collect();
    let response = projector
        .handle(lambda_event(stream, shard_id, out.records()))
        .await;
    let lowest = lowest_failure(&response, &seqs);
    match lowest {
        None => {
            state.retries = 0;
            state.resume = Resume::After(seqs[seqs.len() - 1].clone());
            state.iterator = next.clone();
            state.finished = next.is_none();
        }
        Some(i) if state.retries >= mapping.retries_max => {
            tracing::error!(shard = shard_id, seq = %seqs[i], "dropping record after retries; its events stay in the event store");
            state.retries = 0;
            state.resume = Resume::After(seqs[i].clone());
        }
        Some(i) => {
            state.retries += 1;
            state.resume = Resume::At(seqs[i].clone());
            tokio::time::sleep(Duration::from_millis(10 << state.retries.min(6))).await;
        }
    }
    true
}

/// The `KinesisEvent` Lambda would build for these records.
fn lambda_event(
    stream: &str,
    shard_id: &str,
    records: &[aws_sdk_kinesis::types::Record],
) -> KinesisEvent {
    let mut event = KinesisEvent::default();
    event.records = records
        .iter()
        .map(|r| {
            lambda_record(
                stream,
                shard_id,
                r.sequence_number(),
                r.partition_key(),
                r.data().as_ref(),
            )
        })
        .collect();
    event
}
