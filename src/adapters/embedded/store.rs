//! One redb file holding the source of truth and the read model.
//!
//! Why redb rather than SQLite: pure Rust (no C toolchain, no bundled C build in CI),
//! ACID with MVCC readers that never block the writer, and typed tables whose keys order
//! the way our access paths need (account, then version). Conditions are checked inside the
//! write transaction, which redb serializes, so they hold like DynamoDB's.
//!
//! Events are committed with `Durability::Immediate` (an acknowledged event survives a
//! crash); snapshots with `Durability::None`, since catch-up rebuilds them from events.

use std::path::Path;
use std::sync::Arc;

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
    TableHandle,
};

use std::sync::RwLock;

use super::commit::Committer;
use super::index::{Candidate, Slot, TxnIndex, key_hash, lookup};

use crate::codec::decode_page;
use crate::codec::stored::{decode_segment, decode_snapshot, decode_tip, encode_snapshot};
use crate::domain::{AccountId, AccountState, Event, Segment, Snapshot, TxnId, TxnOutcome};
use crate::ports::{
    Append, Appended, EventStore, Load, Loaded, Parked, Quarantine, QuarantineAdmin, Quarantined,
    SnapshotError, SnapshotPut, SnapshotStore, StoreError,
};

/// Page sequence (commit order) → the writer's attempt (8 bytes, little-endian), then the
/// encoded page, which names its account and first version (see [`with_attempt`]). A
/// commit's new pages take the next sequence numbers, so they land at the right edge of this
/// tree: a commit writes a few new leaves instead of rewriting one leaf per account it
/// touched (keyed by account, most of a commit's time went into copying those leaves).
pub(super) const PAGES: TableDefinition<u64, &[u8]> = TableDefinition::new("pages");
/// `event_key(account, first version)` → the sequence of that page in [`PAGES`]: small rows,
/// so the leaves a commit rewrites here are few.
pub(super) const PAGE_DIR: TableDefinition<&[u8], u64> = TableDefinition::new("page_dir");
/// The table that held pages keyed by account before layout 4.
const LEGACY_EVENTS: &str = "events";
/// `marker_key(account, txn id)` → the writer's attempt, then a refused txn id's outcome
/// (`codec::stored::encode_outcome`).
/// Booked ids need no row: their pages record them (see `index.rs`).
pub(super) const REFUSALS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("refusals");
/// `marker_key(account, txn id)` → empty: booked transactions that have been reversed.
pub(super) const REVERSED: TableDefinition<&[u8], &[u8]> = TableDefinition::new("reversed");
/// "layout" → the store layout version, so an older data dir is refused by name.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
/// The layout this code writes: 4 = pages keyed by commit sequence with a directory by
/// account (3 keyed pages by account; 2 had no attempt prefix).
const LAYOUT: u64 = 4;
/// account → version and balance of the newest event.
pub(super) const TIPS: TableDefinition<&str, &[u8]> = TableDefinition::new("tips");
/// account → snapshot.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// `event_key(account, segment index)` → segment summary (`domain::segment`), written in
/// the transaction that completes the segment.
pub(super) const SEGMENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("segments");
/// (shard, sequence number) → error text, NUL, record bytes.
const QUARANTINE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("quarantine");
/// account → parked record: version (big-endian), shard, NUL, sequence number, NUL, error.
const PARKED: TableDefinition<&str, &[u8]> = TableDefinition::new("parked");

/// `account NUL version(big-endian)`: orders by account, then version, and compares as
/// plain bytes (ids never contain NUL). Tuple keys cost several times more per compare.
pub(super) fn event_key(account: &str, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + 9);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

