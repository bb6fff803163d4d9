//! One redb file holding the source of truth and the read model.
//!
//! Why redb rather than SQLite: pure Rust (no C toolchain, no bundled C build in CI),
//! ACID with MVCC readers that never block the writer, and typed tables whose keys order
//! the way our access paths need (account, then version). Conditions are checked inside the
//! write transaction, which redb serializes, so they hold like DynamoDB's.
//!
//! Events are committed with `Durability::Immediate` (an acknowledged event survives a
//! crash); snapshots with `Durability::None`, since catch-up rebuilds them from events.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};

use crate::codec::stored::{
    decode_marker, decode_snapshot, decode_tip, encode_marker, encode_snapshot, encode_tip,
};
use crate::codec::{WirePage, decode_page, encode_page};
use crate::domain::{AccountId, AccountState, Event, EventKind, Page, Snapshot, TxnId};
use crate::ports::{
    Append, AppendError, EventStore, Quarantine, Quarantined, SnapshotError, SnapshotPut,
    SnapshotStore, StoreError, StoredTxn,
};

/// `event_key(account, first version)` → encoded page.
const EVENTS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("events");
/// `marker_key(account, txn id)` → marker.
const MARKERS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("markers");
/// account → version and balance of the newest event.
const TIPS: TableDefinition<&str, &[u8]> = TableDefinition::new("tips");
/// account → snapshot.
const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
/// (shard, sequence number) → error text, NUL, record bytes.
const QUARANTINE: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("quarantine");

/// `account NUL version(big-endian)`: orders by account, then version, and compares as
/// plain bytes (ids never contain NUL). Tuple keys cost several times more per compare.
fn event_key(account: &str, version: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + 9);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(&version.to_be_bytes());
    k
}

