//! Lambda's Kinesis event source mapping, played over the simulated stream: per shard (and
//! per ParallelizationFactor slot, by partition key) batches of up to `batch_size`
//! records, children only after their parents are read to the end, a failure report
//! retried from the lowest failed record with backoff, and after `retries_max` the record
//! dropped (the backstop, a catch-up, then owns its events). On top of Lambda's own
//! behaviour it injects the faults of the run: lost records, redelivered and reordered
//! batches, invocations that time out while they keep running (so two projector instances
//! race on the same accounts), children read before their parents.
//!
//! It records what it acknowledged: every event in an acknowledged record must be in its
//! account's snapshot once the run drains (the check that finds a silently dropped group).
//!
//! To be re-fitted onto the shared event-source-mapping module once that exists (the
//! mapping logic then comes from the real code; the faults stay here). Must never: read
//! the stores, or acknowledge a record the projector reported failed.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use aws_lambda_events::event::kinesis::KinesisEvent;
use tokio::task::JoinHandle;

use crate::codec::decode_record_pages;
use crate::codec::kinesis::lambda_record;
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::projector::Projector;
use crate::sim::config::Draw;
use crate::sim::faults::Chaos;
use crate::sim::stream::{Record, SimStream};

/// What the mapping acknowledged, over the whole run (all incarnations).
#[derive(Debug, Default)]
pub struct Acks {
    /// Newest version per account carried by an acknowledged record.
    pub versions: HashMap<String, u64>,
    /// Accounts acknowledged by a projector instance that had been handed more accounts
    /// than its cache holds (so its eviction could have touched them).
    pub pressured: HashSet<String>,
    pub poison: BTreeSet<u64>,
    pub given_up: u64,
    pub batches: u64,
}

/// The mapping's settings for a run.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub batch_size: usize,
    pub retries_max: u32,
    pub parallelization: u32,
    pub cache_entries: usize,
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
    /// Accounts handed to each projector instance (timed-out invocations included).
    handed: Mutex<Vec<HashSet<String>>>,
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
            handed: Mutex::default(),
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

    /// True once every record on the stream has been handled and nothing is in flight.
    pub fn drained(&self) -> bool {
        if self.background.load(Ordering::SeqCst) > 0 {
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

    async fn consume(self: Arc<Self>, shard: usize, slot: u32) {
        let mut next = 0;
        let mut retries = 0u32;
        loop {
            if !self.parents_finished(shard) {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
            self.stream.maybe_lose(shard, next);
            let (records, open) = self.stream.records_from(shard, next);
            let mut batch: Vec<(usize, Record)> = Vec::new();
            let mut scanned = next;
            for (k, r) in records.into_iter().enumerate() {
                if batch.len() >= self.settings.batch_size.max(1) {
                    break;
                }
                scanned = next + k + 1;
                if !r.lost && slot_of(&r.partition_key, self.settings.parallelization) == slot {
                    batch.push((next + k, r));
                }
            }
            if batch.is_empty() {
                next = scanned;
                let finished = !open;
                self.set(shard, slot, |p| {
                    p.next = scanned;
                    p.finished = finished;
                });
                if finished {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
            self.set(shard, slot, |p| p.busy = true);
            let lowest = self.deliver(shard, &batch).await;
            next = match lowest {
                None => {
                    retries = 0;
                    if self.chaos.roll("redeliver", self.chaos.rates().redeliver) {
                        next
                    } else {
                        batch[batch.len() - 1].0 + 1
                    }
                }
                Some(i) if retries >= self.settings.retries_max => {
                    retries = 0;
                    lock(&self.acks).given_up += 1;
                    self.backstop().await;
                    batch[i].0 + 1
                }
                Some(i) => {
                    retries += 1;
                    tokio::time::sleep(Duration::from_millis(10 << retries.min(6))).await;
                    batch[i].0
                }
            };
            self.set(shard, slot, |p| {
                p.next = next;
                p.busy = false;
            });
        }
    }

    /// Hands one batch to a projector instance; acknowledges what it did not report
    /// failed; returns the batch index of the lowest failed record.
    async fn deliver(&self, shard: usize, batch: &[(usize, Record)]) -> Option<usize> {
        let instance = self
            .chaos
            .with_rng(|r| r.below(self.instances.len() as u64) as usize);
        let shard_id = format!("shardId-{shard:012}");
        let mut event = KinesisEvent::default();
        event.records = batch
            .iter()
            .map(|(_, r)| {
                let seq = format!("{:020}", r.seq);
                lambda_record("sim", &shard_id, &seq, &r.partition_key, &r.data)
            })
            .collect();
        if self.chaos.roll("reorder", self.chaos.rates().reorder) {
            self.chaos.with_rng(|r| {
                for i in (1..event.records.len()).rev() {
                    event.records.swap(i, r.below(i as u64 + 1) as usize);
                }
            });
        }
        let pressured = self.hand(instance, batch);
        self.chaos.log(|| {
            let seqs: Vec<u64> = batch.iter().map(|(_, r)| r.seq).collect();
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
                projector.handle(event).await;
                background.fetch_sub(1, Ordering::SeqCst);
            });
            lock(&self.tasks).push(task);
            let wait = self.chaos.with_rng(|r| r.between(1, 20));
            tokio::time::sleep(Duration::from_millis(wait)).await;
            return Some(0);
        }
        let response = projector.handle(event).await;
        let failed: BTreeSet<u64> = response
            .batch_item_failures
            .iter()
            .filter_map(|f| f.item_identifier.as_deref()?.parse().ok())
            .collect();
        let lowest = failed
            .first()
            .and_then(|seq| batch.iter().position(|(_, r)| r.seq == *seq));
        if !failed.is_empty() && lowest.is_none() {
            self.chaos.breach(
                "*",
                "the projector reported a record it was not given".into(),
            );
        }
        // An account is reported at its first record as delivered; in a shuffled batch
        // that may not be its lowest, so no record of a reported account counts as done.
        let reported: HashSet<String> = batch
            .iter()
            .filter(|(_, r)| failed.contains(&r.seq))
            .flat_map(|(_, r)| decode_record_pages(&r.data).unwrap_or_default())
            .map(|p| p.account.to_string())
            .collect();
        self.acknowledge(
            &batch[..lowest.unwrap_or(batch.len())],
            &reported,
            pressured,
        );
        lowest
    }

    /// Notes the accounts handed to `instance`; true once they outnumber its cache.
    fn hand(&self, instance: usize, batch: &[(usize, Record)]) -> bool {
        let mut handed = lock(&self.handed);
        if handed.len() <= instance {
            handed.resize_with(instance + 1, HashSet::new);
        }
        for (_, r) in batch {
            for page in decode_record_pages(&r.data).unwrap_or_default() {
                handed[instance].insert(page.account.to_string());
            }
        }
        handed[instance].len() > self.settings.cache_entries
    }

    fn acknowledge(&self, acked: &[(usize, Record)], reported: &HashSet<String>, pressured: bool) {
        let mut acks = lock(&self.acks);
        acks.batches += 1;
        for (_, r) in acked {
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
                if pressured {
                    acks.pressured.insert(page.account.to_string());
                }
            }
        }
    }

    /// The backstop after a dropped record: a catch-up (embedded: DESIGN.md step 4).
    async fn backstop(&self) {
        if let Err(e) = self.instances[0].catch_up().await {
            tracing::debug!(error = %e, "sim backstop catch-up failed; the end of the run repeats it");
        }
    }
}
