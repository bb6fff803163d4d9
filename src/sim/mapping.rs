//! Lambda's Kinesis event source mapping over the simulated stream. The mapping logic is
//! the real one ([`crate::service::mapping`]: batch size, window, retry from the lowest
//! failed record, give-up, catch-up when idle), driving the real projector through its
//! transport-neutral input ([`RecordBatch`] in, record indices to retry out). This module
//! brings only what Lambda adds around it and the faults of the run: one consumer per shard
//! and ParallelizationFactor slot (by partition key), children only after their parents are
//! read to the end, lost records, redelivered and reordered batches, invocations that time
//! out while they keep running (so two projector instances race on the same accounts),
//! children read before their parents.
//!
//! It records what it acknowledged: every event in an acknowledged record must be in its
//! account's snapshot once the run drains (the check that finds a silently dropped group).
//! Must never: read the stores, or acknowledge a record the projector reported failed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::codec::batch::RecordBatch;
use crate::codec::decode_record_pages;
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::mapping::{self, BatchHandler, ShardReader, ShardState, Step};
use crate::service::projector::{Projection, Projector};
use crate::sim::config::Draw;
use crate::sim::faults::Chaos;
use crate::sim::stream::{Record, SimStream};

/// What the mapping acknowledged, over the whole run (all incarnations).
#[derive(Debug, Default)]
pub struct Acks {
    /// Newest version per account carried by an acknowledged record.
    pub versions: HashMap<String, u64>,
    pub poison: BTreeSet<u64>,
    pub given_up: u64,
    pub batches: u64,
}

/// The mapping's settings for a run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_size: usize,
    /// How long the mapping waits for a fuller batch.
    pub window: Duration,
    pub retries_max: u32,
    pub parallelization: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Position {
    next: usize,
    busy: bool,
    finished: bool,
}

