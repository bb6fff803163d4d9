//! The projector's pure core (DESIGN.md step 3): decode a batch of stream records, group the
//! events by account in delivery order, fold each group onto the account's snapshot, and
//! plan one conditional snapshot write per touched account.
//!
//! Nothing here does I/O: gap fills, snapshot loads, writes, quarantine and failure
//! reporting are the async orchestrator's job. Every group gets exactly one [`GroupFold`]
//! from [`fold_group`]; nothing here can leave a group out.

use foldhash::{HashMap, HashMapExt};

use crate::codec::batch::RecordBatch;
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

/// Decodes every record of `batch` and groups its events by account, keeping order. A
/// record with any invalid part contributes nothing and is reported as poison, so one bad
/// record never half-applies.
///
/// Events are first appended in delivery order tagged with their group, then placed by a
/// stable counting sort: no per-account allocation.
pub fn group(batch: &RecordBatch) -> Grouped<'_> {
    // Sized from the bytes: an archived event takes at least 48 of them, a page with its
    // account at least 64. Growing these while grouping cost a fifth of an aggregated batch.
    let events_max = batch.data_bytes() / 48 + batch.len();
    let accounts_max = (batch.data_bytes() / 64 + batch.len()).min(events_max);
    let mut index: HashMap<&str, u32> = HashMap::with_capacity(accounts_max);
    let mut heads: Vec<(&str, usize, usize)> = Vec::with_capacity(accounts_max); // account, first record, count
    let mut tagged: Vec<(u32, Effect)> = Vec::with_capacity(events_max);
    let mut poison = Vec::new();
    for i in 0..batch.len() {
        let (mark, heads_mark) = (tagged.len(), heads.len());
        let result = batch
            .data(i)
            .and_then(|bytes| add_record(i, bytes, &mut index, &mut heads, &mut tagged));
        if let Err(error) = result {
            // Undo the record whole: its effects, and the accounts it was first to name (a
            // later record of such an account starts that account's group).
            for &(g, _) in &tagged[mark..] {
                heads[g as usize].2 -= 1;
            }
            tagged.truncate(mark);
            for &(account, ..) in &heads[heads_mark..] {
                index.remove(account);
            }
            heads.truncate(heads_mark);
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
    // Locals, not fields of the returned value: the compiler keeps them in registers
    // across the loop (the result is written once, at the end).
    let mut snapshot = start;
    let (mut applied, mut duplicates) = (0u32, 0u32);
    let mut stop = None;
    if !effects.is_empty() && !start.adds_up() {
        // A stored item is input: one check per group, not per event.
        let error = FoldError::Inconsistent {
            version: start.version,
        };
        return GroupFold {
            snapshot,
            applied,
            duplicates,
            stop: Some(Stop::Fault { error, at: 0 }),
        };
    }
    for (at, &effect) in effects.iter().enumerate() {
        match apply_effect(&mut snapshot, effect) {
            Ok(Outcome::Applied) => applied += 1,
            Ok(Outcome::Duplicate) => duplicates += 1,
            Ok(Outcome::Gap { expected }) => {
                stop = Some(Stop::Gap {
                    expected,
                    found: effect.version,
                    at,
                });
                break;
            }
            Err(error) => {
                stop = Some(Stop::Fault { error, at });
                break;
            }
        }
    }
    GroupFold {
        snapshot,
        applied,
        duplicates,
        stop,
    }
}
