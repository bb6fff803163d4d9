//! Everything a simulation run varies, expanded from its one seed before the run starts and
//! printed with any failure (TigerBeetle's VOPR does the same): the workload's shape, the
//! pipeline's settings, and which faults are on at which rate. Swarm testing: each fault
//! class is on in about half the runs, so some runs are calm and some are a storm, and
//! rare combinations are not drowned by the common ones.
//!
//! Must never: read anything but the seed (no clock, no environment).

use crate::domain::Policy;
use crate::domain::limits::{AMOUNT_HARD_MAX, AMOUNT_MAX_DEFAULT};
use crate::workload::Rng;

/// Random helpers over the workload generator's splitmix64.
pub trait Draw {
    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool;
    /// Uniform in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64;
    /// One of `items` (not empty).
    fn pick<T: Copy>(&mut self, items: &[T]) -> T;
}

impl Draw for Rng {
    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo).saturating_add(1))
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len() as u64) as usize]
    }
}

/// What happens to the stream when the process dies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// The embedded backend: the in-process stream dies with the process; catch-up at
    /// start projects what it held.
    Embedded,
    /// Kinesis: records survive; the mapping's positions do not (the poller restarts at
    /// the trim horizon, redelivering everything).
    Kinesis,
}

/// Fault rates at the port layer (0: off). Probabilities are per call (or per item of a
/// batch call).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// A call yields to the other tasks before it runs (not a fault: the scheduler's way
    /// of exploring interleavings; stays on after the heal).
    pub interleave: f64,
    /// A call waits (simulated time) before it runs.
    pub delay: f64,
    pub throttle: f64,
    pub unavailable: f64,
    /// The write commits, but the caller sees a timeout.
    pub commit_timeout: f64,
    /// `load` reads the tip and the markers in two reads, as the DynamoDB adapter does.
    pub torn_load: bool,
    /// A publish fails after putting some (or none) of its records.
    pub publish_fail: f64,
    /// A put record lands twice (a PutRecords retry whose first answer was lost).
    pub publish_duplicate: f64,
    /// A record disappears from the stream before it is read (expiry, a lost shard).
    pub record_loss: f64,
    /// A handled batch is delivered again (at-least-once delivery).
    pub redeliver: f64,
    /// A batch arrives in a shuffled order (beyond Kinesis's promise: versions decide).
    pub reorder: f64,
    /// An undecodable record is put on the stream.
    pub poison: f64,
    /// An invocation times out: the mapping retries it on another instance while the
    /// first still runs (two projectors racing on the same accounts).
    pub invocation_timeout: f64,
    /// Children of a resharded shard are read before their parents are finished.
    pub children_first: bool,
    /// Shard splits and merges during the run.
    pub reshards: u32,
    /// Process crashes (all in-memory state lost) followed by a restart.
    pub crashes: u32,
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub accounts: usize,
    /// Zipf exponent of the account mix; uniform if `None`.
    pub zipf: Option<f64>,
    pub clients: usize,
    pub ops_per_client: usize,
    /// Share of a client's operations that are bulk calls (many accounts at once).
    pub bulk_share: f64,
    /// Most commands in one account's chunk of a bulk call (crosses the 32-event page).
    pub chunk_max: usize,
    /// Share of commands that use a transaction id other clients use too.
    pub shared_ids: f64,
    /// Share of shared-id commands that change the content (same id, other amount).
    pub reused_ids: f64,
    /// Share of operations that resend an earlier one exactly (a retried file).
    pub resend: f64,
    /// Share of bulk calls that go through CSV ingestion rather than `submit_chunks`.
    pub via_ingest: f64,
    /// Share of bulk chunks that are runs of 32, 33, 64 or 65 fresh deposits: page-aligned
    /// appends racing on one account (the shape of issue 8's defect 1).
    pub page_races: f64,
    pub policy: Policy,
    /// Business times span this many months and arrive out of order.
    pub months: u32,
    pub buckets: u32,
    pub shards: u32,
    /// Concurrent batches per shard (Lambda's ParallelizationFactor).
    pub parallelization: u32,
    /// Projector instances (separate caches) the mapping spreads batches over.
    pub instances: u32,
    pub cache_entries: usize,
    pub batch_size: usize,
    /// The mapping's batching window (Lambda: `MaximumBatchingWindowInSeconds`), in ms.
    pub window_ms: u64,
    pub retries_max: u32,
    pub topology: Topology,
    pub faults: Faults,
}