/// One incarnation's mapping: its tasks die with the process.
pub struct Mapping<E, S, Q> {
    stream: Arc<SimStream>,
    instances: Vec<Arc<Projector<E, S, Q>>>,
    settings: Settings,
    chaos: Arc<Chaos>,
    acks: Arc<Mutex<Acks>>,
    positions: Mutex<BTreeMap<(usize, u32), Position>>,
    background: Arc<AtomicUsize>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The slot of a partition key under a ParallelizationFactor (one key, one slot).
fn slot_of(partition_key: &str, parallelization: u32) -> u32 {
    (crate::codec::bucket::hash_key(partition_key) % u128::from(parallelization.max(1))) as u32
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> Mapping<E, S, Q> {
    pub fn new(
        stream: Arc<SimStream>,
        instances: Vec<Arc<Projector<E, S, Q>>>,
        settings: Settings,
        chaos: Arc<Chaos>,
        acks: Arc<Mutex<Acks>>,
    ) -> Arc<Self> {
        Arc::new(Mapping {
            stream,
            instances,
            settings,
            chaos,
            acks,
            positions: Mutex::default(),
            background: Arc::default(),
            tasks: Mutex::default(),
        })
    }

    /// Starts a consumer per shard and slot, and keeps starting them as shards appear.
    pub fn start(self: &Arc<Self>) {
        let me = self.clone();
        let supervisor = tokio::spawn(async move {
            loop {
                me.spawn_new_consumers();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        });
        lock(&self.tasks).push(supervisor);
    }

    fn spawn_new_consumers(self: &Arc<Self>) {
        let shards = self.stream.shard_count();
        for shard in 0..shards {
            for slot in 0..self.settings.parallelization.max(1) {
                if lock(&self.positions).contains_key(&(shard, slot)) {
                    continue;
                }
                lock(&self.positions).insert((shard, slot), Position::default());
                let me = self.clone();
                let task = tokio::spawn(async move { me.consume(shard, slot).await });
                lock(&self.tasks).push(task);
            }
        }
    }

    /// Ends every task of this incarnation (a crash, or the end of the run).
    pub fn stop(&self) {
        for t in lock(&self.tasks).drain(..) {
            t.abort();
        }
    }

    /// True once every record on the stream has been handled, nothing is in flight and no
    /// instance waits for a catch-up after a give-up.
    pub fn drained(&self) -> bool {
        if self.background.load(Ordering::SeqCst) > 0 || self.behind() {
            return false;
        }
        let positions = lock(&self.positions);
        self.stream.shards().iter().enumerate().all(|(i, shard)| {
            (0..self.settings.parallelization.max(1)).all(|slot| {
                positions.get(&(i, slot)).is_some_and(|p| {
                    !p.busy
                        && shard.records[p.next.min(shard.records.len())..]
                            .iter()
                            .all(|r| {
                                r.lost
                                    || slot_of(&r.partition_key, self.settings.parallelization)
                                        != slot
                            })
                })
            })
        })
    }

    fn behind(&self) -> bool {
        self.instances.iter().any(|p| p.is_behind())
    }

    fn parents_finished(&self, shard: usize) -> bool {
        if self.chaos.rates().children_first {
            return true;
        }
        let Some(parents) = self.stream.shards().get(shard).map(|s| s.parents.clone()) else {
            return true;
        };
        let positions = lock(&self.positions);
        parents.iter().all(|p| {
            (0..self.settings.parallelization.max(1))
                .all(|slot| positions.get(&(*p, slot)).is_some_and(|pos| pos.finished))
        })
    }

    fn set(&self, shard: usize, slot: u32, f: impl FnOnce(&mut Position)) {
        f(lock(&self.positions).entry((shard, slot)).or_default());
    }

    /// One shard slot's consumer: the real mapping's steps until the shard is closed and
    /// read to the end.
    async fn consume(self: Arc<Self>, shard: usize, slot: u32) {
        let taken: Arc<Mutex<Vec<Record>>> = Arc::default();
        let mut reader = Reader {
            mapping: self.clone(),
            shard,
            slot,
            next: 0,
            cursor: 0,
            indices: Vec::new(),
            taken: taken.clone(),
            finished: false,
        };
        let invoker = Invoker {
            mapping: self.clone(),
            shard,
            taken,
        };
        let real = mapping::Mapping {
            batch_size: self.settings.batch_size,
            window: self.settings.window,
            retries_max: self.settings.retries_max,
        };
        let (mut state, mut batch) = (ShardState::default(), RecordBatch::new());
        loop {
            match real
                .step(&mut state, &mut reader, &invoker, &mut batch)
                .await
            {
                Step::Handled { .. } => {}
                Step::Idle if reader.finished && !self.behind() => return,
                Step::Idle => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    /// Hands `batch` to a projector instance (with the run's faults); acknowledges what it
    /// did not report failed; answers the failed records by index into `batch`.
    async fn deliver(&self, shard: usize, batch: &RecordBatch, records: &[Record]) -> Projection {
        let instance = self
            .chaos
            .with_rng(|r| r.below(self.instances.len() as u64) as usize);
        // The order the projector sees: `order[j]` is the index in `batch` of its record j.
        let mut order: Vec<usize> = (0..batch.len()).collect();
        if self.chaos.roll("reorder", self.chaos.rates().reorder) {
            self.chaos.with_rng(|r| {
                for i in (1..order.len()).rev() {
                    order.swap(i, r.below(i as u64 + 1) as usize);
                }
            });
        }
        let delivered = reordered(batch, &order);
        self.chaos.log(|| {
            let seqs: Vec<u64> = order.iter().map(|&i| records[i].seq).collect();
            format!("deliver shard {shard} instance {instance} {seqs:?}")
        });
        let projector = self.instances[instance].clone();
        if self
            .chaos
            .roll("invocation_timeout", self.chaos.rates().invocation_timeout)
        {
            // Lambda gives up waiting and retries elsewhere; this invocation runs on.
            let background = self.background.clone();
            background.fetch_add(1, Ordering::SeqCst);
            let task = tokio::spawn(async move {
                BatchHandler::handle(&*projector, &delivered).await;
                background.fetch_sub(1, Ordering::SeqCst);
            });
            lock(&self.tasks).push(task);
            let wait = self.chaos.with_rng(|r| r.between(1, 20));
            tokio::time::sleep(Duration::from_millis(wait)).await;
            return Projection { failed: vec![0] };
        }
        let response = BatchHandler::handle(&*projector, &delivered).await;
        if response.failed.iter().any(|&j| j >= order.len()) {
            self.chaos.breach(
                "*",
                "the projector reported a record it was not given".into(),
            );
        }
        let mut failed: Vec<usize> = response
            .failed
            .iter()
            .filter_map(|&j| order.get(j).copied())
            .collect();
        failed.sort_unstable();
        failed.dedup();
        // An account is reported at its first record as delivered; in a shuffled batch
        // that may not be its lowest, so no record of a reported account counts as done.
        let reported: HashSet<String> = failed
            .iter()
            .flat_map(|&i| decode_record_pages(&records[i].data).unwrap_or_default())
            .map(|p| p.account.to_string())
            .collect();
        let lowest = failed.first().copied().unwrap_or(records.len());
        self.acknowledge(&records[..lowest], &reported);
        Projection { failed }
    }

    fn acknowledge(&self, acked: &[Record], reported: &HashSet<String>) {
        let mut acks = lock(&self.acks);
        acks.batches += 1;
        for r in acked {
            if r.poison {
                acks.poison.insert(r.seq);
                continue;
            }
            for page in decode_record_pages(&r.data).unwrap_or_default() {
                if reported.contains(page.account.as_str()) {
                    continue;
                }
                let v = acks.versions.entry(page.account.to_string()).or_default();
                *v = (*v).max(page.last_version());
            }
        }
    }
}

/// A copy of `batch` with its records in `order`.
fn reordered(batch: &RecordBatch, order: &[usize]) -> RecordBatch {
    let mut out = RecordBatch::new();
    for &i in order {
        let data = batch.data(i).unwrap_or_default();
        out.push(batch.shard(i), batch.sequence_number(i), data);
    }
    out
}

/// One shard slot as the real mapping reads it: the records of its slot that were not lost,
/// children after their parents, and a settled batch sometimes read again (redelivery).
struct Reader<E, S, Q> {
    mapping: Arc<Mapping<E, S, Q>>,
    shard: usize,
    slot: u32,
    /// Stream index of the first unsettled record.
    next: usize,
    /// Stream index after the last record scanned since the last settle.
    cursor: usize,
    /// Stream indices of the records put in the batch since the last settle.
    indices: Vec<usize>,
    /// Those records, for the invoker.
    taken: Arc<Mutex<Vec<Record>>>,
    finished: bool,
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> ShardReader for Reader<E, S, Q> {
    async fn read(&mut self, limit: usize, batch: &mut RecordBatch) -> usize {
        let m = &self.mapping;
        if !m.parents_finished(self.shard) {
            return 0;
        }
        m.stream.maybe_lose(self.shard, self.cursor);
        let (records, open) = m.stream.records_from(self.shard, self.cursor);
        let shard_id = format!("shardId-{:012}", self.shard);
        let mut read = 0;
        let mut taken = lock(&self.taken);
        for (k, r) in records.into_iter().enumerate() {
            if read >= limit {
                break;
            }
            let index = self.cursor + k;
            if !r.lost && slot_of(&r.partition_key, m.settings.parallelization) == self.slot {
                batch.push(&shard_id, &format!("{:020}", r.seq), &r.data);
                self.indices.push(index);
                taken.push(r);
                read += 1;
            }
            // Scanned: a record of another slot or a lost one is passed over.
            self.cursor = index + 1;
        }
        if self.indices.is_empty() {
            // Nothing of this slot: what was scanned is settled.
            self.next = self.cursor;
            self.finished = !open;
            let (next, finished) = (self.next, self.finished);
            m.set(self.shard, self.slot, |p| {
                p.next = next;
                p.finished = finished;
            });
        } else {
            m.set(self.shard, self.slot, |p| p.busy = true);
        }
        read
    }

    fn settle(&mut self, done: usize, _: &RecordBatch) {
        let m = &self.mapping;
        let all = done >= self.indices.len();
        if !(all && m.chaos.roll("redeliver", m.chaos.rates().redeliver)) {
            self.next = self.indices.get(done).copied().unwrap_or(self.cursor);
        }
        self.cursor = self.next;
        self.indices.clear();
        lock(&self.taken).clear();
        let next = self.next;
        m.set(self.shard, self.slot, |p| {
            p.next = next;
            p.busy = false;
        });
    }
}

/// Lambda invoking a projector instance, with the run's faults; the rest of
/// [`BatchHandler`] is the real projector's.
struct Invoker<E, S, Q> {
    mapping: Arc<Mapping<E, S, Q>>,
    shard: usize,
    taken: Arc<Mutex<Vec<Record>>>,
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> BatchHandler for Invoker<E, S, Q> {
    async fn handle(&self, batch: &RecordBatch) -> Projection {
        let records = lock(&self.taken).clone();
        self.mapping.deliver(self.shard, batch, &records).await
    }

    fn gave_up(&self, batch: &RecordBatch, record: usize) {
        lock(&self.mapping.acks).given_up += 1;
        // Any instance's catch-up covers the whole store; the first one runs it when idle.
        BatchHandler::gave_up(&*self.mapping.instances[0], batch, record);
    }

    async fn idle(&self) {
        for p in &self.mapping.instances {
            BatchHandler::idle(&**p).await;
        }
    }
}
