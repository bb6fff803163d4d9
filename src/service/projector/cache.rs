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

#[derive(Debug, Clone)]
struct Slot {
    /// The map's own key, so a use can be queued without a second lookup.
    key: Key,
    snapshot: Snapshot,
    /// The last batch (tick) that used this entry.
    used: u64,
}

/// Bounded map from account to its stored snapshot.
#[derive(Debug)]
pub struct SnapshotCache {
    map: HashMap<Key, Slot>,
    /// Use order: (account, tick of that use), oldest first. An account may appear several
    /// times; only the entry matching its slot's `used` counts, the others are stale.
    order: VecDeque<(Key, u64)>,
    tick: u64,
    entries_max: usize,
}

impl SnapshotCache {
    /// A cache of at most `entries_max` entries (at least 1).
    pub fn new(entries_max: usize) -> SnapshotCache {
        SnapshotCache {
            map: HashMap::with_capacity(entries_max.min(1 << 16)),
            order: VecDeque::new(),
            tick: 0,
            entries_max: entries_max.max(1),
        }
    }

    /// Starts a batch: the entries it uses from now on count as used by this batch.
    pub fn begin(&mut self) {
        self.tick += 1;
    }

    /// Marks `slot` used by the current batch, queueing the first use per batch.
    fn touch(order: &mut VecDeque<(Key, u64)>, tick: u64, slot: &mut Slot) {
        if slot.used != tick {
            slot.used = tick;
            order.push_back((slot.key, tick));
        }
    }

    /// The cached snapshot of `account`, if any; marks it used by the current batch.
    pub fn lookup(&mut self, account: &str) -> Option<Snapshot> {
        let slot = self.map.get_mut(account.as_bytes())?;
        Self::touch(&mut self.order, self.tick, slot);
        Some(slot.snapshot)
    }

    /// Records a snapshot known to be stored (loaded, written, or returned by a conflict).
    /// Never moves an entry backward. Does not evict: call [`SnapshotCache::trim`] once the
    /// batch is done.
    pub fn commit(&mut self, account: &str, snapshot: Snapshot) {
        if let Some(slot) = self.map.get_mut(account.as_bytes()) {
            if snapshot.version >= slot.snapshot.version {
                slot.snapshot = snapshot;
            }
            Self::touch(&mut self.order, self.tick, slot);
            return;
        }
        let Some(key) = Key::new(account) else {
            return; // not an account id: nothing to remember it by
        };
        self.order.push_back((key, self.tick));
        let slot = Slot {
            key,
            snapshot,
            used: self.tick,
        };
        self.map.insert(key, slot);
    }

    /// Drops `account`'s entry, whatever its version: the next batch loads what the store
    /// holds (after the account was parked, or seen unparked, the entry may be the very
    /// snapshot that did not fold, or ahead of a redrive's rebuild).
    pub fn forget(&mut self, account: &str) {
        self.map.remove(account.as_bytes());
    }

    /// Evicts least recently used entries down to the bound. Called between batches.
    pub fn trim(&mut self) {
        while self.map.len() > self.entries_max {
            let Some((account, used)) = self.order.pop_front() else {
                break;
            };
            if self
                .map
                .get(account.as_bytes())
                .is_some_and(|s| s.used == used)
            {
                self.map.remove(account.as_bytes());
            }
        }
        // Stale order entries pile up for accounts used in many batches: compact now and
        // then, so the queue stays within a small multiple of the map.
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order.retain(|(account, used)| {
                map.get(account.as_bytes()).is_some_and(|s| s.used == *used)
            });
        }
    }

    /// Empties the cache.
    pub fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
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
        assert_eq!(c.lookup("x").map(|s| s.version), Some(5));
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
        assert_eq!(c.lookup(&longest).map(|s| s.version), Some(2));
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
}
