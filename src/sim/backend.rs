//! The stores a simulation runs on: the in-memory models of DynamoDB's tables
//! ([`model`](super::model)), or the real embedded store (redb, in memory) appending on
//! the caller's thread rather than its writer thread, so the run stays replayable. Either way the services see ports only.
//!
//! The simulator's port layer. Must never: add behaviour to a store (faults live in
//! `faults.rs`).

use crate::adapters::embedded::EmbeddedStore;
use crate::domain::{AccountId, AccountState, Event, Segment, Snapshot, TxnId, TxnOutcome};
use crate::ports::{
    Append, Appended, EventStore, Parked, Quarantine, Quarantined, SnapshotError, SnapshotPut,
    SnapshotStore, StoreError,
};
use crate::sim::model::{MemEvents, MemQuarantine, MemSnapshots};

/// Which stores a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// The in-memory models of the DynamoDB tables (the contracts of DESIGN.md).
    Model,
    /// The real embedded store on redb's in-memory backend.
    Embedded,
}

/// A run's stores.
pub trait Backend: Send + Sync + 'static {
    type Events: EventStore + Clone;
    type Snapshots: SnapshotStore + Clone;
    type Quarantine: Quarantine + Clone;
    fn events(&self) -> Self::Events;
    fn snapshots(&self) -> Self::Snapshots;
    fn quarantine(&self) -> Self::Quarantine;
    /// Every quarantined record, for the checker.
    fn quarantined(&self) -> Vec<Quarantined>;
    /// Every parked account, for the checker (a workload's events always fold: any park
    /// is a violation).
    fn parked(&self) -> Vec<Parked>;
}

/// The DynamoDB models.
#[derive(Clone, Default)]
pub struct Models {
    pub events: MemEvents,
    pub snapshots: MemSnapshots,
    pub quarantine: MemQuarantine,
}

impl Backend for Models {
    type Events = MemEvents;
    type Snapshots = MemSnapshots;
    type Quarantine = MemQuarantine;
    fn events(&self) -> MemEvents {
        self.events.clone()
    }
    fn snapshots(&self) -> MemSnapshots {
        self.snapshots.clone()
    }
    fn quarantine(&self) -> MemQuarantine {
        self.quarantine.clone()
    }
    fn quarantined(&self) -> Vec<Quarantined> {
        self.quarantine.dump()
    }
    fn parked(&self) -> Vec<Parked> {
        self.quarantine.parked_dump()
    }
}

/// The real embedded store, every call on the calling thread.
#[derive(Clone)]
pub struct Embedded(pub EmbeddedStore);

impl Embedded {
    pub fn in_memory() -> Result<Embedded, StoreError> {
        EmbeddedStore::in_memory().map(Embedded)
    }
}

impl Backend for Embedded {
    type Events = Embedded;
    type Snapshots = Embedded;
    type Quarantine = Embedded;
    fn events(&self) -> Embedded {
        self.clone()
    }
    fn snapshots(&self) -> Embedded {
        self.clone()
    }
    fn quarantine(&self) -> Embedded {
        self.clone()
    }
    fn quarantined(&self) -> Vec<Quarantined> {
        self.0.quarantined().unwrap_or_default()
    }
    fn parked(&self) -> Vec<Parked> {
        self.0.parked_accounts().unwrap_or_default()
    }
}

impl EventStore for Embedded {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        self.0.tip(account).await
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        self.0.load(account, txns).await
    }

    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        self.0.txn(account, txn).await
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        if appends.is_empty() {
            return Vec::new();
        }
        // On this thread, not the store's writer thread: a run must not depend on timing.
        self.0.append_now(&appends)
    }

    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Segment>, StoreError> {
        self.0.segments(account, from, limit).await
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.0.read(account, from, to).await
    }

    async fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, u64)>, StoreError> {
        self.0.accounts(after, limit).await
    }
}

impl SnapshotStore for Embedded {
    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        self.0.get_many(accounts).await
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        self.0.put_many(puts).await
    }
}

impl Quarantine for Embedded {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        Quarantine::put(&self.0, record).await
    }

    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        self.0.park(parked).await
    }

    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        self.0.parked(account).await
    }
}