pub(super) fn key_version(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// The pages of events as one transaction sees them (a write transaction sees what it
/// staged): the directory says which sequence holds an account's page, [`PAGES`] holds it.
pub(super) struct PageView<P, D> {
    pub pages: P,
    pub dir: D,
}

impl<P, D> PageView<P, D>
where
    P: ReadableTable<u64, &'static [u8]>,
    D: ReadableTable<&'static [u8], u64>,
{
    /// Events `from..=to` of `account`.
    pub fn read_range(&self, account: &str, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        // The page holding `from` starts at or before it.
        let start = match self
            .dir
            .range(event_key(account, 0).as_slice()..=event_key(account, from.max(1)).as_slice())
            .map_err(unavailable)?
            .next_back()
        {
            Some(entry) => key_version(entry.map_err(unavailable)?.0.value()),
            None => 0,
        };
        let mut out = Vec::new();
        for entry in self
            .dir
            .range(event_key(account, start).as_slice()..=event_key(account, to).as_slice())
            .map_err(unavailable)?
        {
            let (_, seq) = entry.map_err(unavailable)?;
            let page = self.page(account, seq.value())?;
            out.extend(
                page.into_events()
                    .into_iter()
                    .filter(|e| e.version >= from && e.version <= to),
            );
        }
        Ok(out)
    }

    fn page(&self, account: &str, seq: u64) -> Result<crate::domain::Page, StoreError> {
        let bytes = self.pages.get(seq).map_err(unavailable)?.ok_or_else(|| {
            corrupt(format!(
                "the directory of {account} names missing page {seq}"
            ))
        })?;
        let page = decode_page(split_attempt(bytes.value())?.1).map_err(corrupt)?;
        if page.account.as_str() != account {
            return Err(corrupt(format!("page {seq} is not of {account}")));
        }
        Ok(page)
    }

    /// Whether the page of `account` starting at `first` is stored with exactly `value`
    /// (attempt included).
    pub fn holds(&self, account: &str, first: u64, value: &[u8]) -> Result<bool, StoreError> {
        let Some(seq) = self
            .dir
            .get(event_key(account, first).as_slice())
            .map_err(unavailable)?
        else {
            return Ok(false);
        };
        let stored = self.pages.get(seq.value()).map_err(unavailable)?;
        Ok(stored.is_some_and(|s| s.value() == value))
    }
}

/// `account NUL txn`.
pub(super) fn marker_key(account: &str, txn: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + txn.len() + 1);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(txn.as_bytes());
    k
}

/// A stored value prefixed with the attempt that wrote it, so a retry of the same attempt is
/// recognised and an identical write from another attempt is not.
pub(super) fn with_attempt(attempt: u64, bytes: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(8 + bytes.len());
    v.extend_from_slice(&attempt.to_le_bytes());
    v.extend_from_slice(bytes);
    v
}

/// Inverse of [`with_attempt`].
pub(super) fn split_attempt(value: &[u8]) -> Result<(u64, &[u8]), StoreError> {
    let (head, rest) = value
        .split_at_checked(8)
        .ok_or_else(|| corrupt("stored value shorter than its attempt"))?;
    let attempt = u64::from_le_bytes(head.try_into().map_err(corrupt)?);
    Ok((attempt, rest))
}

/// Splits a `marker_key` back into account and txn id.
pub(super) fn split_marker_key(key: &[u8]) -> Option<(&str, &str)> {
    let nul = key.iter().position(|&b| b == 0)?;
    let account = std::str::from_utf8(&key[..nul]).ok()?;
    let txn = std::str::from_utf8(&key[nul + 1..]).ok()?;
    Some((account, txn))
}

fn read_index(index: &RwLock<TxnIndex>) -> std::sync::RwLockReadGuard<'_, TxnIndex> {
    // The index is only written by the writer thread after a commit, one insert at a time: a
    // panic there cannot leave an entry half-written.
    index
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Rebuilds the txn index from what is durable: every page's events, then the refusals and
/// the reversed flags.
fn build_index(db: &Database) -> Result<TxnIndex, StoreError> {
    let tx = db.begin_read().map_err(unavailable)?;
    let mut index = TxnIndex::default();
    let pages = tx.open_table(PAGES).map_err(unavailable)?;
    for entry in pages.iter().map_err(unavailable)? {
        let (_, bytes) = entry.map_err(unavailable)?;
        let (_, page) = split_attempt(bytes.value())?;
        let page = decode_page(page).map_err(corrupt)?;
        for e in page.events() {
            let slot = Slot::Booked {
                version: e.version,
                reversed: false,
            };
            index.insert(page.account.as_str(), e.txn_id.as_str(), slot);
        }
    }
    let refusals = tx.open_table(REFUSALS).map_err(unavailable)?;
    for entry in refusals.iter().map_err(unavailable)? {
        let (key, _) = entry.map_err(unavailable)?;
        let (account, txn) = split_marker_key(key.value()).ok_or_else(|| corrupt("refusal key"))?;
        index.insert(account, txn, Slot::Refused);
    }
    let reversed = tx.open_table(REVERSED).map_err(unavailable)?;
    for entry in reversed.iter().map_err(unavailable)? {
        let (key, _) = entry.map_err(unavailable)?;
        let (account, txn) =
            split_marker_key(key.value()).ok_or_else(|| corrupt("reversed key"))?;
        // A reversed id is booked, so the index holds it, by full key or by its own hash.
        if let Some(Candidate {
            slot: Slot::Booked { version, .. },
            exact,
        }) = index.get(account, txn)
        {
            let slot = Slot::Booked {
                version,
                reversed: true,
            };
            index.update(account, txn, exact, slot);
        }
    }
    Ok(index)
}

