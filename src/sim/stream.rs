//! A Kinesis stream in memory: shards owning ranges of the 128-bit MD5 hash-key space,
//! sequence numbers, splits and merges (parents closed, children open), and the
//! publisher's failure modes (nothing put, some put, a record put twice, poison records).
//! Records are kept, with a flag for the ones lost, so readers keep stable positions.
//!
//! The simulator's port layer. Must never: reorder the records of one shard (that is a
//! fault the mapping injects on delivery, where it is counted), or block.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::codec::bucket::hash_key;
use crate::ports::{EventPublisher, OutRecord, StoreError};
use crate::sim::config::Draw;
use crate::sim::faults::Chaos;

/// One record as put.
#[derive(Debug, Clone)]
pub struct Record {
    pub seq: u64,
    pub partition_key: String,
    pub data: Vec<u8>,
    /// Put by the simulator as undecodable garbage.
    pub poison: bool,
    /// Gone before anyone read it.
    pub lost: bool,
}

/// One shard: its hash-key range, its parents, and whether it still takes records.
#[derive(Debug, Clone)]
pub struct Shard {
    pub id: String,
    lo: u128,
    hi: u128,
    pub parents: Vec<usize>,
    pub open: bool,
    pub records: Vec<Record>,
}

#[derive(Default)]
struct State {
    shards: Vec<Shard>,
    next_seq: u64,
    /// Every decodable record ever put, for the checker (kept across resets).
    published: Vec<Vec<u8>>,
    /// Sequence numbers of the poison records put.
    poison: std::collections::BTreeSet<u64>,
}

/// The stream; shared by the publisher, the mapping and the checker.
pub struct SimStream {
    state: Mutex<State>,
    initial_shards: u32,
    chaos: Arc<Chaos>,
}

fn shard(i: usize, lo: u128, hi: u128, parents: Vec<usize>) -> Shard {
    Shard {
        id: format!("shardId-{i:012}"),
        lo,
        hi,
        parents,
        open: true,
        records: Vec::new(),
    }
}

fn even_shards(n: u32) -> Vec<Shard> {
    let n = u128::from(n.max(1));
    let width = u128::MAX / n;
    (0..n)
        .map(|i| {
            let hi = if i + 1 == n {
                u128::MAX
            } else {
                (i + 1) * width - 1
            };
            shard(i as usize, i * width, hi, Vec::new())
        })
        .collect()
}

