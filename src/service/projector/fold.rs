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
    /// This group's slice of [`Grouped::effects`].
    pub range: std::ops::Range<usize>,
}

/// The batch regrouped by account: every group's effects are contiguous in `effects`.
#[derive(Debug, Default)]
pub struct Grouped<'a> {
    pub groups: Vec<Group<'a>>,
    pub effects: Vec<Effect>,
    pub poison: Vec<Poison>,
}

impl Grouped<'_> {
    pub fn effects_of(&self, group: &Group<'_>) -> &[Effect] {
        &self.effects[group.range.clone()]
    }
}

/// Decodes every record of `arena` and groups its events by account, keeping order. A
/// record with any invalid part contributes nothing and is reported as poison, so one bad
/// record never half-applies.
///
/// Events are first appended in delivery order tagged with their group, then placed by a
/// stable counting sort: no per-account allocation.
pub fn group(arena: &Arena) -> Grouped<'_> {
    let mut index: HashMap<&str, u32> = HashMap::new();
    let mut heads: Vec<(&str, usize, usize)> = Vec::new(); // account, first record, count
    let mut tagged: Vec<(u32, Effect)> = Vec::new();
    let mut poison = Vec::new();
    for i in 0..arena.len() {
        let mark = tagged.len();
        let result = arena
            .record(i)
            .and_then(|bytes| add_record(i, bytes, &mut index, &mut heads, &mut tagged));
        if let Err(error) = result {
            for &(g, _) in &tagged[mark..] {
                heads[g as usize].2 -= 1;
            }
            tagged.truncate(mark);
            poison.push(Poison { record: i, error });
        }
    }
    let mut next = Vec::with_capacity(heads.len());
    let mut groups = Vec::with_capacity(heads.len());
    let mut offset = 0;
    for &(account, first_record, count) in &heads {
        next.push(offset);
        groups.push(Group {
            account,
            first_record,
            range: offset..offset + count,
        });
        offset += count;
    }
    let mut effects = vec![Effect::PLACEHOLDER; tagged.len()];
    for (g, effect) in tagged {
        effects[next[g as usize]] = effect;
        next[g as usize] += 1;
    }
    groups.retain(|g| !g.range.is_empty());
    Grouped {
        groups,
        effects,
        poison,
    }
}

fn add_record<'a>(
    i: usize,
    bytes: &'a [u8],
    index: &mut HashMap<&'a str, u32>,
    heads: &mut Vec<(&'a str, usize, usize)>,
    tagged: &mut Vec<(u32, Effect)>,
) -> Result<(), CodecError> {
    let aggregate = access_aggregate(bytes)?;
    for page in aggregate.pages.iter() {
        let g = match index.get(page.account.as_str()) {
            Some(&g) => g,
            None => {
                // Validated once, when first seen in the batch.
                let account = page.account()?;
                let g = u32::try_from(heads.len())
                    .map_err(|_| CodecError::TooLarge { bytes: bytes.len() })?;
                heads.push((account, i, 0));
                index.insert(account, g);
                g
            }
        };
        for effect in page.effects() {
            tagged.push((g, effect?));
            heads[g as usize].2 += 1;
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
        let fold = fold_group(start, grouped.effects_of(group));
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
    /// Seeded through [`crate::entropy`]: eviction follows iteration order, which a
    /// simulation must replay.
    map: std::collections::HashMap<String, Snapshot, foldhash::fast::SeedableRandomState>,
    entries_max: usize,
}

impl SnapshotCache {
    pub fn new(entries_max: usize) -> SnapshotCache {
        SnapshotCache {
            map: std::collections::HashMap::with_capacity_and_hasher(
                entries_max.min(1 << 16),
                crate::entropy::hash_state(),
            ),
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

    /// Empties the cache (after a catch-up rewrote snapshots behind its back).
    pub fn clear(&mut self) {
        self.map.clear();
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
