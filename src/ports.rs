//! The narrow capabilities the services need, as traits. Services depend on these, never on
//! a backend; `adapters::embedded` (and later DynamoDB/Kinesis) implement them.
//!
//! Errors are typed so a service can tell a lost race (`Conflict`, retry after reloading)
//! from a full backend (`Throttled`/`Unavailable`, retry later) and from bad data.

use std::future::Future;

use crate::domain::{AccountId, AccountState, Event, Snapshot, TxnId, TxnRecord};

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("throttled by the backend; retry later")]
    Throttled,
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// A transaction id's marker: the version of the event that booked it, and what a reversal
/// needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredTxn {
    pub version: u64,
    pub record: TxnRecord,
}

/// One conditional append: a page of consecutive events for one account, written only if
/// the account's newest version is still `expected_version`, none of the events' txn ids
/// has a marker yet, and every reversal target is still unreversed. All or nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub account: AccountId,
    pub expected_version: u64,
    pub events: Vec<Event>,
}

/// Why one append was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("account moved on to version {current}")]
    Conflict { current: u64 },
    #[error("transaction {0} is already booked")]
    DuplicateTxn(TxnId),
    #[error("transaction {0} was reversed concurrently")]
    TargetReversed(TxnId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The source of truth: pages of events and transaction markers.
pub trait EventStore: Send + Sync + 'static {
    /// The write model: version and balance of the newest event (default for a new account).
    fn tip(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<AccountState, StoreError>> + Send;

    /// Everything `decide` needs for a run of commands, read consistently: the tip and the
    /// markers of `txns` (in order; `None` where not booked).
    fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> impl Future<Output = Result<(AccountState, Vec<Option<StoredTxn>>), StoreError>> + Send;

    /// The marker of `txn` on `account`, if booked.
    fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> impl Future<Output = Result<Option<StoredTxn>, StoreError>> + Send;

    /// Appends many pages, each atomically and independently; one result per append, in
    /// order. Durable when this returns.
    fn append(
        &self,
        appends: Vec<Append>,
    ) -> impl Future<Output = Vec<Result<(), AppendError>>> + Send;

    /// Events `from..=to` of `account` in version order (fewer if the account is shorter).
    fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// Every account with its newest version, in account order, starting after `after`,
    /// at most `limit` of them (for catch-up, replay and verify).
    fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<(AccountId, u64)>, StoreError>> + Send;
}

/// Why a snapshot write was not made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// The stored snapshot is not at the expected version; here it is (no extra read).
    #[error("snapshot conflict")]
    Conflict { current: Option<Box<Snapshot>> },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One conditional snapshot write: store `snapshot` if the stored one is at
/// `expected_version` (0: none stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPut {
    pub account: String,
    pub expected_version: u64,
    pub snapshot: Snapshot,
}

/// The read model: one snapshot per account.
pub trait SnapshotStore: Send + Sync + 'static {
    /// One snapshot: `get_many` of one, unless a backend has something cheaper.
    fn get(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, StoreError>> + Send {
        let accounts = vec![account.to_owned()];
        async move { Ok(self.get_many(accounts).await?.pop().flatten()) }
    }

    /// Loads many snapshots at once, in order (`None`: never written).
    fn get_many(
        &self,
        accounts: Vec<String>,
    ) -> impl Future<Output = Result<Vec<Option<Snapshot>>, StoreError>> + Send;

    /// Many independent conditional writes; one result per put, in order.
    fn put_many(
        &self,
        puts: Vec<SnapshotPut>,
    ) -> impl Future<Output = Vec<Result<(), SnapshotError>>> + Send;
}

/// A record to put on the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub partition_key: String,
    pub data: Vec<u8>,
}

/// The stream producer.
pub trait EventPublisher: Send + Sync + 'static {
    /// Puts every record or fails; partial failures are retried inside.
    fn publish(
        &self,
        records: Vec<OutRecord>,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}

/// A stream record that could not be decoded, kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub shard: String,
    pub sequence_number: String,
    pub data: Vec<u8>,
    pub error: String,
}

/// Where undecodable records go, so they never block their shard.
pub trait Quarantine: Send + Sync + 'static {
    fn put(&self, record: Quarantined) -> impl Future<Output = Result<(), StoreError>> + Send;
}
