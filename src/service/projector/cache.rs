//! The projector's snapshot cache: the stored snapshot of recently projected accounts, kept
//! across batches (and across invocations of a warm Lambda) so a batch needs no reads.
//!
//! The cache is a hint, never a source of truth: a stale entry costs one conditional-write
//! conflict (resolved from the stored item the write returns), a missing one costs a read.
//! A batch consults it once, at its start ([`SnapshotCache::lookup`]), and hands back what it
//! learnt once, at its end ([`SnapshotCache::commit`]); in between the batch works on its own
//! copy. So eviction can never take an account away from the batch in flight, and the bound
//! (`entries_max`) holds for what survives between batches. Eviction is least recently used,
//! at the granularity of batches.
//!
//! Must never: move an entry backward (an older snapshot never replaces a newer one), or
//! hold more than `entries_max` entries once a batch has committed.

use std::borrow::Borrow;
use std::collections::VecDeque;
use std::hash::{Hash, Hasher};

use foldhash::{HashMap, HashMapExt};

use crate::domain::Snapshot;
use crate::domain::limits::ID_BYTES_MAX;

/// An account id stored inline (ids are at most `ID_BYTES_MAX` bytes): the key sits in the
/// map's bucket beside its snapshot, so a lookup touches no other memory, and queueing a
/// use copies it instead of sharing a heap string.
#[derive(Clone, Copy)]
struct Key {
    len: u8,
    bytes: [u8; ID_BYTES_MAX],
}

const _: () = assert!(ID_BYTES_MAX <= u8::MAX as usize);

impl Key {
    /// `None` for a string longer than an account id (never cached).
    fn new(account: &str) -> Option<Key> {
        let mut bytes = [0u8; ID_BYTES_MAX];
        bytes
            .get_mut(..account.len())?
            .copy_from_slice(account.as_bytes());
        Some(Key {
            len: account.len() as u8,
            bytes,
        })
    }

    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.len)]
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        String::from_utf8_lossy(self.as_bytes()).fmt(f)
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

/// Hashes as the bytes it holds, so the map can be searched with an account's bytes.
impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// An entry's place in the slab, as a lookup found it: the batch hands it back with its
/// commit so the commit needs no second hash lookup. Only a hint: a slot that no longer
/// holds the account (forgotten, evicted, reused) makes the commit look the account up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint(u32);

#[derive(Debug, Clone)]
struct Slot {
    /// The account the slot holds, so a hinted commit can check it and eviction can find
    /// the map's entry.
    key: Key,
    snapshot: Snapshot,
    /// The last batch (tick) that used this entry; `FREE` for a slot holding nothing.
    used: u64,
}

/// `Slot::used` of a free slot (ticks count up from 0 and never reach it).
const FREE: u64 = u64::MAX;

/// Bounded map from account to its stored snapshot.
///
/// Entries live in a slab (`slots`, reused through `free`); the map holds slot indices, and
/// the use-order queue holds (slot, tick) pairs of 16 bytes rather than account ids.
#[derive(Debug)]
pub struct SnapshotCache {
    map: HashMap<Key, u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    /// Use order: (slot, tick of that use), oldest first. A slot may appear several times;
    /// only the entry matching its slot's `used` counts, the others are stale.
    order: VecDeque<(u32, u64)>,
    tick: u64,
    entries_max: usize,
}

impl SnapshotCache {
    /// A cache of at most `entries_max` entries (at least 1).
    pub fn new(entries_max: usize) -> SnapshotCache {
        let capacity = entries_max.min(1 << 16);
        SnapshotCache {
            map: HashMap::with_capacity(capacity),
            slots: Vec::with_capacity(capacity),
            free: Vec::new(),
            order: VecDeque::new(),
            tick: 0,
            entries_max: entries_max.max(1),
        }
    }

    /// Starts a batch: the entries it uses from now on count as used by this batch.
    pub fn begin(&mut self) {
        self.tick += 1;
    }

    /// Marks slot `at` used by the current batch, queueing the first use per batch.
    fn touch(&mut self, at: u32) {
        let slot = &mut self.slots[at as usize];
        if slot.used != self.tick {
            slot.used = self.tick;
            self.order.push_back((at, self.tick));
        }
    }

    /// The cached snapshot of `account`, if any, and where it sits; marks it used by the
    /// current batch.
    pub fn lookup(&mut self, account: &str) -> Option<(Snapshot, Hint)> {
        let at = *self.map.get(account.as_bytes())?;
        self.touch(at);
        Some((self.slots[at as usize].snapshot, Hint(at)))
    }

