//! An in-process stream with Kinesis's shape: N shards over the 128-bit MD5 hash-key
//! space, per-shard sequence numbers, and one consumer per shard running the shared event
//! source mapping ([`crate::service::mapping`]) into the projector. Records live in memory:
//! on start, catch-up from the event store replaces whatever a crash lost, and a record the
//! mapping gives up on is projected by a catch-up the next time its shard is idle.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;

use crate::codec::batch::RecordBatch;
use crate::codec::bucket::{hash_key, shard_of};
use crate::ports::{EventPublisher, EventStore, OutRecord, Quarantine, SnapshotStore, StoreError};
use crate::service::mapping::{ShardReader, ShardState, Step};
use crate::service::metrics::Metrics;
use crate::service::projector::Projector;

pub use crate::service::mapping::Mapping;

struct StreamRecord {
    seq: u64,
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
        Metrics::add(&self.metrics.projection_lag_records, n);
        for r in records {
            let shard = &self.shards
                [shard_of(hash_key(&r.partition_key), self.shards.len() as u32) as usize];
            {
                let mut log = lock(&shard.log);
                log.next_seq += 1;
                let seq = log.next_seq;
                log.records.push_back(StreamRecord { seq, data: r.data });
            }
            shard.notify.notify_one();
        }
        Ok(())
    }
}

/// One shard as the mapping reads it: records stay in the log until settled.
struct Reader {
    stream: Arc<EmbeddedStream>,
    index: usize,
    /// Records read since the last settle.
    read: usize,
}

impl ShardReader for Reader {
    async fn read(&mut self, limit: usize, batch: &mut RecordBatch) -> usize {
        let shard = &self.stream.shards[self.index];
        let log = lock(&shard.log);
        let mut n = 0;
        for r in log.records.iter().skip(self.read).take(limit) {
            batch.push(&shard.id, &format!("{:056}", r.seq), &r.data);
            n += 1;
        }
        self.read += n;
        n
    }

    fn settle(&mut self, done: usize, _: &RecordBatch) {
        let shard = &self.stream.shards[self.index];
        let mut log = lock(&shard.log);
        let done = done.min(log.records.len());
        log.records.drain(..done);
        self.read = 0;
        self.stream
            .metrics
            .projection_lag_records
            .fetch_sub(done as u64, Ordering::Relaxed);
    }
}

/// Longest a drain waits for a failing catch-up once the stream is empty.
pub const DRAIN_BEHIND_MAX: Duration = Duration::from_secs(60);

/// The running consumers; `drain` waits for quiet, `stop` ends them.
pub struct Consumers {
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    stream: Arc<EmbeddedStream>,
    behind: Arc<dyn Fn() -> bool + Send + Sync>,
}

impl Consumers {
    /// Waits until every published record has been handled, and any record given up on
    /// has been caught up from the event store: or, if the catch-up keeps failing, until
    /// [`DRAIN_BEHIND_MAX`] has passed with nothing else to wait for (logged; the events
    /// are stored, and the next start's catch-up projects them).
    pub async fn drain(&self) {
        let mut behind_since = None;
        loop {
            if self.stream.pending() > 0 {
                behind_since = None;
            } else if !(self.behind)() {
                return;
            } else {
                let since = *behind_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= DRAIN_BEHIND_MAX {
                    tracing::error!(
                        "snapshots are still behind after a give-up and {}s of failing \
                         catch-ups; the next start catches up",
                        DRAIN_BEHIND_MAX.as_secs()
                    );
                    return;
                }
            }
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

/// Starts one consumer per shard running the event source mapping into `projector`.
pub fn spawn_consumers<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    stream: Arc<EmbeddedStream>,
    projector: Arc<Projector<E, S, Q>>,
    mapping: Mapping,
) -> Consumers {
    let (stop, stopped) = watch::channel(false);
    let tasks = (0..stream.shards.len())
        .map(|index| {
            let reader = Reader {
                stream: stream.clone(),
                index,
                read: 0,
            };
            let (projector, stopped) = (projector.clone(), stopped.clone());
            tokio::spawn(async move { consume(reader, projector, mapping, stopped).await })
        })
        .collect();
    Consumers {
        tasks,
        stop,
        stream,
        behind: Arc::new(move || projector.is_behind()),
    }
}

async fn consume<E: EventStore, S: SnapshotStore, Q: Quarantine>(
    mut reader: Reader,
    projector: Arc<Projector<E, S, Q>>,
    mapping: Mapping,
    stopped: watch::Receiver<bool>,
) {
    let (mut state, mut batch) = (ShardState::default(), RecordBatch::new());
    while !*stopped.borrow() {
        let step = mapping
            .step(&mut state, &mut reader, &*projector, &mut batch)
            .await;
        if step == Step::Idle {
            let shard = &reader.stream.shards[reader.index];
            tokio::select! {
                _ = shard.notify.notified() => {}
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }
}