/// Layout 3 kept pages keyed `account NUL first version`, with the same values (attempt,
/// then the encoded page): each goes under the next sequence number, in key order, with its
/// directory row, and the old table is deleted, all in the opening transaction (a crash
/// leaves layout 3 to upgrade again).
fn upgrade_from_3(tx: &redb::WriteTransaction) -> Result<(), StoreError> {
    let legacy: TableDefinition<&[u8], &[u8]> = TableDefinition::new(LEGACY_EVENTS);
    let mut moved = 0u64;
    {
        let old = tx.open_table(legacy).map_err(unavailable)?;
        let mut pages = tx.open_table(PAGES).map_err(unavailable)?;
        let mut dir = tx.open_table(PAGE_DIR).map_err(unavailable)?;
        for entry in old.iter().map_err(unavailable)? {
            let (key, value) = entry.map_err(unavailable)?;
            moved += 1;
            dir.insert(key.value(), moved).map_err(unavailable)?;
            pages.insert(moved, value.value()).map_err(unavailable)?;
        }
    }
    tx.delete_table(legacy).map_err(unavailable)?;
    tracing::info!(
        pages = moved,
        "upgraded the data dir from store layout 3 to {LAYOUT}"
    );
    Ok(())
}

/// redb's page cache: bounded so memory stays flat however large the ledger grows.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

/// The embedded database; cheap to clone (shared handle). Appends go through one writer
/// thread that commits concurrent requests together (`commit.rs`).
#[derive(Clone)]
pub struct EmbeddedStore {
    // Dropped first: stops the writer thread, which holds the database too.
    committer: Arc<Committer>,
    db: Arc<Database>,
    index: Arc<RwLock<TxnIndex>>,
}

pub(super) fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

pub(super) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// The store's file in a data dir.
const FILE: &str = "tally.redb";

impl EmbeddedStore {
    /// Whether `dir` holds a store (its file), without creating anything.
    pub fn exists(dir: &Path) -> bool {
        dir.join(FILE).is_file()
    }

    /// Opens (or creates) `dir/tally.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        if dir.exists() && !dir.is_dir() {
            return Err(unavailable(format_args!(
                "{} is a file, not a directory: a data dir is a directory holding {FILE}",
                dir.display()
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format_args!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join(FILE);
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => unavailable(format_args!(
                    "{} is in use by another tally process (a running `tally serve`?): one \
                     process at a time opens a data dir; stop it first (its HTTP API serves \
                     balances, history and bulk ingestion meanwhile)",
                    path.display()
                )),
                e => unavailable(format_args!("cannot open {}: {e}", path.display())),
            })?;
        Self::init(db)
    }

    /// A database that lives in memory only (tests, benchmarks).
    pub fn in_memory() -> Result<EmbeddedStore, StoreError> {
        let db = Database::builder()
            .create_with_backend(redb::backends::InMemoryBackend::new())
            .map_err(unavailable)?;
        Self::init(db)
    }