    /// Records a snapshot known to be stored (loaded, written, or returned by a conflict).
    /// Never moves an entry backward. Does not evict: call [`SnapshotCache::trim`] once the
    /// batch is done.
    pub fn commit(&mut self, account: &str, snapshot: Snapshot) {
        self.commit_hinted(None, account, snapshot);
    }

    /// [`SnapshotCache::commit`], trying first the slot `hint` names (from this batch's
    /// [`SnapshotCache::lookup`] of `account`).
    pub fn commit_hinted(&mut self, hint: Option<Hint>, account: &str, snapshot: Snapshot) {
        let hinted = hint.map(|Hint(at)| at).filter(|&at| {
            self.slots
                .get(at as usize)
                .is_some_and(|s| s.used != FREE && s.key.as_bytes() == account.as_bytes())
        });
        if let Some(at) = hinted.or_else(|| self.map.get(account.as_bytes()).copied()) {
            let slot = &mut self.slots[at as usize];
            if snapshot.version >= slot.snapshot.version {
                slot.snapshot = snapshot;
            }
            self.touch(at);
            return;
        }
        let Some(key) = Key::new(account) else {
            return; // not an account id: nothing to remember it by
        };
        let slot = Slot {
            key,
            snapshot,
            used: self.tick,
        };
        let at = match self.free.pop() {
            Some(at) => {
                self.slots[at as usize] = slot;
                at
            }
            None => {
                let at = u32::try_from(self.slots.len())
                    .expect("fewer than 2^32 accounts in the cache: a batch is far smaller");
                self.slots.push(slot);
                at
            }
        };
        self.order.push_back((at, self.tick));
        self.map.insert(key, at);
    }

    /// Frees slot `at` (its map entry already removed).
    fn release(&mut self, at: u32) {
        self.slots[at as usize].used = FREE;
        self.free.push(at);
    }

    /// Drops `account`'s entry, whatever its version: the next batch loads what the store
    /// holds (after the account was parked, or seen unparked, the entry may be the very
    /// snapshot that did not fold, or ahead of a redrive's rebuild).
    pub fn forget(&mut self, account: &str) {
        if let Some(at) = self.map.remove(account.as_bytes()) {
            self.release(at);
        }
    }

    /// Evicts least recently used entries down to the bound. Called between batches.
    pub fn trim(&mut self) {
        while self.map.len() > self.entries_max {
            let Some((at, used)) = self.order.pop_front() else {
                break;
            };
            let slot = &self.slots[at as usize];
            if slot.used == used {
                self.map.remove(slot.key.as_bytes());
                self.release(at);
            }
        }
        // Stale order entries pile up for accounts used in many batches: compact now and
        // then, so the queue stays within a small multiple of the map.
        if self.order.len() > 2 * self.map.len() + 1024 {
            let slots = &self.slots;
            self.order
                .retain(|&(at, used)| slots[at as usize].used == used);
        }
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.map.clear();
        self.slots.clear();
        self.free.clear();
        self.order.clear();
    }

