//! The narrow capabilities the services need, as traits. Services depend on these, never on
//! a backend; `adapters::embedded` (and later DynamoDB/Kinesis) implement them.
//!
//! Errors are typed so a service can tell a lost race (`Conflict`, retry after reloading)
//! from a full backend (`Throttled`/`Unavailable`, retry later) and from bad data.

use std::future::Future;

use crate::domain::{
    AccountId, AccountState, Event, Refusal, Segment, Snapshot, Timestamp, TxnId, TxnOutcome,
};

/// Accounts [`EventStore::load_many`] reads concurrently by default.
pub const LOADS_IN_FLIGHT_MAX: usize = 16;

/// Why a backend call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    #[error("throttled by the backend; retry later")]
    Throttled,
    #[error("backend unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    /// Stored by another version of tally, in a layout this one does not read (nothing is
    /// wrong with the data).
    #[error("{0}")]
    Incompatible(String),
}

/// One account's writes in one `append` call: its pages, in order, the first written only if
/// the account is still at `expected_version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    pub account: AccountId,
    pub expected_version: u64,
    pub pages: Vec<PageWrite>,
    /// Names the caller's attempt (random, nonzero, the same for every retry of the same
    /// decisions): a page already written by this attempt succeeds again; a byte-identical
    /// page from another attempt (two callers deciding the same thing in the same
    /// millisecond) is a conflict, so only one of them is told it booked.
    pub attempt: u64,
    /// When the caller decided these pages (ledger time; every retry of the attempt carries
    /// the same). With an operator's marker TTL, a page of refusals only counts its markers'
    /// lifetime from it, so a retry is the very request DynamoDB may have committed already.
    pub decided_at: Timestamp,
}

/// One conditional write of an account: consecutive events (versions continuing the previous
/// page, or `expected_version + 1` for the first) and the refusals decided among them, at
/// most [`PAGE_EVENTS_MAX`](crate::domain::limits::PAGE_EVENTS_MAX) entries in all.
///
/// Written all or nothing, and only if:
/// - the page has events and the account's newest version is still the one before its first
///   event (a page of refusals only carries no version condition: its refusals were decided
///   on state that the call's earlier pages, or the store, already hold);
/// - none of its txn ids has an outcome yet;
/// - every reversal's target is booked and not yet reversed (after earlier entries).
///
/// Recording follows [`crate::domain::record`]: each event's outcome, its target's
/// `reversed` flag, each refusal's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PageWrite {
    pub events: Vec<Event>,
    pub refusals: Vec<Refusal>,
}

impl PageWrite {
    /// The shape every store checks before any condition: events with consecutive versions
    /// continuing `expected`, and at most `PAGE_EVENTS_MAX` entries. A page that fails it is a
    /// caller's bug, refused as corrupt rather than written as a gap.
    pub fn check_shape(&self, expected: u64) -> Result<(), StoreError> {
        use crate::domain::limits::PAGE_EVENTS_MAX;
        if self.len() > PAGE_EVENTS_MAX {
            return Err(StoreError::Corrupt(format!(
                "a page of {} entries exceeds {PAGE_EVENTS_MAX}",
                self.len()
            )));
        }
        let mut next = expected.checked_add(1);
        for e in &self.events {
            if Some(e.version) != next {
                return Err(StoreError::Corrupt(format!(
                    "event version {} does not continue version {}",
                    e.version,
                    next.map_or(u64::MAX, |n| n - 1)
                )));
            }
            next = e.version.checked_add(1);
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.events.len() + self.refusals.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.refusals.is_empty()
    }
}

/// What [`EventStore::load_many`] reads for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    pub account: AccountId,
    pub txns: Vec<TxnId>,
    /// A tip the caller already holds (what its own last append left): a backend may hand
    /// it back instead of reading the tip again. Safe because every page with events is
    /// written only at the version it was decided on, so a stale tip ends in a `Conflict`.
    pub known: Option<AccountState>,
}

/// What [`EventStore::load_many`] found for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    pub tip: AccountState,
    /// The tip was read from the store by this call (`false`: it is the `known` one).
    pub fresh: bool,
    /// The outcomes of the load's `txns`, in order, read by this call.
    pub outcomes: Vec<Option<TxnOutcome>>,
}

/// Why a page was not written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("account moved on to version {current}")]
    Conflict { current: u64 },
    #[error("transaction {0} already has an outcome")]
    DuplicateTxn(TxnId),
    #[error("transaction {0} is no longer a booked, unreversed transaction")]
    TargetReversed(TxnId),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one account's [`Append`] did: its first `pages` pages are written (durably), and
/// `error` says why the next one was not. Pages after a failed page are never written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub pages: usize,
    pub error: Option<AppendError>,
}

impl Appended {
    /// Nothing written, for this reason.
    pub fn failed(error: AppendError) -> Appended {
        Appended {
            pages: 0,
            error: Some(error),
        }
    }
}

