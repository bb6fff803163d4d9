//! The projector's pure core (DESIGN.md step 3): decode a batch of stream records, group the
//! events by account in delivery order, fold each group onto the account's snapshot, and
//! plan one conditional snapshot write per touched account.
//!
//! Nothing here does I/O: gap fills, snapshot loads, writes, quarantine and failure
//! reporting are the async orchestrator's job, driven by the [`Plan`] this returns. The
//! cache is only read here; it changes after a write has succeeded ([`SnapshotCache::commit`]).

use foldhash::{HashMap, HashMapExt};

use crate::codec::kinesis::Arena;
use crate::codec::{CodecError, access_aggregate};
use crate::domain::{Effect, FoldError, Outcome, Snapshot, apply_effect};

/// A record that could not be decoded: quarantined whole, never blocking its shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Poison {
    pub record: usize,
    pub error: CodecError,
}

/// The events of one account in this batch, in delivery order.
#[derive(Debug, Clone)]
pub struct Group<'a> {
    pub account: &'a str,
    /// Index of the first record that carried an event of this account.
    pub first_record: usize,
    pub effects: Vec<Effect>,
}

/// The batch regrouped by account.
#[derive(Debug, Default)]
pub struct Grouped<'a> {
    pub groups: Vec<Group<'a>>,
    pub poison: Vec<Poison>,
    pub events: usize,
}

/// Decodes every record of `arena` and groups its events by account, keeping order. A
/// record with any invalid part contributes nothing and is reported as poison, so one bad
/// record never half-applies.
pub fn group(arena: &Arena) -> Grouped<'_> {
    let mut out = Grouped::default();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut touched: Vec<(usize, usize)> = Vec::new();
    for i in 0..arena.len() {
        touched.clear();
        let result = arena
            .record(i)
            .and_then(|bytes| add_record(i, bytes, &mut out, &mut index, &mut touched));
        if let Err(error) = result {
            for &(g, len) in &touched {
                out.events -= out.groups[g].effects.len() - len;
                out.groups[g].effects.truncate(len);
            }
            out.poison.push(Poison { record: i, error });
        }
    }
    out.groups.retain(|g| !g.effects.is_empty());
    out
}

fn add_record<'a>(
    i: usize,
    bytes: &'a [u8],
    out: &mut Grouped<'a>,
    index: &mut HashMap<&'a str, usize>,
    touched: &mut Vec<(usize, usize)>,
) -> Result<(), CodecError> {
    let aggregate = access_aggregate(bytes)?;
    for page in aggregate.pages.iter() {
        let account = page.account()?;
        let g = *index.entry(account).or_insert_with(|| {
            out.groups.push(Group {
                account,
                first_record: i,
                effects: Vec::new(),
            });
            out.groups.len() - 1
        });
        touched.push((g, out.groups[g].effects.len()));
        for effect in page.effects() {
            out.groups[g].effects.push(effect?);
            out.events += 1;
        }
    }
    Ok(())
}

/// Why folding a group stopped before its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Versions `expected..found` are missing: fill them from the event store, then resume
    /// at effect index `at`.
    Gap {
        expected: u64,
        found: u64,
        at: usize,
    },
    /// The event at `at` cannot be folded (corrupt or a bug); the account is reported failed.
    Fault { error: FoldError, at: usize },
}

/// The result of folding one group onto a starting snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupFold {
    pub snapshot: Snapshot,
    pub applied: u32,
    pub duplicates: u32,
    pub stop: Option<Stop>,
}