fn key_version(key: &[u8]) -> u64 {
    key.len()
        .checked_sub(8)
        .and_then(|at| key[at..].try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// `account NUL txn`.
fn marker_key(account: &str, txn: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(account.len() + txn.len() + 1);
    k.extend_from_slice(account.as_bytes());
    k.push(0);
    k.extend_from_slice(txn.as_bytes());
    k
}

/// redb's page cache: bounded so memory stays flat however large the ledger grows.
const CACHE_BYTES: usize = 128 * 1024 * 1024;

/// The embedded database; cheap to clone (shared handle).
#[derive(Clone)]
pub struct EmbeddedStore {
    db: Arc<Database>,
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

impl EmbeddedStore {
    /// Opens (or creates) `dir/tally.redb`, creating `dir` if needed.
    pub fn open(dir: &Path) -> Result<EmbeddedStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| unavailable(format_args!("cannot create {}: {e}", dir.display())))?;
        let path = dir.join("tally.redb");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => unavailable(format_args!(
                    "{} is in use by another tally process (a running `tally serve`?); \
                     stop it or use its HTTP API",
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
        tx.open_table(EVENTS).map_err(unavailable)?;
        tx.open_table(MARKERS).map_err(unavailable)?;
        tx.open_table(TIPS).map_err(unavailable)?;
        tx.open_table(SNAPSHOTS).map_err(unavailable)?;
        tx.open_table(QUARANTINE).map_err(unavailable)?;
        tx.commit().map_err(unavailable)?;
        Ok(EmbeddedStore { db: Arc::new(db) })
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
        let events = tx.open_table(EVENTS).map_err(unavailable)?;
        // The page holding `from` starts at or before it.
        let start = match events
            .range(event_key(account, 0).as_slice()..=event_key(account, from.max(1)).as_slice())
            .map_err(unavailable)?
            .next_back()
        {
            Some(entry) => key_version(entry.map_err(unavailable)?.0.value()),
            None => 0,
        };
        let mut out = Vec::new();
        for entry in events
            .range(event_key(account, start).as_slice()..=event_key(account, to).as_slice())
            .map_err(unavailable)?
        {
            let (_, bytes) = entry.map_err(unavailable)?;
            let page = decode_page(bytes.value()).map_err(corrupt)?;
            out.extend(
                page.into_events()
                    .into_iter()
                    .filter(|e| e.version >= from && e.version <= to),
            );
        }
        Ok(out)
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

    /// Checks every append against the stored state plus what earlier appends of this call
    /// staged, then writes all staged entries in key order: sorted inserts keep each B-tree
    /// leaf copied once per transaction (random-order inserts copied a leaf per insert).
    /// The simulator calls it directly: `spawn_blocking` would make its runs unreplayable.
    pub(crate) fn append_sync(&self, appends: Vec<Append>) -> Vec<Result<(), AppendError>> {
        let run = || -> Result<Vec<Result<(), AppendError>>, StoreError> {
            let mut tx = self.db.begin_write().map_err(unavailable)?;
            tx.set_durability(Durability::Immediate)
                .map_err(unavailable)?;
            let results = {
                let mut events = tx.open_table(EVENTS).map_err(unavailable)?;
                let mut markers = tx.open_table(MARKERS).map_err(unavailable)?;
                let mut tips = tx.open_table(TIPS).map_err(unavailable)?;
                let mut staged = Staged::default();
                let results: Vec<Result<(), AppendError>> = appends
                    .iter()
                    .map(|append| {
                        check_append(append, &markers, &tips, &staged)
                            .and_then(|w| staged.add(append, w))
                    })
                    .collect();
                for (k, v) in &staged.events {
                    events
                        .insert(k.as_slice(), v.as_slice())
                        .map_err(unavailable)?;
                }
                for (k, m) in &staged.markers {
                    markers
                        .insert(k.as_slice(), encode_marker(m).as_slice())
                        .map_err(unavailable)?;
                }
                for (k, t) in &staged.tips {
                    tips.insert(k.as_str(), encode_tip(t).as_slice())
                        .map_err(unavailable)?;
                }
                results
            };
            tx.commit().map_err(unavailable)?;
            Ok(results)
        };
        match run() {
            Ok(results) => results,
            Err(e) => appends
                .iter()
                .map(|_| Err(AppendError::Store(e.clone())))
                .collect(),
        }
    }
}

/// Writes of one `append` call, not yet in the tables, sorted by key.
#[derive(Default)]
struct Staged {
    events: BTreeMap<Vec<u8>, Vec<u8>>,
    markers: BTreeMap<Vec<u8>, StoredTxn>,
    tips: BTreeMap<String, AccountState>,
}

impl Staged {
    fn add(&mut self, append: &Append, marker_writes: MarkerWrites) -> Result<(), AppendError> {
        let account = append.account.as_str();
        let page = Page::new(append.account.clone(), append.events.clone()).map_err(corrupt)?;
        let bytes = encode_page(&WirePage::from_page(&page)).map_err(corrupt)?;
        self.events
            .insert(event_key(account, page.first_version()), bytes.to_vec());
        for (txn, marker) in marker_writes {
            self.markers.insert(marker_key(account, &txn), marker);
        }
        let last = &append.events[append.events.len() - 1];
        self.tips
            .insert(account.to_owned(), AccountState::after(last));
        Ok(())
    }
}

/// Marker writes an append will make once its conditions hold.
type MarkerWrites = Vec<(String, StoredTxn)>;

/// Checks every condition of one append without writing anything.
fn check_append(
    append: &Append,
    markers: &redb::Table<&[u8], &[u8]>,
    tips: &redb::Table<&str, &[u8]>,
    staged: &Staged,
) -> Result<MarkerWrites, AppendError> {
    let account = append.account.as_str();
    let current = match staged.tips.get(account) {
        Some(t) => t.version,
        None => match tips.get(account).map_err(unavailable)? {
            Some(v) => decode_tip(v.value()).map_err(corrupt)?.version,
            None => 0,
        },
    };
    if current != append.expected_version {
        return Err(AppendError::Conflict { current });
    }
    let mut pending: HashMap<&str, StoredTxn> = HashMap::new();
    let lookup =
        |txn: &str, pending: &HashMap<&str, StoredTxn>| -> Result<Option<StoredTxn>, AppendError> {
            if let Some(m) = pending.get(txn) {
                return Ok(Some(*m));
            }
            let key = marker_key(account, txn);
            if let Some(m) = staged.markers.get(&key) {
                return Ok(Some(*m));
            }
            match markers.get(key.as_slice()).map_err(unavailable)? {
                Some(v) => Ok(Some(decode_marker(v.value()).map_err(corrupt)?)),
                None => Ok(None),
            }
        };
    for event in &append.events {
        if lookup(event.txn_id.as_str(), &pending)?.is_some() {
            return Err(AppendError::DuplicateTxn(event.txn_id.clone()));
        }
        if let EventKind::Reversed { reverses, .. } = &event.kind {
            let mut target = lookup(reverses.as_str(), &pending)?
                .ok_or_else(|| AppendError::TargetReversed(reverses.clone()))?;
            if target.record.reversed {
                return Err(AppendError::TargetReversed(reverses.clone()));
            }
            target.record.reversed = true;
            pending.insert(reverses.as_str(), target);
        }
        let record = event
            .txn_record(false)
            .ok_or_else(|| corrupt("event with an impossible delta"))?;
        pending.insert(
            event.txn_id.as_str(),
            StoredTxn {
                version: event.version,
                record,
            },
        );
    }
    Ok(pending
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect())
}

impl EventStore for EmbeddedStore {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        self.tip_sync(account.as_str())
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<StoredTxn>>), StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let tips = tx.open_table(TIPS).map_err(unavailable)?;
        let tip = match tips.get(account.as_str()).map_err(unavailable)? {
            Some(v) => decode_tip(v.value()).map_err(corrupt)?,
            None => AccountState::default(),
        };
        if tip.version == 0 {
            return Ok((tip, vec![None; txns.len()]));
        }
        let markers = tx.open_table(MARKERS).map_err(unavailable)?;
        let found = txns
            .iter()
            .map(|t| {
                match markers
                    .get(marker_key(account.as_str(), t.as_str()).as_slice())
                    .map_err(unavailable)?
                {
                    Some(v) => decode_marker(v.value()).map(Some).map_err(corrupt),
                    None => Ok(None),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok((tip, found))
    }

    async fn txn(&self, account: &AccountId, txn: &TxnId) -> Result<Option<StoredTxn>, StoreError> {
        let tx = self.db.begin_read().map_err(unavailable)?;
        let markers = tx.open_table(MARKERS).map_err(unavailable)?;
        match markers
            .get(marker_key(account.as_str(), txn.as_str()).as_slice())
            .map_err(unavailable)?
        {
            Some(v) => decode_marker(v.value()).map(Some).map_err(corrupt),
            None => Ok(None),
        }
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Result<(), AppendError>> {
        if appends.is_empty() {
            return Vec::new();
        }
        let store = self.clone();
        // The commit waits for fsync: keep it off the async worker threads.
        match tokio::task::spawn_blocking(move || store.append_sync(appends)).await {
            Ok(results) => results,
            Err(e) => vec![Err(AppendError::Store(unavailable(e)))],
        }
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.read_sync(account.as_str(), from, to)
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
}