/// The source of truth: pages of events, and every txn id's outcome.
///
/// # Contract (both backends; tested generically in `tests/it/store_contract.rs`)
/// - **Per account, in order, all-or-nothing from the first failure.** An account's pages in
///   one call commit in order; after the first page that fails, none of its later pages are
///   written. [`append`](Self::append) returns exactly one [`Appended`] per [`Append`], in
///   order, whatever happens (a backend failure is reported on every account it touched).
///   An account may appear in more than one [`Append`] of a call: they take effect in call
///   order, each as if it were a call of its own.
/// - **Idempotent retry.** A page already written by the same attempt (same account, same
///   entries, same `recorded_at`, same [`Append::attempt`]) succeeds again without writing: a
///   caller that saw a timeout after the store committed retries the same bytes and learns it
///   was written. (DynamoDB: a `ClientRequestToken` derived from the pages and the attempt
///   when the retry travels in the same transaction, else the stored page or refusal
///   markers compared with ours, attempt included.)
/// - **One outcome per txn id, forever**: conditions above; outcomes never change except a
///   booked transaction's `reversed` flag going from false to true once.
pub trait EventStore: Send + Sync + 'static {
    /// The write model: version and balance of the newest event (default for a new account).
    fn tip(
        &self,
        account: &AccountId,
    ) -> impl Future<Output = Result<AccountState, StoreError>> + Send;

    /// Everything `decide` needs for a run of commands, read consistently: the tip and the
    /// outcomes of `txns` (in order; `None` where the id has none).
    fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> impl Future<Output = Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError>> + Send;

    /// [`load`](Self::load) for many accounts at once: one result per [`Load`], in order.
    /// Outcomes are always read; a tip only where `known` is absent (a backend may read it
    /// anyway and say so with `fresh`). Backends that read many accounts in one request do
    /// (DynamoDB: one `BatchGetItem` for the markers of up to 100 ids across accounts).
    fn load_many(
        &self,
        loads: Vec<Load>,
    ) -> impl Future<Output = Vec<Result<Loaded, StoreError>>> + Send {
        use futures_util::stream::{self, StreamExt};
        async move {
            stream::iter(loads)
                .map(|l| async move {
                    let (tip, outcomes) = self.load(&l.account, &l.txns).await?;
                    Ok(Loaded {
                        tip,
                        fresh: true,
                        outcomes,
                    })
                })
                .buffered(LOADS_IN_FLIGHT_MAX)
                .collect()
                .await
        }
    }

    /// The outcome of `txn` on `account`, if it has one.
    fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> impl Future<Output = Result<Option<TxnOutcome>, StoreError>> + Send;

    /// Writes each account's pages under the contract above. Durable when this returns.
    fn append(&self, appends: Vec<Append>) -> impl Future<Output = Vec<Appended>> + Send;

    /// Events `from..=to` of `account` in version order (fewer if the account is shorter).
    fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> impl Future<Output = Result<Vec<Event>, StoreError>> + Send;

    /// Summaries of the account's complete segments with index `from` or more, in index
    /// order, at most `limit` (see `domain::segment`). A summary may be missing (a backend
    /// that writes them after the events, best effort): callers read the events instead.
    fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Segment>, StoreError>> + Send;

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

/// An account whose events cannot be folded (DESIGN.md step 3): set aside so it never
/// blocks its shard, its snapshot left where it was, until a redrive projects it from the
/// event store (`tally parked redrive`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    pub account: String,
    /// The first version that could not be folded.
    pub version: u64,
    /// The stream record the projector met it in (shard, sequence number); empty when a
    /// catch-up or the backstop parked it.
    pub shard: String,
    pub sequence_number: String,
    pub error: String,
}

/// Where what cannot be projected goes, so it never blocks its shard: undecodable records
/// (kept whole) and parked accounts.
pub trait Quarantine: Send + Sync + 'static {
    fn put(&self, record: Quarantined) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Parks an account unless it is parked already: the first record is kept. `Ok(true)`:
    /// parked by this call.
    fn park(&self, parked: Parked) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// The account's park record, if it is parked (read consistently: an unpark is seen
    /// by the next batch).
    fn parked(
        &self,
        account: &str,
    ) -> impl Future<Output = Result<Option<Parked>, StoreError>> + Send;
}

/// An operator's access to the quarantine: every record kept (whole, whatever its size) and
/// its removal once a redrive has projected it (`service::quarantine`).
pub trait QuarantineAdmin: Quarantine {
    /// Every quarantined record, bytes included, in (shard, sequence number) order.
    fn list(&self) -> impl Future<Output = Result<Vec<Quarantined>, StoreError>> + Send;

    /// Forgets one record (nothing if it is not there).
    fn remove(
        &self,
        shard: &str,
        sequence_number: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Every parked account, in account order.
    fn parked_list(&self) -> impl Future<Output = Result<Vec<Parked>, StoreError>> + Send;

    /// Unparks an account (nothing if it is not parked).
    fn unpark(&self, account: &str) -> impl Future<Output = Result<(), StoreError>> + Send;
}
