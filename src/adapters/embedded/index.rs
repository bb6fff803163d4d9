//! The embedded store's txn index: where each (account, txn id) outcome lives, in memory.
//!
//! A booked outcome is its event, which is in its page already; writing a second row per
//! event (the layout DynamoDB needs) cost the embedded store most of its write time. So the
//! pages are the record of booked ids, refusals and `reversed` flags have small tables of their
//! own, and this index — rebuilt from those at open, updated after every commit — says where
//! to look: a 64-bit hash of (account, txn id) to a version (booked) or "refused".
//!
//! A hash is not an identity: a hit is only a candidate, which the store confirms by reading
//! the event at that version (or the refusal row) and comparing the txn id. Ids whose hash
//! collides with an indexed one are kept by their full key instead, so a collision costs a
//! lookup, never a wrong answer.
//!
//! Memory: ~30 bytes per txn id (1,000,000 ids: ~30 MB); start: one pass over every page.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};

/// Where one txn id's outcome is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Booked as the event at `version`.
    Booked { version: u64, reversed: bool },
    /// Refused: the outcome is in the refusals table.
    Refused,
}

impl Slot {
    const REFUSED: u64 = u64::MAX;
    const REVERSED_BIT: u64 = 1 << 63;

    fn pack(self) -> u64 {
        match self {
            Slot::Booked { version, reversed } => {
                (version & !Self::REVERSED_BIT) | if reversed { Self::REVERSED_BIT } else { 0 }
            }
            Slot::Refused => Self::REFUSED,
        }
    }

    fn unpack(v: u64) -> Slot {
        if v == Self::REFUSED {
            Slot::Refused
        } else {
            Slot::Booked {
                version: v & !Self::REVERSED_BIT,
                reversed: v & Self::REVERSED_BIT != 0,
            }
        }
    }
}

/// The keys are hashes already: no need to hash them again.
#[derive(Default)]
pub struct Identity(u64);

