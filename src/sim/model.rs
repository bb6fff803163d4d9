//! In-memory stores with the semantics DESIGN.md promises for DynamoDB (the Events and
//! Balances tables), written from the port contracts, not from either adapter:
//! - an append is one conditional write per page (for a page with events, the tip still
//!   where the page continues from; no outcome yet for any of its txn ids; every reversal
//!   target booked and unreversed; recording follows `domain::record`); an account's pages
//!   of one call commit in order and, after the first that fails, none of its later pages
//!   is written; other callers may run between two pages; a page identical to one already
//!   written succeeds again (DynamoDB's client request token);
//! - segment summaries appear once a segment is complete;
//! - a snapshot write is conditional on the stored version and a conflict returns the
//!   stored item (`ALL_OLD`).
//!
//! The simulator's port layer. Must never: check a business rule (that is the checker's
//! job), or hold a lock across an await.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::domain::{
    AccountId, AccountState, Entry, Event, EventKind, RecordError, Segment, Snapshot, TxnId,
    TxnOutcome, record,
};
use crate::ports::{
    Append, AppendError, Appended, EventStore, PageWrite, Parked, Quarantine, Quarantined,
    SnapshotError, SnapshotPut, SnapshotStore, StoreError,
};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Debug, Default, Clone)]
struct Account {
    /// First version → the page's events.
    pages: BTreeMap<u64, Vec<Event>>,
    tip: AccountState,
    outcomes: HashMap<TxnId, TxnOutcome>,
    segments: BTreeMap<u64, Segment>,
    /// The attempt that wrote each page (by first version) and each refusal.
    written_by: HashMap<u64, u64>,
    refused_by: HashMap<TxnId, u64>,
}

impl Account {
    fn events(&self, from: u64, to: u64) -> Vec<Event> {
        self.pages
            .values()
            .flatten()
            .filter(|e| e.version >= from && e.version <= to)
            .cloned()
            .collect()
    }

    /// Whether this exact page is already written by this attempt (a retry after a timeout).
    fn holds(&self, page: &PageWrite, attempt: u64) -> bool {
        let events_there = match page.events.first() {
            Some(first) => {
                self.pages.get(&first.version) == Some(&page.events)
                    && self.written_by.get(&first.version) == Some(&attempt)
            }
            None => true,
        };
        events_there
            && page.refusals.iter().all(|r| {
                let txn = r.command.txn_id();
                self.outcomes.get(txn) == Some(&TxnOutcome::Refused(r.clone()))
                    && self.refused_by.get(txn) == Some(&attempt)
            })
    }
}

/// The Events table. Cheap to clone (shared state).
#[derive(Clone, Default)]
pub struct MemEvents {
    accounts: Arc<Mutex<BTreeMap<AccountId, Account>>>,
    /// Read the tip and the outcomes in two steps, letting others run between them (the
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
    fn commit(
        &self,
        account: &AccountId,
        expected: u64,
        page: &PageWrite,
        attempt: u64,
    ) -> Result<(), AppendError> {
        page.check_shape(expected)?;
        let mut accounts = lock(&self.accounts);
        let acct = accounts.entry(account.clone()).or_default();
        let written = || Ok(());
        if !page.events.is_empty() && acct.tip.version != expected {
            return if acct.holds(page, attempt) {
                written()
            } else {
                Err(AppendError::Conflict {
                    current: acct.tip.version,
                })
            };
        }
        let mut view: HashMap<TxnId, TxnOutcome> = HashMap::new();
        let touched = page
            .events
            .iter()
            .flat_map(|e| {
                let target = match &e.kind {
                    EventKind::Reversed { reverses, .. } => Some(reverses),
                    _ => None,
                };
                std::iter::once(&e.txn_id).chain(target)
            })
            .chain(page.refusals.iter().map(|r| r.command.txn_id()));
        for txn in touched {
            if let Some(o) = acct.outcomes.get(txn) {
                view.insert(txn.clone(), o.clone());
            }
        }
        let recorded = page
            .events
            .iter()
            .try_for_each(|e| record(&mut view, Entry::Booked(e)))
            .and_then(|()| {
                page.refusals
                    .iter()
                    .try_for_each(|r| record(&mut view, Entry::Refused(r)))
            });
        match recorded {
            Ok(()) => {}
            Err(_) if acct.holds(page, attempt) => return written(),
            Err(RecordError::Taken(t)) => return Err(AppendError::DuplicateTxn(t)),
            Err(RecordError::TargetNotLive(t)) => return Err(AppendError::TargetReversed(t)),
        }
        acct.outcomes.extend(view);
        for r in &page.refusals {
            acct.refused_by.insert(r.command.txn_id().clone(), attempt);
        }
        if let (Some(first), Some(last)) = (page.events.first(), page.events.last()) {
            acct.pages.insert(first.version, page.events.clone());
            acct.written_by.insert(first.version, attempt);
            let before = acct.tip.version;
            acct.tip = AccountState::after(last);
            for index in Segment::completed(before, acct.tip.version) {
                let (from, to) = Segment::versions(index);
                if let Some(summary) = Segment::summarize(index, &acct.events(from, to)) {
                    acct.segments.insert(index, summary);
                }
            }
        }
        Ok(())
    }