    fn init(db: Database) -> Result<EmbeddedStore, StoreError> {
        let tx = db.begin_write().map_err(unavailable)?;
        {
            let pages = tx.open_table(PAGES).map_err(unavailable)?;
            let legacy = tx
                .list_tables()
                .map_err(unavailable)?
                .any(|t| t.name() == LEGACY_EVENTS);
            let mut meta = tx.open_table(META).map_err(unavailable)?;
            let layout = meta.get("layout").map_err(unavailable)?.map(|v| v.value());
            match layout {
                Some(LAYOUT) => {}
                None if !legacy && pages.is_empty().map_err(unavailable)? => {
                    meta.insert("layout", LAYOUT).map_err(unavailable)?;
                }
                Some(3) if legacy => {
                    drop(pages);
                    upgrade_from_3(&tx)?;
                    meta.insert("layout", LAYOUT).map_err(unavailable)?;
                }
                other => {
                    return Err(StoreError::Incompatible(format!(
                        "this data dir has store layout {}, this tally reads layout {LAYOUT}: \
                         ingest its files again into a new data dir",
                        other.unwrap_or(1)
                    )));
                }
            }
        }
        tx.open_table(PAGE_DIR).map_err(unavailable)?;
        tx.open_table(REFUSALS).map_err(unavailable)?;
        tx.open_table(REVERSED).map_err(unavailable)?;
        tx.open_table(TIPS).map_err(unavailable)?;
        tx.open_table(SNAPSHOTS).map_err(unavailable)?;
        tx.open_table(QUARANTINE).map_err(unavailable)?;
        tx.open_table(PARKED).map_err(unavailable)?;
        tx.open_table(SEGMENTS).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        let index = Arc::new(RwLock::new(build_index(&db)?));
        let db = Arc::new(db);
        let committer = Committer::start(db.clone(), index.clone())
            .map_err(|e| unavailable(format_args!("cannot start the writer thread: {e}")))?;
        Ok(EmbeddedStore {
            committer: Arc::new(committer),
            db,
            index,
        })
    }

    /// Txn ids in the in-memory index (what it costs: ~30 bytes each).
    pub fn indexed_txns(&self) -> usize {
        read_index(&self.index).len()
    }

    /// The outcome of `txn`, read consistently with the tip in `tx`.
    fn outcome_in(
        &self,
        tx: &redb::ReadTransaction,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<Vec<Option<TxnOutcome>>, StoreError> {
        let view = page_view(tx)?;
        let refusals = tx.open_table(REFUSALS).map_err(unavailable)?;
        outcomes_of(
            &read_index(&self.index),
            &view,
            &refusals,
            account.as_str(),
            txns,
        )
    }

    fn tip_sync(&self, account: &str) -> Result<AccountState, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let tips = tx.open_table(TIPS).map_err(unavailable)?;
        match tips.get(account).map_err(unavailable)? {
            Some(v) => decode_tip(v.value()).map_err(corrupt),
            None => Ok(AccountState::default()),
        }
    }

    fn read_sync(&self, account: &str, from: u64, to: u64) -> Result<Vec<Event>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        page_view(&tx)?.read_range(account, from, to)
    }

    fn segments_sync(
        &self,
        account: &str,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Segment>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = tx.open_table(SEGMENTS).map_err(unavailable)?;
        let mut out = Vec::new();
        let range = event_key(account, from).as_slice().to_vec()..=event_key(account, u64::MAX);
        for entry in table
            .range(range.start().as_slice()..=range.end().as_slice())
            .map_err(unavailable)?
            .take(limit)
        {
            let (k, v) = entry.map_err(unavailable)?;
            out.push(decode_segment(key_version(k.value()), v.value()).map_err(corrupt)?);
        }
        Ok(out)
    }

    /// Makes every earlier commit durable (snapshots are committed without waiting for the
    /// disk): called on a clean shutdown, so a stopped process leaves no lagging snapshot.
    pub fn flush(&self) -> Result<(), StoreError> {
        let mut tx = self.db.begin_write().map_err(unavailable)?;
        tx.set_durability(Durability::Immediate)
            .map_err(unavailable)?;
        tx.commit().map_err(unavailable)
    }

    /// Appends on the caller's thread, bypassing the writer thread: for the simulator, whose
    /// runs must not depend on another thread's timing. Same semantics as `append`.
    pub(crate) fn append_now(&self, appends: &[Append]) -> Vec<Appended> {
        super::append::append_group(&self.db, &self.index, &[appends])
            .pop()
            .unwrap_or_default()
    }

    /// (Durable append transactions committed, append requests they carried): what group
    /// commit saves is the difference.
    pub fn commit_counts(&self) -> (u64, u64) {
        self.committer.counts()
    }

    /// All quarantined records (for `tally` tooling and tests).
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = tx.open_table(QUARANTINE).map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            let (shard, seq) = k.value();
            let v = v.value();
            let nul = v.iter().position(|&b| b == 0).unwrap_or(v.len());
            out.push(Quarantined {
                shard: shard.to_owned(),
                sequence_number: seq.to_owned(),
                error: String::from_utf8_lossy(&v[..nul]).into_owned(),
                data: v.get(nul + 1..).unwrap_or_default().to_vec(),
            });
        }
        Ok(out)
    }
}