    /// The cached version of `account`, without marking it used (tests' view).
    #[cfg(test)]
    fn lookup_quietly(&self, account: &str) -> Option<u64> {
        let at = *self.map.get(account.as_bytes())?;
        Some(self.slots[at as usize].snapshot.version)
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bound on entries between batches.
    pub fn entries_max(&self) -> usize {
        self.entries_max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version: u64) -> Snapshot {
        Snapshot {
            version,
            ..Snapshot::default()
        }
    }

    #[test]
    fn entries_never_move_backward() {
        let mut c = SnapshotCache::new(4);
        c.begin();
        c.commit("x", at(5));
        c.commit("x", at(3));
        assert_eq!(c.lookup("x").map(|(s, _)| s.version), Some(5));
    }

    #[test]
    fn a_batch_larger_than_the_cache_keeps_all_its_entries_until_trimmed() {
        let mut c = SnapshotCache::new(2);
        c.begin();
        for a in ["a", "b", "c", "d"] {
            c.commit(a, at(1));
        }
        for a in ["a", "b", "c", "d"] {
            assert!(c.lookup(a).is_some(), "{a} evicted during its batch");
        }
        c.trim();
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn the_least_recently_used_batch_is_evicted_first() {
        let mut c = SnapshotCache::new(3);
        c.begin();
        for a in ["a", "b", "c"] {
            c.commit(a, at(1));
        }
        c.trim();
        c.begin();
        assert!(c.lookup("a").is_some()); // a is used again
        c.commit("d", at(1));
        c.trim();
        assert_eq!(c.len(), 3);
        assert!(c.lookup("a").is_some() && c.lookup("d").is_some());
        assert_eq!(
            ["b", "c"].iter().filter(|x| c.lookup(x).is_some()).count(),
            1
        );
    }

    #[test]
    fn a_key_longer_than_an_account_id_is_not_cached() {
        let mut c = SnapshotCache::new(4);
        c.begin();
        let long = "x".repeat(ID_BYTES_MAX + 1);
        c.commit(&long, at(1));
        assert_eq!(c.lookup(&long), None);
        let longest = "y".repeat(ID_BYTES_MAX);
        c.commit(&longest, at(2));
        assert_eq!(c.lookup(&longest).map(|(s, _)| s.version), Some(2));
    }

    #[test]
    fn the_use_queue_stays_bounded_when_the_same_accounts_come_back() {
        let mut c = SnapshotCache::new(8);
        for _ in 0..10_000 {
            c.begin();
            for a in ["a", "b"] {
                c.lookup(a);
                c.commit(a, at(1));
            }
            c.trim();
        }
        assert!(c.order.len() <= 2 * c.len() + 1024);
    }
    #[test]
    fn a_stale_hint_never_writes_another_accounts_entry() {
        let mut c = SnapshotCache::new(4);
        c.begin();
        c.commit("a", at(1));
        let (_, hint) = c.lookup("a").expect("a was committed");
        c.forget("a");
        c.commit("b", at(7)); // takes the slot "a" left
        c.commit_hinted(Some(hint), "a", at(3));
        assert_eq!(c.lookup("b").map(|(s, _)| s.version), Some(7));
        assert_eq!(c.lookup("a").map(|(s, _)| s.version), Some(3));
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Ends the batch (trim) and starts the next.
        Batch,
        /// Looks the account up, keeping the hint for later commits (which may find it
        /// stale: forgotten, evicted, or its slot taken by another account).
        Lookup(u8),
        /// Commits `version`, with the account's last hint if `true`.
        Commit(u8, u64, bool),
        Forget(u8),
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        prop_oneof![
            1 => Just(Op::Batch),
            3 => (0u8..12).prop_map(Op::Lookup),
            4 => (0u8..12, 1u64..50, any::<bool>()).prop_map(|(a, v, h)| Op::Commit(a, v, h)),
            1 => (0u8..12).prop_map(Op::Forget),
        ]
    }

    proptest::proptest! {
        /// Against a model (the newest version committed per account since it was last
        /// forgotten or evicted): an entry present holds exactly that version, every account the
        /// current batch used stays until the batch is trimmed, and a trimmed cache holds
        /// at most its bound.
        #[test]
        fn slots_agree_with_a_model(
            bound in 1usize..6,
            ops in proptest::collection::vec(op(), 1..300),
        ) {
            let mut c = SnapshotCache::new(bound);
            let mut model: std::collections::HashMap<u8, u64> = Default::default();
            let mut this_batch = std::collections::HashSet::new();
            let mut hints = std::collections::HashMap::new();
            c.begin();
            for op in ops {
                match op {
                    Op::Batch => {
                        c.trim();
                        proptest::prop_assert!(c.len() <= bound);
                        // Evicted: the model forgets it too.
                        model.retain(|a, _| c.lookup_quietly(&a.to_string()).is_some());
                        c.begin();
                        this_batch.clear();
                    }
                    Op::Lookup(a) => {
                        if let Some((_, hint)) = c.lookup(&a.to_string()) {
                            hints.insert(a, hint);
                            this_batch.insert(a);
                        }
                    }
                    Op::Commit(a, v, with_hint) => {
                        let hint = hints.get(&a).copied().filter(|_| with_hint);
                        c.commit_hinted(hint, &a.to_string(), at(v));
                        let newest = model.entry(a).or_insert(v);
                        *newest = (*newest).max(v);
                        this_batch.insert(a);
                    }
                    Op::Forget(a) => {
                        c.forget(&a.to_string());
                        model.remove(&a);
                        this_batch.remove(&a);
                    }
                }
                for a in 0u8..12 {
                    let cached = c.lookup_quietly(&a.to_string());
                    if let Some(version) = cached {
                        proptest::prop_assert_eq!(Some(&version), model.get(&a), "account {}", a);
                    }
                    if this_batch.contains(&a) {
                        proptest::prop_assert!(cached.is_some(), "account {} evicted mid-batch", a);
                    }
                }
            }
        }
    }
}