    /// Every account's events, in version order (for the checker).
    pub fn dump(&self) -> BTreeMap<AccountId, Vec<Event>> {
        lock(&self.accounts)
            .iter()
            .map(|(a, acct)| (a.clone(), acct.pages.values().flatten().cloned().collect()))
            .collect()
    }

    /// Every account's txn outcomes (for the checker).
    pub fn outcomes(&self) -> BTreeMap<AccountId, HashMap<TxnId, TxnOutcome>> {
        lock(&self.accounts)
            .iter()
            .map(|(a, acct)| (a.clone(), acct.outcomes.clone()))
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
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        let tip = self.tip(account).await?;
        if self.torn_load {
            tokio::task::yield_now().await;
        }
        let accounts = lock(&self.accounts);
        let outcomes = accounts.get(account).map(|a| &a.outcomes);
        let found = txns
            .iter()
            .map(|t| outcomes.and_then(|m| m.get(t)).cloned())
            .collect();
        Ok((tip, found))
    }

    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        Ok(lock(&self.accounts)
            .get(account)
            .and_then(|a| a.outcomes.get(txn))
            .cloned())
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        let mut out = Vec::with_capacity(appends.len());
        for (i, append) in appends.iter().enumerate() {
            let mut expected = append.expected_version;
            let mut result = Appended {
                pages: append.pages.len(),
                error: None,
            };
            for (p, page) in append.pages.iter().enumerate() {
                if i + p > 0 {
                    // One conditional write per page: other callers may run in between.
                    tokio::task::yield_now().await;
                }
                if let Err(e) = self.commit(&append.account, expected, page, append.attempt) {
                    result = Appended {
                        pages: p,
                        error: Some(e),
                    };
                    break;
                }
                if let Some(last) = page.events.last() {
                    expected = last.version;
                }
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
        Ok(accounts
            .get(account)
            .map_or_else(Vec::new, |a| a.events(from, to)))
    }

    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Segment>, StoreError> {
        Ok(lock(&self.accounts)
            .get(account)
            .map_or_else(Vec::new, |a| {
                a.segments
                    .range(from..)
                    .take(limit)
                    .map(|(_, s)| *s)
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
    parked: Arc<Mutex<std::collections::BTreeMap<String, Parked>>>,
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

    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        let mut all = lock(&self.parked);
        if all.contains_key(&parked.account) {
            return Ok(false);
        }
        all.insert(parked.account.clone(), parked);
        Ok(true)
    }

    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        Ok(lock(&self.parked).get(account).cloned())
    }
}

impl MemQuarantine {
    /// Every parked account (for the checker).
    pub fn parked_dump(&self) -> Vec<Parked> {
        lock(&self.parked).values().cloned().collect()
    }
}