type ReadView =
    PageView<redb::ReadOnlyTable<u64, &'static [u8]>, redb::ReadOnlyTable<&'static [u8], u64>>;

fn page_view(tx: &redb::ReadTransaction) -> Result<ReadView, StoreError> {
    Ok(PageView {
        pages: tx.open_table(PAGES).map_err(unavailable)?,
        dir: tx.open_table(PAGE_DIR).map_err(unavailable)?,
    })
}

/// The committed outcome of each of `txns` on `account` (the index, confirmed against the
/// tables of one read transaction).
fn outcomes_of(
    index: &TxnIndex,
    view: &ReadView,
    refusals: &impl ReadableTable<&'static [u8], &'static [u8]>,
    account: &str,
    txns: &[TxnId],
) -> Result<Vec<Option<TxnOutcome>>, StoreError> {
    txns.iter()
        .map(|t| {
            Ok(lookup(
                index,
                view,
                refusals,
                account,
                t,
                key_hash(account, t.as_str()),
            )?
            .map(|(o, _)| o))
        })
        .collect()
}

impl EventStore for EmbeddedStore {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        self.tip_sync(account.as_str())
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let tips = tx.open_table(TIPS).map_err(unavailable)?;
        let tip = match tips.get(account.as_str()).map_err(unavailable)? {
            Some(v) => decode_tip(v.value()).map_err(corrupt)?,
            None => AccountState::default(),
        };
        // Even an account with no events may have refused txn ids: always look.
        Ok((tip, self.outcome_in(&tx, account, txns)?))
    }

    /// Every load in one read transaction, with the tables opened once (the default opens a transaction per account: most of an ingest window's
    /// deciding time went there); a `known` tip is handed back instead of read again.
    async fn load_many(&self, loads: Vec<Load>) -> Vec<Result<Loaded, StoreError>> {
        let run = || -> Result<Vec<Result<Loaded, StoreError>>, StoreError> {
            let tx = self.db.begin_read().map_err(unavailable)?;
            let tips = tx.open_table(TIPS).map_err(unavailable)?;
            let view = page_view(&tx)?;
            let refusals = tx.open_table(REFUSALS).map_err(unavailable)?;
            let one = |l: &Load| -> Result<Loaded, StoreError> {
                let account = l.account.as_str();
                let (tip, fresh) = match l.known {
                    Some(tip) => (tip, false),
                    None => match tips.get(account).map_err(unavailable)? {
                        Some(v) => (decode_tip(v.value()).map_err(corrupt)?, true),
                        None => (AccountState::default(), true),
                    },
                };
                Ok(Loaded {
                    tip,
                    fresh,
                    // The index is locked per account, not for the whole call: the writer
                    // waits for it after each commit, and every reader waits behind the writer.
                    outcomes: outcomes_of(
                        &read_index(&self.index),
                        &view,
                        &refusals,
                        account,
                        &l.txns,
                    )?,
                })
            };
            Ok(loads.iter().map(one).collect())
        };
        run().unwrap_or_else(|e| loads.iter().map(|_| Err(e.clone())).collect())
    }

    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        Ok(self
            .outcome_in(&tx, account, std::slice::from_ref(txn))?
            .pop()
            .flatten())
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        if appends.is_empty() {
            return Vec::new();
        }
        self.committer.append(appends).await
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_sync(account.as_str(), from, to)
    }

    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Segment>, StoreError> {
        self.segments_sync(account.as_str(), from, limit)
    }

    async fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, u64)>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let tips = tx.open_table(TIPS).map_err(unavailable)?;
        let range = match after {
            Some(a) => tips.range::<&str>((
                std::ops::Bound::Excluded(a.as_str()),
                std::ops::Bound::Unbounded,
            )),
            None => tips.range::<&str>(..),
        }
        .map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in range.take(limit) {
            let (k, v) = entry.map_err(unavailable)?;
            let account = AccountId::new(k.value()).map_err(corrupt)?;
            out.push((account, decode_tip(v.value()).map_err(corrupt)?.version));
        }
        Ok(out)
    }
}