impl Config {
    /// Expands a seed into a run's settings.
    pub fn from_seed(seed: u64) -> Config {
        let mut r = Rng::new(seed ^ 0x5EED_C0F1_6000_0001);
        let accounts = r.pick(&[1usize, 2, 3, 8, 24, 120]);
        let cache_entries = r.pick(&[1usize, 2, 4, 64, 100_000]);
        let policy = match r.below(4) {
            0 => Policy::new(AMOUNT_HARD_MAX, AMOUNT_HARD_MAX),
            1 => Policy::new(1_000, 250),
            _ => Policy::new(AMOUNT_MAX_DEFAULT, 0),
        }
        .expect("the simulator's policies are valid");
        let on = |r: &mut Rng, rates: &[f64]| if r.chance(0.5) { r.pick(rates) } else { 0.0 };
        let faults = Faults {
            interleave: r.pick(&[0.1, 0.3, 0.6, 0.9]),
            delay: on(&mut r, &[0.1, 0.5, 0.9]),
            throttle: on(&mut r, &[0.02, 0.1, 0.3]),
            unavailable: on(&mut r, &[0.01, 0.05]),
            commit_timeout: on(&mut r, &[0.02, 0.1]),
            torn_load: r.chance(0.5),
            publish_fail: on(&mut r, &[0.05, 0.2]),
            publish_duplicate: on(&mut r, &[0.05, 0.2]),
            record_loss: on(&mut r, &[0.02, 0.1]),
            redeliver: on(&mut r, &[0.05, 0.3]),
            reorder: on(&mut r, &[0.05, 0.3]),
            poison: on(&mut r, &[0.02, 0.1]),
            invocation_timeout: on(&mut r, &[0.05, 0.2]),
            children_first: r.chance(0.25),
            reshards: if r.chance(0.4) {
                r.between(1, 3) as u32
            } else {
                0
            },
            crashes: if r.chance(0.4) {
                r.between(1, 3) as u32
            } else {
                0
            },
        };
        Config {
            seed,
            accounts,
            zipf: r.chance(0.5).then(|| r.pick(&[0.8, 1.2])),
            clients: r.between(1, 8) as usize,
            ops_per_client: r.between(2, 14) as usize,
            bulk_share: r.pick(&[0.0, 0.3, 0.7]),
            chunk_max: r.pick(&[3usize, 33, 70]),
            shared_ids: r.pick(&[0.0, 0.1, 0.4]),
            reused_ids: r.pick(&[0.0, 0.3]),
            resend: r.pick(&[0.0, 0.15]),
            via_ingest: r.pick(&[0.0, 0.3]),
            page_races: r.pick(&[0.0, 0.0, 0.3, 0.7]),
            policy,
            months: r.between(1, 4) as u32,
            buckets: r.pick(&[1u32, 8, 1024]),
            shards: r.between(1, 4) as u32,
            parallelization: r.pick(&[1u32, 1, 2, 4]),
            instances: r.between(1, 3) as u32,
            cache_entries,
            batch_size: r.pick(&[1usize, 3, 10, 100]),
            retries_max: r.pick(&[0u32, 2, 8]),
            topology: if r.chance(0.5) {
                Topology::Embedded
            } else {
                Topology::Kinesis
            },
            window_ms: r.pick(&[0u64, 0, 1, 5]),
            faults,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_expands_to_the_same_settings_every_time() {
        let (a, b) = (Config::from_seed(42), Config::from_seed(42));
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        let many: std::collections::BTreeSet<String> = (0..50)
            .map(|s| format!("{:?}", Config::from_seed(s)))
            .collect();
        assert_eq!(many.len(), 50, "different seeds give different runs");
    }
}
