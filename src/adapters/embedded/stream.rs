//! An in-process stream with Kinesis's shape: N shards over the 128-bit MD5 hash-key
//! space, per-shard sequence numbers, and an event source mapping that hands the projector
//! `KinesisEvent` batches (batch size, batching window) and retries from the lowest
//! reported failure like Lambda. Records live in memory: on start, catch-up from the event
//! store replaces whatever a crash lost.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::kinesis::KinesisEvent;

use crate::codec::kinesis::lambda_record;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::codec::bucket::{hash_key, shard_of};
use crate::ports::{EventPublisher, EventStore, OutRecord, Quarantine, SnapshotStore, StoreError};
use crate::service::metrics::Metrics;
use crate::service::projector::{Projector, lowest_failure};

struct StreamRecord {
    seq: u64,
    partition_key: String,
    data: Vec<u8>,
}

struct Shard {
    id: String,
    log: Mutex<ShardLog>,
    notify: Notify,
}

#[derive(Default)]
struct ShardLog {
    next_seq: u64,
    records: VecDeque<StreamRecord>,
}

/// The stream; share it with `Arc`.
pub struct EmbeddedStream {
    shards: Vec<Shard>,
    metrics: Arc<Metrics>,
}

impl EmbeddedStream {
    pub fn new(shards: u32, metrics: Arc<Metrics>) -> Arc<EmbeddedStream> {
        let shards = (0..shards.max(1))
            .map(|i| Shard {
                id: format!("shardId-{i:012}"),
                log: Mutex::new(ShardLog::default()),
                notify: Notify::new(),
            })
            .collect();
        Arc::new(EmbeddedStream { shards, metrics })
    }

    /// Records waiting on all shards.
    pub fn pending(&self) -> usize {
        self.shards.iter().map(|s| lock(&s.log).records.len()).sum()
    }
}

fn lock(log: &Mutex<ShardLog>) -> std::sync::MutexGuard<'_, ShardLog> {
    // A panic while holding this lock cannot leave the log half-updated (single push/pop).
    log.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl EventPublisher for Arc<EmbeddedStream> {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), StoreError> {
        let n = records.len() as u64;
        for r in records {
            let shard = &self.shards
                [shard_of(hash_key(&r.partition_key), self.shards.len() as u32) as usize];
            {
                let mut log = lock(&shard.log);
                log.next_seq += 1;
                let seq = log.next_seq;
                log.records.push_back(StreamRecord {
                    seq,
                    partition_key: r.partition_key,
                    data: r.data,
                });
            }
            shard.notify.notify_one();
        }
        Metrics::add(&self.metrics.projection_lag_records, n);
        Ok(())
    }
}

/// Event source mapping settings (the subset of Lambda's that matters here).
#[derive(Debug, Clone, Copy)]
pub struct Mapping {
    /// Most records per invocation.
    pub batch_size: usize,
    /// How long to wait for a fuller batch.
    pub window: Duration,
    /// Retries of a failing record before it is dropped (its events stay in the store;
    /// gap fill or catch-up projects them later).
    pub retries_max: u32,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            batch_size: 1_000,
            window: Duration::from_millis(5),
            retries_max: 8,
        }
    }
}

/// The running consumers; `drain` waits for quiet, `stop` ends them.
pub struct Consumers {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    stream: Arc<EmbeddedStream>,
}

impl Consumers {
    /// Waits until every published record has been handled.
    pub async fn drain(&self) {
        while self.stream.pending() > 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for s in &self.stream.shards {
            s.notify.notify_one();
        }
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

/// Starts one consumer per shard calling `projector.handle` like Lambda would.
pub fn spawn_consumers<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    stream: Arc<EmbeddedStream>,
    projector: Arc<Projector<E, S, Q>>,
    mapping: Mapping,
) -> Consumers {
    let (stop, stopped) = watch::channel(false);
    let tasks = (0..stream.shards.len())
        .map(|i| {
            let (stream, projector, stopped) = (stream.clone(), projector.clone(), stopped.clone());
            tokio::spawn(async move { consume(stream, i, projector, mapping, stopped).await })
        })
        .collect();
    Consumers {
        tasks,
        stop,
        stream,
    }
}

async fn consume<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    stream: Arc<EmbeddedStream>,
    index: usize,
    projector: Arc<Projector<E, S, Q>>,
    mapping: Mapping,
    stopped: watch::Receiver<bool>,
) {
    let shard = &stream.shards[index];
    let mut retries = 0u32;
    loop {
        if *stopped.borrow() {
            return;
        }
        let available = lock(&shard.log).records.len();
        if available == 0 {
            tokio::select! {
                _ = shard.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
            continue;
        }
        if available < mapping.batch_size && !mapping.window.is_zero() && retries == 0 {
            tokio::time::sleep(mapping.window).await;
        }
        let event = batch_event(shard, mapping.batch_size);
        let taken = event.records.len();
        let seqs: Vec<String> = event
            .records
            .iter()
            .map(|r| r.kinesis.sequence_number.clone())
            .collect();
        let response = projector.handle(event).await;
        let lowest = lowest_failure(&response, &seqs);
        let done = match lowest {
            None => {
                retries = 0;
                taken
            }
            Some(i) if retries >= mapping.retries_max => {
                tracing::error!(shard = %shard.id, seq = %seqs[i], "dropping record after retries; catch-up will project its events");
                retries = 0;
                i + 1
            }
            Some(i) => {
                retries += 1;
                tokio::time::sleep(Duration::from_millis(10 << retries.min(6))).await;
                i
            }
        };
        let mut log = lock(&shard.log);
        for _ in 0..done {
            log.records.pop_front();
        }
        stream
            .metrics
            .projection_lag_records
            .fetch_sub(done as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The next batch of a shard as Lambda would build it.
fn batch_event(shard: &Shard, batch_size: usize) -> KinesisEvent {
    let log = lock(&shard.log);
    let mut event = KinesisEvent::default();
    event.records = log
        .records
        .iter()
        .take(batch_size)
        .map(|r| {
            lambda_record(
                "embedded",
                &shard.id,
                &format!("{:056}", r.seq),
                &r.partition_key,
                &r.data,
            )
        })
        .collect();
    event
}