impl SimStream {
    pub fn new(shards: u32, chaos: Arc<Chaos>) -> Arc<SimStream> {
        Arc::new(SimStream {
            state: Mutex::new(State {
                shards: even_shards(shards),
                ..State::default()
            }),
            initial_shards: shards,
            chaos,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The in-process stream died with the process: a fresh one, no records.
    pub fn reset(&self) {
        let mut s = self.lock();
        s.shards = even_shards(self.initial_shards);
    }

    fn put(&self, s: &mut State, partition_key: &str, data: Vec<u8>, poison: bool) {
        let key = hash_key(partition_key);
        s.next_seq += 1;
        let seq = s.next_seq;
        if poison {
            s.poison.insert(seq);
        } else {
            s.published.push(data.clone());
        }
        let shard = s
            .shards
            .iter_mut()
            .find(|sh| sh.open && sh.lo <= key && key <= sh.hi)
            .expect("the open shards cover the whole hash-key space");
        shard.records.push(Record {
            seq,
            partition_key: partition_key.to_owned(),
            data,
            poison,
            lost: false,
        });
    }

    /// Splits an open shard in two, or merges two adjacent open ones.
    pub fn reshard(&self) {
        let split = self.chaos.with_rng(|r| r.chance(0.6));
        let mut s = self.lock();
        let open: Vec<usize> = (0..s.shards.len()).filter(|&i| s.shards[i].open).collect();
        let adjacent = open.windows(2).find(|w| {
            let (a, b) = (&s.shards[w[0]], &s.shards[w[1]]);
            a.hi.checked_add(1) == Some(b.lo)
        });
        let n = s.shards.len();
        match (split, adjacent) {
            (false, Some(&[a, b])) => {
                let (lo, hi) = (s.shards[a].lo, s.shards[b].hi);
                s.shards[a].open = false;
                s.shards[b].open = false;
                s.shards.push(shard(n, lo, hi, vec![a, b]));
            }
            _ => {
                let Some(&p) = open.iter().find(|&&i| s.shards[i].lo < s.shards[i].hi) else {
                    return;
                };
                let (lo, hi) = (s.shards[p].lo, s.shards[p].hi);
                let mid = lo + (hi - lo) / 2;
                s.shards[p].open = false;
                s.shards.push(shard(n, lo, mid, vec![p]));
                s.shards.push(shard(n + 1, mid + 1, hi, vec![p]));
            }
        }
        self.chaos.note(s.shards.len() as u64);
    }

    /// A snapshot of every shard (the mapping reads positions into it).
    pub fn shards(&self) -> Vec<Shard> {
        self.lock().shards.clone()
    }

    pub fn shard_count(&self) -> usize {
        self.lock().shards.len()
    }

    /// The records of `shard` from `from` on (lost ones included, flagged).
    pub fn records_from(&self, shard: usize, from: usize) -> (Vec<Record>, bool) {
        let s = self.lock();
        match s.shards.get(shard) {
            Some(sh) => (sh.records.get(from..).unwrap_or_default().to_vec(), sh.open),
            None => (Vec::new(), false),
        }
    }

    /// Maybe loses one unread record of `shard` at or after `from`.
    pub fn maybe_lose(&self, shard: usize, from: usize) {
        if !self
            .chaos
            .roll("record_loss", self.chaos.rates().record_loss)
        {
            return;
        }
        let mut s = self.lock();
        let Some(sh) = s.shards.get_mut(shard) else {
            return;
        };
        let n = sh.records.len().saturating_sub(from);
        if n > 0 {
            let i = from + self.chaos.with_rng(|r| r.below(n as u64)) as usize;
            sh.records[i].lost = true;
        }
    }

    /// Every decodable record ever put.
    pub fn published(&self) -> Vec<Vec<u8>> {
        self.lock().published.clone()
    }

    /// The sequence numbers of every poison record put.
    pub fn poison(&self) -> std::collections::BTreeSet<u64> {
        self.lock().poison.clone()
    }
}

/// The command service's publisher onto the simulated stream.
#[derive(Clone)]
pub struct SimPublisher(pub Arc<SimStream>);

impl EventPublisher for SimPublisher {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), StoreError> {
        let stream = &self.0;
        let chaos = &stream.chaos;
        chaos.pause().await;
        let rates = chaos.rates();
        if chaos.roll("publish_fail", rates.publish_fail / 2.0) {
            return Err(StoreError::Throttled);
        }
        let cut = if chaos.roll("publish_partial", rates.publish_fail / 2.0) {
            Some(chaos.with_rng(|r| r.below(records.len() as u64 + 1)) as usize)
        } else {
            None
        };
        {
            let mut s = stream.lock();
            for (i, r) in records.iter().enumerate() {
                if cut == Some(i) {
                    break;
                }
                stream.put(&mut s, &r.partition_key, r.data.clone(), false);
                if chaos.roll("publish_duplicate", rates.publish_duplicate) {
                    stream.put(&mut s, &r.partition_key, r.data.clone(), false);
                }
                if chaos.roll("poison", rates.poison) {
                    let garbage = poison(&r.data, chaos);
                    stream.put(&mut s, &r.partition_key, garbage, true);
                }
            }
        }
        chaos.pause().await;
        match cut {
            Some(_) => Err(StoreError::Unavailable(
                "injected: some records were not put".into(),
            )),
            None => Ok(()),
        }
    }
}

/// An undecodable record: a real one with a flipped byte, cut short, or plain garbage.
fn poison(real: &[u8], chaos: &Chaos) -> Vec<u8> {
    chaos.with_rng(|r| match r.below(3) {
        0 if !real.is_empty() => {
            let mut v = real.to_vec();
            let i = r.below(v.len() as u64) as usize;
            v[i] ^= 1 << r.below(8);
            v
        }
        1 => real[..real.len() / 2].to_vec(),
        _ => (0..r.between(0, 64)).map(|_| r.next_u64() as u8).collect(),
    })
}