impl Hasher for Identity {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A candidate location for a txn id: `exact` when found by its full key (no confirmation
/// needed), else a hash hit the caller must confirm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub slot: Slot,
    pub exact: bool,
}

#[derive(Default)]
pub struct TxnIndex {
    by_hash: HashMap<u64, u64, BuildHasherDefault<Identity>>,
    /// Ids whose hash collided with an indexed one, by `account NUL txn`.
    exact: HashMap<Box<[u8]>, u64>,
}

/// The index's hash of (account, txn id): fixed, so it is the same in every process.
pub fn key_hash(account: &str, txn: &str) -> u64 {
    let mut h = foldhash::fast::FixedState::with_seed(0x7a11_7a11).build_hasher();
    h.write(account.as_bytes());
    h.write_u8(0);
    h.write(txn.as_bytes());
    h.finish()
}

fn full_key(account: &str, txn: &str) -> Box<[u8]> {
    let mut k = Vec::with_capacity(account.len() + txn.len() + 1);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(txn.as_bytes());
    k.into_boxed_slice()
}

impl TxnIndex {
    pub fn len(&self) -> usize {
        self.by_hash.len() + self.exact.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Where `txn` of `account` may be; `None`: it has no outcome.
    pub fn get(&self, account: &str, txn: &str) -> Option<Candidate> {
        self.get_hashed(key_hash(account, txn), account, txn)
    }

    /// [`TxnIndex::get`] with the id's [`key_hash`] already computed.
    pub fn get_hashed(&self, hash: u64, account: &str, txn: &str) -> Option<Candidate> {
        if !self.exact.is_empty()
            && let Some(&v) = self.exact.get(&full_key(account, txn))
        {
            return Some(Candidate {
                slot: Slot::unpack(v),
                exact: true,
            });
        }
        self.by_hash.get(&hash).map(|&v| Candidate {
            slot: Slot::unpack(v),
            exact: false,
        })
    }

    /// Records a new outcome for an id known to have none. If another id holds its hash, it
    /// is kept by its full key.
    pub fn insert(&mut self, account: &str, txn: &str, slot: Slot) {
        self.insert_hashed(key_hash(account, txn), account, txn, slot);
    }

    /// [`TxnIndex::insert`] with the id's [`key_hash`] already computed.
    pub fn insert_hashed(&mut self, hash: u64, account: &str, txn: &str, slot: Slot) {
        use std::collections::hash_map::Entry;
        // One probe: the entry is where the hash is, or where it goes.
        match self.by_hash.entry(hash) {
            Entry::Vacant(v) => {
                v.insert(slot.pack());
            }
            Entry::Occupied(_) => {
                self.exact.insert(full_key(account, txn), slot.pack());
            }
        }
    }

    /// Replaces the outcome of an indexed id (a booking's `reversed` flag); `exact` says
    /// where [`TxnIndex::get`] found it.
    pub fn update(&mut self, account: &str, txn: &str, exact: bool, slot: Slot) {
        self.update_hashed(key_hash(account, txn), account, txn, exact, slot);
    }

    /// [`TxnIndex::update`] with the id's [`key_hash`] already computed.
    pub fn update_hashed(&mut self, hash: u64, account: &str, txn: &str, exact: bool, slot: Slot) {
        if exact {
            self.exact.insert(full_key(account, txn), slot.pack());
        } else {
            self.by_hash.insert(hash, slot.pack());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_and_a_colliding_id_is_kept_by_its_full_key() {
        for slot in [
            Slot::Refused,
            Slot::Booked {
                version: 7,
                reversed: true,
            },
            Slot::Booked {
                version: (1 << 62) + 3,
                reversed: false,
            },
        ] {
            assert_eq!(Slot::unpack(slot.pack()), slot);
        }
        let mut index = TxnIndex::default();
        let booked = |version| Slot::Booked {
            version,
            reversed: false,
        };
        index.insert("a", "t1", booked(1));
        // Force a collision: insert under the same hash through the map directly.
        let h = key_hash("a", "t2");
        index.by_hash.insert(h, booked(9).pack());
        index.insert("a", "t2", booked(2));
        assert_eq!(
            index.get("a", "t2"),
            Some(Candidate {
                slot: booked(2),
                exact: true
            })
        );
        assert_eq!(
            index.get("a", "t1"),
            Some(Candidate {
                slot: booked(1),
                exact: false
            })
        );
        assert_eq!(index.get("b", "t1"), None);
        assert_eq!(index.len(), 3);
    }
}

/// Where a looked-up outcome came from, so the writer can update the index after commit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Decided in this group: not in the index yet.
    New,
    /// In the index (by its full key if `exact`).
    Indexed { exact: bool },
}

/// The outcome of `txn` on `account` as the given view of the tables holds it: the index
/// says where, the event (or the refusal row) confirms it is this id's. A candidate the view
/// cannot confirm (a hash shared with another id, or an index ahead of an older read
/// snapshot) counts as no outcome: the writer's own check, which sees everything committed,
/// is what keeps an id from being decided twice. `hash` is the id's [`key_hash`].
pub fn lookup<P, D>(
    index: &TxnIndex,
    pages: &super::store::PageView<P, D>,
    refusals: &impl redb::ReadableTable<&'static [u8], &'static [u8]>,
    account: &str,
    txn: &crate::domain::TxnId,
    hash: u64,
) -> Result<Option<(crate::domain::TxnOutcome, Origin)>, crate::ports::StoreError>
where
    P: redb::ReadableTable<u64, &'static [u8]>,
    D: redb::ReadableTable<&'static [u8], u64>,
{
    use super::store::{corrupt, marker_key, split_attempt, unavailable};
    use crate::domain::TxnOutcome;
    let Some(candidate) = index.get_hashed(hash, account, txn.as_str()) else {
        return Ok(None);
    };
    let origin = Origin::Indexed {
        exact: candidate.exact,
    };
    match candidate.slot {
        Slot::Refused => match refusals
            .get(marker_key(account, txn.as_str()).as_slice())
            .map_err(unavailable)?
        {
            Some(v) => {
                let (_, bytes) = split_attempt(v.value())?;
                let outcome = crate::codec::stored::decode_outcome(txn, bytes).map_err(corrupt)?;
                Ok(Some((outcome, origin)))
            }
            None => Ok(None),
        },
        Slot::Booked { version, reversed } => {
            let found = pages
                .read_range(account, version, version)?
                .pop()
                .filter(|e| &e.txn_id == txn);
            Ok(found.map(|event| (TxnOutcome::Booked { event, reversed }, origin)))
        }
    }
}
