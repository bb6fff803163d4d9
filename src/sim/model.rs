//! In-memory stores with the semantics DESIGN.md promises for DynamoDB (the Events and
//! Balances tables), written from the port contracts, not from either adapter:
//! - an append is one conditional write per page (tip still at `expected_version`, no
//!   marker for any of its txn ids, every reversal target booked and unreversed); an
//!   account's pages of one call commit in order and, after the first that fails, none of
//!   its later pages is written; other callers may run between two pages;
//! - a snapshot write is conditional on the stored version and a conflict returns the
//!   stored item (`ALL_OLD`).
//!
//! The simulator's port layer. Must never: check a business rule (that is the checker's
//! job), or hold a lock across an await. When the port shapes change (per-account append
//! results, refusal markers), this file and `faults.rs` are what gets re-fitted.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::{AccountId, AccountState, Event, EventKind, Snapshot, TxnId};
use crate::ports::{
    Append, AppendError, EventStore, Quarantine, Quarantined, SnapshotError, SnapshotPut,
    SnapshotStore, StoreError, StoredTxn,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default, Clone)]
struct Account {
    /// First version → the page's events.
    pages: BTreeMap<u64, Vec<Event>>,
    tip: AccountState,
    markers: HashMap<TxnId, StoredTxn>,
}

/// The Events table. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct MemEvents {
    accounts: Arc<Mutex<BTreeMap<AccountId, Account>>>,
    /// Read the tip and the markers in two steps, letting others run between them (the
    /// DynamoDB adapter's Query + BatchGetItem).
    torn_load: bool,
}

impl MemEvents {
    pub fn new(torn_load: bool) -> MemEvents {
        MemEvents {
            torn_load,
            ..MemEvents::default()
        }
    }

    /// Checks one page's conditions and, if they hold, writes it.
    fn commit(&self, append: &Append) -> Result<(), AppendError> {
        let mut accounts = lock(&self.accounts);
        let account = accounts.entry(append.account.clone()).or_default();
        if account.tip.version != append.expected_version {
            return Err(AppendError::Conflict {
                current: account.tip.version,
            });
        }
        let (Some(first), Some(last)) = (append.events.first(), append.events.last()) else {
            return Err(StoreError::Corrupt("an empty page".into()).into());
        };
        let mut staged: HashMap<TxnId, StoredTxn> = HashMap::new();
        for event in &append.events {
            let known = |t: &TxnId| staged.get(t).or_else(|| account.markers.get(t)).copied();
            if known(&event.txn_id).is_some() {
                return Err(AppendError::DuplicateTxn(event.txn_id.clone()));
            }
            if let EventKind::Reversed { reverses, .. } = &event.kind {
                match known(reverses) {
                    Some(mut target) if !target.record.reversed => {
                        target.record.reversed = true;
                        staged.insert(reverses.clone(), target);
                    }
                    _ => return Err(AppendError::TargetReversed(reverses.clone())),
                }
            }
            let record = event
                .txn_record(false)
                .ok_or_else(|| StoreError::Corrupt("an event with an impossible delta".into()))?;
            let version = event.version;
            staged.insert(event.txn_id.clone(), StoredTxn { version, record });
        }
        account.markers.extend(staged);
        account.pages.insert(first.version, append.events.clone());
        account.tip = AccountState::after(last);
        Ok(())
    }

    /// Every account's events, in version order (for the checker).
    pub fn dump(&self) -> BTreeMap<AccountId, Vec<Event>> {
        lock(&self.accounts)
            .iter()
            .map(|(a, acct)| (a.clone(), acct.pages.values().flatten().cloned().collect()))
            .collect()
    }
}

impl EventStore for MemEvents {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        Ok(lock(&self.accounts)
            .get(account)
            .map(|a| a.tip)
            .unwrap_or_default())
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<StoredTxn>>), StoreError> {
        let tip = self.tip(account).await?;
        if self.torn_load {
            tokio::task::yield_now().await;
        }
        let accounts = lock(&self.accounts);
        let markers = accounts.get(account).map(|a| &a.markers);
        let found = txns
            .iter()
            .map(|t| markers.and_then(|m| m.get(t)).copied())
            .collect();
        Ok((tip, found))
    }

    async fn txn(&self, account: &AccountId, txn: &TxnId) -> Result<Option<StoredTxn>, StoreError> {
        Ok(lock(&self.accounts)
            .get(account)
            .and_then(|a| a.markers.get(txn))
            .copied())
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Result<(), AppendError>> {
        let mut failed: Vec<AccountId> = Vec::new();
        let mut out = Vec::with_capacity(appends.len());
        for (i, append) in appends.iter().enumerate() {
            if i > 0 {
                // One conditional write per page: other callers may run in between.
                tokio::task::yield_now().await;
            }
            let result = if failed.contains(&append.account) {
                Err(AppendError::Conflict {
                    current: self.tip(&append.account).await.map_or(0, |t| t.version),
                })
            } else {
                self.commit(append)
            };
            if result.is_err() {
                failed.push(append.account.clone());
            }
            out.push(result);
        }
        out
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        let accounts = lock(&self.accounts);
        Ok(accounts.get(account).map_or_else(Vec::new, |a| {
            a.pages
                .values()
                .flatten()
                .filter(|e| e.version >= from && e.version <= to)
                .cloned()
                .collect()
        }))
    }

    async fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, u64)>, StoreError> {
        Ok(lock(&self.accounts)
            .iter()
            .filter(|(a, acct)| after.is_none_or(|after| *a > after) && acct.tip.version > 0)
            .take(limit)
            .map(|(a, acct)| (a.clone(), acct.tip.version))
            .collect())
    }
}

/// The Balances table.
#[derive(Clone, Default)]
pub struct MemSnapshots {
    items: Arc<Mutex<BTreeMap<String, Snapshot>>>,
}

impl MemSnapshots {
    /// Every stored snapshot (for the checker).
    pub fn dump(&self) -> BTreeMap<String, Snapshot> {
        lock(&self.items).clone()
    }
}

impl SnapshotStore for MemSnapshots {
    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        let items = lock(&self.items);
        Ok(accounts.iter().map(|a| items.get(a).copied()).collect())
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        let mut items = lock(&self.items);
        puts.into_iter()
            .map(|put| {
                let current = items.get(&put.account).copied();
                if current.map_or(0, |s| s.version) != put.expected_version {
                    return Err(SnapshotError::Conflict {
                        current: current.map(Box::new),
                    });
                }
                items.insert(put.account, put.snapshot);
                Ok(())
            })
            .collect()
    }
}

/// The Quarantine table.
#[derive(Clone, Default)]
pub struct MemQuarantine {
    records: Arc<Mutex<Vec<Quarantined>>>,
}

impl MemQuarantine {
    /// Every quarantined record (for the checker).
    pub fn dump(&self) -> Vec<Quarantined> {
        lock(&self.records).clone()
    }
}

impl Quarantine for MemQuarantine {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        lock(&self.records).push(record);
        Ok(())
    }
}