impl SnapshotStore for EmbeddedStore {
    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = tx.open_table(SNAPSHOTS).map_err(unavailable)?;
        accounts
            .iter()
            .map(|a| match table.get(a.as_str()).map_err(unavailable)? {
                Some(v) => decode_snapshot(v.value()).map(Some).map_err(corrupt),
                None => Ok(None),
            })
            .collect()
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        let n = puts.len();
        let run = || -> Result<Vec<Result<(), SnapshotError>>, StoreError> {
            let mut tx = self.db.begin_write().map_err(unavailable)?;
            tx.set_durability(Durability::None).map_err(unavailable)?;
            let results = {
                let mut table = tx.open_table(SNAPSHOTS).map_err(unavailable)?;
                let mut results = Vec::with_capacity(puts.len());
                for put in &puts {
                    let current = match table.get(put.account.as_str()).map_err(unavailable)? {
                        Some(v) => Some(decode_snapshot(v.value()).map_err(corrupt)?),
                        None => None,
                    };
                    if current.map_or(0, |s| s.version) != put.expected_version {
                        results.push(Err(SnapshotError::Conflict {
                            current: current.map(Box::new),
                        }));
                        continue;
                    }
                    table
                        .insert(
                            put.account.as_str(),
                            encode_snapshot(&put.snapshot).as_slice(),
                        )
                        .map_err(unavailable)?;
                    results.push(Ok(()));
                }
                results
            };
            tx.commit().map_err(unavailable)?;
            Ok(results)
        };
        run().unwrap_or_else(|e| {
            (0..n)
                .map(|_| Err(SnapshotError::Store(e.clone())))
                .collect()
        })
    }
}

impl Quarantine for EmbeddedStore {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        let mut value = record.error.into_bytes();
        value.retain(|&b| b != 0);
        value.push(0);
        value.extend_from_slice(&record.data);
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = tx.open_table(QUARANTINE).map_err(unavailable)?;
            table
                .insert(
                    (record.shard.as_str(), record.sequence_number.as_str()),
                    value.as_slice(),
                )
                .map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }

    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(unavailable)?;
        let new = {
            let mut table = tx.open_table(PARKED).map_err(unavailable)?;
            let there = table
                .get(parked.account.as_str())
                .map_err(unavailable)?
                .is_some();
            if !there {
                table
                    .insert(parked.account.as_str(), encode_parked(&parked).as_slice())
                    .map_err(unavailable)?;
            }
            !there
        };
        tx.commit().map_err(unavailable)?;
        Ok(new)
    }

    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        self.parked_sync(account)
    }
}

fn encode_parked(p: &Parked) -> Vec<u8> {
    let mut v = p.version.to_be_bytes().to_vec();
    for (i, part) in [&p.shard, &p.sequence_number, &p.error]
        .into_iter()
        .enumerate()
    {
        if i > 0 {
            v.push(0);
        }
        v.extend(part.bytes().filter(|&b| b != 0));
    }
    v
}

fn decode_parked(account: &str, v: &[u8]) -> Result<Parked, StoreError> {
    let (version, rest) = v
        .split_first_chunk::<8>()
        .ok_or_else(|| StoreError::Corrupt(format!("parked record of {account}")))?;
    let mut parts = rest.splitn(3, |&b| b == 0);
    let mut next = || String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    Ok(Parked {
        account: account.to_owned(),
        version: u64::from_be_bytes(*version),
        shard: next(),
        sequence_number: next(),
        error: next(),
    })
}

impl EmbeddedStore {
    fn parked_sync(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = tx.open_table(PARKED).map_err(unavailable)?;
        let found = table.get(account).map_err(unavailable)?;
        found.map(|v| decode_parked(account, v.value())).transpose()
    }
}

impl EmbeddedStore {
    /// Every parked account, in account order (tooling, tests and the simulator).
    pub fn parked_accounts(&self) -> Result<Vec<Parked>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let table = tx.open_table(PARKED).map_err(unavailable)?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(unavailable)? {
            let (k, v) = entry.map_err(unavailable)?;
            out.push(decode_parked(k.value(), v.value())?);
        }
        Ok(out)
    }
}

impl QuarantineAdmin for EmbeddedStore {
    async fn parked_list(&self) -> Result<Vec<Parked>, StoreError> {
        self.parked_accounts()
    }

    async fn unpark(&self, account: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = tx.open_table(PARKED).map_err(unavailable)?;
            table.remove(account).map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }

    async fn list(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.quarantined()
    }

    async fn remove(&self, shard: &str, sequence_number: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(unavailable)?;
        {
            let mut table = tx.open_table(QUARANTINE).map_err(unavailable)?;
            table
                .remove((shard, sequence_number))
                .map_err(unavailable)?;
        }
        tx.commit().map_err(unavailable)
    }
}