/// Folds `effects` in order onto `start`, stopping at the first gap or fault. Everything
/// applied before the stop is kept: snapshots only move forward, so partial progress is
/// safe to write.
pub fn fold_group(start: Snapshot, effects: &[Effect]) -> GroupFold {
    let mut out = GroupFold {
        snapshot: start,
        applied: 0,
        duplicates: 0,
        stop: None,
    };
    for (at, &effect) in effects.iter().enumerate() {
        match apply_effect(&mut out.snapshot, effect) {
            Ok(Outcome::Applied) => out.applied += 1,
            Ok(Outcome::Duplicate) => out.duplicates += 1,
            Ok(Outcome::Gap { expected }) => {
                out.stop = Some(Stop::Gap {
                    expected,
                    found: effect.version,
                    at,
                });
                break;
            }
            Err(error) => {
                out.stop = Some(Stop::Fault { error, at });
                break;
            }
        }
    }
    out
}

/// One conditional snapshot write: replace the item at `expected_version` with `snapshot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotWrite<'a> {
    pub account: &'a str,
    /// The version the fold started from; the write's condition (0: item must not exist).
    pub expected_version: u64,
    pub snapshot: Snapshot,
    pub first_record: usize,
}

/// A group whose fold stopped; the orchestrator resolves it (gap fill or failure report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending<'a> {
    pub account: &'a str,
    pub first_record: usize,
    pub stop: Stop,
    /// Progress reached before the stop (equal to the start if nothing applied).
    pub snapshot: Snapshot,
}

/// Everything the orchestrator must do for a batch.
#[derive(Debug, Default)]
pub struct Plan<'a> {
    /// One per account with at least one applied event.
    pub writes: Vec<SnapshotWrite<'a>>,
    pub pending: Vec<Pending<'a>>,
    /// Accounts not in the cache: load them, then plan again.
    pub missing: Vec<&'a str>,
    pub applied: u64,
    pub duplicates: u64,
}

/// Folds every group against the cached snapshots and plans the writes.
pub fn plan<'a>(grouped: &Grouped<'a>, cache: &SnapshotCache) -> Plan<'a> {
    let mut out = Plan {
        writes: Vec::with_capacity(grouped.groups.len()),
        ..Plan::default()
    };
    for group in &grouped.groups {
        let Some(start) = cache.get(group.account) else {
            out.missing.push(group.account);
            continue;
        };
        let fold = fold_group(start, &group.effects);
        out.applied += u64::from(fold.applied);
        out.duplicates += u64::from(fold.duplicates);
        if fold.applied > 0 {
            out.writes.push(SnapshotWrite {
                account: group.account,
                expected_version: start.version,
                snapshot: fold.snapshot,
                first_record: group.first_record,
            });
        }
        if let Some(stop) = fold.stop {
            out.pending.push(Pending {
                account: group.account,
                first_record: group.first_record,
                stop,
                snapshot: fold.snapshot,
            });
        }
    }
    out
}

/// Snapshots kept across batches (and across Lambda invocations), bounded in entries.
/// A new account is cached as `Snapshot::default()` once the store says it has none.
#[derive(Debug)]
pub struct SnapshotCache {
    map: HashMap<String, Snapshot>,
    entries_max: usize,
}

impl SnapshotCache {
    pub fn new(entries_max: usize) -> SnapshotCache {
        SnapshotCache {
            map: HashMap::with_capacity(entries_max.min(1 << 16)),
            entries_max: entries_max.max(1),
        }
    }

    pub fn get(&self, account: &str) -> Option<Snapshot> {
        self.map.get(account).copied()
    }

    /// Records a snapshot known to be stored (after a successful write or a load). Never
    /// moves an entry backward. At capacity an arbitrary entry is evicted: a miss costs one
    /// read, never correctness.
    pub fn commit(&mut self, account: &str, snapshot: Snapshot) {
        if let Some(current) = self.map.get_mut(account) {
            if snapshot.version >= current.version {
                *current = snapshot;
            }
            return;
        }
        if self.map.len() >= self.entries_max
            && let Some(victim) = self.map.keys().next().cloned()
        {
            self.map.remove(&victim);
        }
        self.map.insert(account.to_owned(), snapshot);
    }

    /// Drops an entry whose stored version is unknown (after a conflict).
    pub fn forget(&mut self, account: &str) {
        self.map.remove(account);
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}
