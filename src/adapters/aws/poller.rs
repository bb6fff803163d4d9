//! Plays Lambda's Kinesis event source mapping against a real Kinesis API (kinesalite
//! locally): ListShards, GetShardIterator and GetRecords per shard; children only after
//! their parents are drained (resharding). Batching, retry from the lowest failure and
//! give-up are the shared [`crate::service::mapping`]; this module only reads shards.
//!
//! Positions are kept in memory: after a restart it reads from TRIM_HORIZON again, which
//! is safe (redelivered events are duplicates by version) but slower.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_kinesis::Client;
use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::ShardIteratorType;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::codec::batch::RecordBatch;
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::mapping::{Mapping, ShardReader, ShardState, Step};
use crate::service::projector::Projector;

/// Where to (re)start reading a shard.
#[derive(Debug, Clone)]
enum Resume {
    TrimHorizon,
    At(String),
    After(String),
}

/// One shard's reading position, as the mapping's [`ShardReader`].
#[derive(Debug)]
struct KinesisShard {
    client: Client,
    stream: String,
    id: String,
    parents: Vec<String>,
    iterator: Option<String>,
    resume: Resume,
    /// Closed by a reshard and read to its end.
    finished: bool,
    mapping: ShardState,
    /// Sequence numbers read since the last settle, and the iterator after them.
    read: Vec<String>,
    next: Option<String>,
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

async fn list_shards(client: &Client, stream: &str, shards: &mut BTreeMap<String, KinesisShard>) {
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
                .or_insert_with(|| KinesisShard {
                    client: client.clone(),
                    stream: stream.to_owned(),
                    id: s.shard_id().to_owned(),
                    parents: s
                        .parent_shard_id()
                        .into_iter()
                        .chain(s.adjacent_parent_shard_id())
                        .map(str::to_owned)
                        .collect(),
                    iterator: None,
                    resume: Resume::TrimHorizon,
                    finished: false,
                    mapping: ShardState::default(),
                    read: Vec::new(),
                    next: None,
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
    let mut shards: BTreeMap<String, KinesisShard> = BTreeMap::new();
    let mut batch = RecordBatch::new();
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
            let shard = shards.get_mut(&id).expect("ready shards exist");
            let mut state = shard.mapping;
            let step = mapping
                .step(&mut state, shard, &*projector, &mut batch)
                .await;
            shard.mapping = state;
            worked |= step != Step::Idle;
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

impl KinesisShard {
    /// A shard iterator at the shard's resume position.
    async fn iterator(&mut self) -> Option<String> {
        if let Some(it) = self.iterator.take() {
            return Some(it);
        }
        let req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(&self.id);
        let req = match &self.resume {
            Resume::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            Resume::At(seq) => req
                .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
                .starting_sequence_number(seq),
            Resume::After(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        match req.send().await {
            Ok(out) => out.shard_iterator().map(str::to_owned),
            Err(e) => {
                tracing::warn!(shard = %self.id, error = ?e.as_service_error().and_then(ProvideErrorMetadata::code), "GetShardIterator failed");
                None
            }
        }
    }
}

impl ShardReader for KinesisShard {
    /// One GetRecords from where the last read stopped (or the resume position).
    async fn read(&mut self, limit: usize, batch: &mut RecordBatch) -> usize {
        let iterator = match self.next.take() {
            Some(it) if !self.read.is_empty() => Some(it),
            _ => self.iterator().await,
        };
        let Some(iterator) = iterator else {
            return 0;
        };
        let out = match self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(limit.min(10_000) as i32)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) => {
                tracing::warn!(shard = %self.id, error = ?e.as_service_error().and_then(ProvideErrorMetadata::code), "GetRecords failed; re-reading");
                return 0;
            }
        };
        let next = out.next_shard_iterator().map(str::to_owned);
        if out.records().is_empty() {
            if self.read.is_empty() {
                self.finished = next.is_none();
                self.iterator = next;
            } else {
                self.next = next;
            }
            return 0;
        }
        for r in out.records() {
            batch.push(&self.id, r.sequence_number(), r.data().as_ref());
            self.read.push(r.sequence_number().to_owned());
        }
        self.next = next;
        out.records().len()
    }

    fn settle(&mut self, done: usize, _: &RecordBatch) {
        let read = std::mem::take(&mut self.read);
        let next = self.next.take();
        if done >= read.len() {
            if let Some(last) = read.last() {
                self.resume = Resume::After(last.clone());
            }
            self.finished = next.is_none();
            self.iterator = next;
        } else {
            // Read again from the first unsettled record.
            self.resume = Resume::At(read[done].clone());
            self.iterator = None;
        }
    }
}
