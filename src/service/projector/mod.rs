//! The projector (DESIGN.md step 3): a [`RecordBatch`] in (records: shard, sequence number,
//! bytes), the indices of the records to retry out ([`Projection`]). It knows no transport:
//! the Lambda entry point (`crate::lambda`), the embedded stream and the Kinesis poller (both
//! through [`crate::service::mapping`]) fill the batch and act on the answer.
//!
//! The pure fold lives in [`fold`]; this module does the I/O around it: quarantine poison,
//! take each account's starting snapshot from the [`SnapshotCache`] or the store, fill gaps
//! from the event store, write each touched account once with a condition on the version it
//! started from, resync on conflict from the item the store returns.
//!
//! # Contract
//! - **Every group ends in a write or a failure report.** A group (the events of one
//!   account in a batch) starts out failed and only a stored snapshot covering its events
//!   (written now, or found already there) clears it. A failed group is reported at its
//!   first record, so the mapping retries from there; other accounts go on.
//! - **The cache never decides what is projected.** A batch reads it once at its start and
//!   updates it once at its end; eviction happens only then, so it cannot touch an account
//!   of the batch in flight. The bound holds between batches.
//! - **An account that cannot be folded is parked, not retried forever** ([`park`]): its
//!   group clears as [`Fate::Parked`] and its later groups are skipped until a redrive.
//!   Only a deterministic fault parks; a store that cannot be read is a failure to retry.
//! - **Metrics add up.** `events_projected` counts the versions each successful write (or
//!   catch-up) moved a snapshot forward by; once the stream has drained, every account's
//!   snapshot is at its newest version unless it is parked.
//! - No wall clock and no randomness: pauses go through `tokio::time` and their jitter is a
//!   hash of the batch, so a simulator with paused time replays a run exactly.

pub mod cache;
pub mod fold;
pub mod park;
mod write;

pub use park::{CATCH_UP_READ_EVENTS, CaughtUp, PARKED_KNOWN_MAX, Redriven};
use park::{FoldFailure, failing_version, met_by_catch_up};

use write::Pending;

pub use cache::{Hint, SnapshotCache};
pub use fold::*;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::codec::batch::RecordBatch;
use crate::domain::limits::APPEND_RETRIES_MAX;
use crate::domain::{AccountId, Effect, Snapshot};
use crate::ports::{
    EventStore, Quarantine, Quarantined, SnapshotError, SnapshotPut, SnapshotStore, StoreError,
};
use crate::service::metrics::Metrics;

/// Rounds of conditional snapshot writes per batch (conflicts resynced, throttled writes
/// retried after a pause) before an account is reported failed.
pub const SNAPSHOT_RETRIES_MAX: u32 = 4;
/// Default snapshot cache size (entries kept between batches).
pub const CACHE_ENTRIES_DEFAULT: usize = 100_000;

/// What became of a batch: the records to retry, ascending. Empty: the batch is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Projection {
    pub failed: Vec<usize>,
}

impl Projection {
    /// Where a mapping resumes: the lowest failed record, as Lambda does.
    pub fn lowest_failure(&self) -> Option<usize> {
        self.failed.first().copied()
    }
}

pub struct Projector<E, S, Q> {
    events: E,
    snapshots: S,
    quarantine: Q,
    cache: std::sync::Mutex<SnapshotCache>,
    metrics: Arc<Metrics>,
    /// Records a mapping gave up on so far: their events may be unprojected until a
    /// catch-up runs ([`Projector::catch_up_if_behind`]).
    gave_up: AtomicU64,
    /// The count of give-ups the last successful catch-up started after: the projector is
    /// behind while `gave_up` is past it (also while a catch-up runs, or after one failed
    /// or was dropped half way).
    caught_up: AtomicU64,
    catching_up: tokio::sync::Mutex<()>,
    /// Accounts this projector saw parked (see [`park`]).
    parked: std::sync::Mutex<std::collections::HashSet<String>>,
}

/// What one group came to. Groups start [`Fate::Failed`]; see the module contract.
#[derive(Debug, Clone, Copy)]
enum Fate {
    Failed,
    /// The store holds this snapshot, which covers every event of the group.
    Stored(Snapshot),
    /// The account is parked: its events wait for a redrive, and its shard goes on.
    Parked,
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> Projector<E, S, Q> {
    pub fn new(
        events: E,
        snapshots: S,
        quarantine: Q,
        cache_entries: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Projector {
            events,
            snapshots,
            quarantine,
            cache: std::sync::Mutex::new(SnapshotCache::new(cache_entries)),
            metrics,
            gave_up: AtomicU64::new(0),
            caught_up: AtomicU64::new(0),
            catching_up: tokio::sync::Mutex::new(()),
            parked: std::sync::Mutex::new(std::collections::HashSet::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, SnapshotCache> {
        // The cache is a hint: a panic mid-update leaves at worst a stale entry.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Projects one batch. Never fails as a whole: what could not be done is in `failed`.
    pub async fn project(&self, batch: &RecordBatch) -> Projection {
        let grouped = group(batch);
        let mut failed = self.quarantine_poison(batch, &grouped.poison).await;
        let mut fates = vec![Fate::Failed; grouped.groups.len()];
        // First: an account seen unparked is dropped from the cache and loaded afresh.
        let skip = self.skip_parked(&grouped, &mut fates).await;
        let (starts, hints) = self.starts(&grouped).await;
        let mut pending: Vec<Pending> = Vec::with_capacity(grouped.groups.len());
        let mut duplicates = 0u64;
        let dropped = self.mutation_dropped();
        for (g, group) in grouped.groups.iter().enumerate() {
            let Some(start) = starts[g].filter(|_| g < dropped && !skip[g]) else {
                continue;
            };
            let effects = grouped.effects_of(group);
            let folded = fold_group(start, effects);
            duplicates += u64::from(folded.duplicates);
            let snapshot = match folded.stop {
                None => folded.snapshot,
                Some(_) => match self.fold_with_fill(group.account, start, effects).await {
                    Ok(snapshot) => snapshot,
                    Err(failure) => {
                        self.fold_failed(batch, group, g, failure, &mut fates).await;
                        continue;
                    }
                },
            };
            if snapshot.version > start.version {
                pending.push(Pending {
                    group: g,
                    expected: start.version,
                    snapshot,
                });
            } else {
                fates[g] = Fate::Stored(start);
            }
        }
        Metrics::add(&self.metrics.duplicates_skipped, duplicates);
        self.write(pending, &grouped, batch, &mut fates).await;
        {
            let mut cache = self.cache();
            for (g, (group, fate)) in grouped.groups.iter().zip(&fates).enumerate() {
                match fate {
                    Fate::Stored(snapshot) => {
                        cache.commit_hinted(hints[g], group.account, *snapshot)
                    }
                    Fate::Parked => {}
                    Fate::Failed if g >= dropped => {} // only under the mutation below
                    Fate::Failed => failed.push(group.first_record),
                }
            }
            cache.trim();
        }
        Metrics::add(&self.metrics.batches_projected, 1);
        failed.sort_unstable();
        failed.dedup();
        Metrics::add(&self.metrics.accounts_failed, failed.len() as u64);
        Projection { failed }
    }

    /// The first group index a batch silently drops: none (`usize::MAX`), except under
    /// `mutation-eviction`, which re-introduces issue 8 defect 2 for the simulator to
    /// catch (the groups of a batch beyond the cache's size neither written nor reported).
    fn mutation_dropped(&self) -> usize {
        #[cfg(feature = "mutation-eviction")]
        return self.cache().entries_max();
        #[cfg(not(feature = "mutation-eviction"))]
        usize::MAX
    }

    /// Quarantines undecodable records; returns those the quarantine could not take.
    async fn quarantine_poison(&self, batch: &RecordBatch, poison: &[Poison]) -> Vec<usize> {
        let mut failed = Vec::new();
        for p in poison {
            let record = Quarantined {
                shard: batch.shard(p.record).to_owned(),
                sequence_number: batch.sequence_number(p.record).to_owned(),
                data: batch.data(p.record).map(<[u8]>::to_vec).unwrap_or_default(),
                error: p.error.to_string(),
            };
            tracing::warn!(shard = %record.shard, seq = %record.sequence_number, error = %record.error, "quarantining record");
            match self.quarantine.put(record).await {
                Ok(()) => Metrics::add(&self.metrics.records_quarantined, 1),
                Err(e) => {
                    tracing::error!(error = %e, "quarantine unavailable; reporting the record as failed");
                    failed.push(p.record);
                }
            }
        }
        failed
    }

    /// Each group's starting snapshot: cached, or loaded (one read for all misses). `None`
    /// where it could not be loaded: that group fails, the others go on. Beside it, where
    /// the cache keeps the group's entry, for the batch's commit.
    async fn starts(&self, grouped: &Grouped<'_>) -> (Vec<Option<Snapshot>>, Vec<Option<Hint>>) {
        let mut starts = Vec::with_capacity(grouped.groups.len());
        let mut hints = Vec::with_capacity(grouped.groups.len());
        let mut missing: Vec<usize> = Vec::new();
        {
            let mut cache = self.cache();
            cache.begin();
            for (g, group) in grouped.groups.iter().enumerate() {
                let (start, hint) = cache.lookup(group.account).unzip();
                if start.is_none() {
                    missing.push(g);
                }
                starts.push(start);
                hints.push(hint);
            }
        }
        if missing.is_empty() {
            return (starts, hints);
        }
        let accounts = missing
            .iter()
            .map(|&g| grouped.groups[g].account.to_owned())
            .collect();
        match self.snapshots.get_many(accounts).await {
            Ok(loaded) if loaded.len() == missing.len() => {
                for (&g, snapshot) in missing.iter().zip(loaded) {
                    starts[g] = Some(snapshot.unwrap_or_default());
                }
            }
            Ok(loaded) => tracing::error!(
                asked = missing.len(),
                got = loaded.len(),
                "snapshot store answered a different number of items; failing those accounts"
            ),
            Err(e) => {
                tracing::error!(error = %e, accounts = missing.len(), "snapshot store unavailable; failing the accounts not cached")
            }
        }
        (starts, hints)
    }

    /// Folds `effects` onto `start`, filling every gap from the event store.
    async fn fold_with_fill(
        &self,
        account: &str,
        start: Snapshot,
        effects: &[Effect],
    ) -> Result<Snapshot, FoldFailure> {
        let mut snapshot = start;
        let mut rest = effects;
        loop {
            let fold = fold_group(snapshot, rest);
            snapshot = fold.snapshot;
            match fold.stop {
                None => return Ok(snapshot),
                Some(Stop::Fault { error, at }) => {
                    return Err(FoldFailure::Unfoldable {
                        version: failing_version(rest, at, snapshot),
                        error: error.to_string(),
                    });
                }
                Some(Stop::Gap {
                    expected,
                    found,
                    at,
                }) => {
                    let id = AccountId::new(account).map_err(|e| FoldFailure::Unfoldable {
                        version: expected,
                        error: e.to_string(),
                    })?;
                    snapshot = self.fold_from_store(&id, snapshot, found - 1).await?;
                    Metrics::add(&self.metrics.gaps_filled, 1);
                    rest = &rest[at..];
                }
            }
        }
    }

    /// Called by a mapping that gave up on a record: its events stay unprojected until a
    /// catch-up from the event store ([`Projector::catch_up_if_behind`]).
    pub fn gave_up(&self, batch: &RecordBatch, record: usize) {
        tracing::error!(
            shard = batch.shard(record),
            seq = batch.sequence_number(record),
            "mapping gave up on a record; its accounts wait for a catch-up"
        );
        Metrics::add(&self.metrics.records_given_up, 1);
        self.gave_up.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether a give-up left events that only a catch-up will project.
    pub fn is_behind(&self) -> bool {
        self.gave_up.load(Ordering::Acquire) > self.caught_up.load(Ordering::Acquire)
    }

    /// Runs a catch-up if a mapping gave up on a record since the last one started. The
    /// projector counts as behind until one succeeds: while it runs (so a drain waits for
    /// it), and after a failure (so the next call tries again).
    pub async fn catch_up_if_behind(&self) -> Result<Option<CatchUp>, StoreError> {
        let gave_up = self.gave_up.load(Ordering::Acquire);
        if gave_up <= self.caught_up.load(Ordering::Acquire) {
            return Ok(None);
        }
        // A give-up during the run counts past `gave_up`, so it is caught up next time.
        let report = self.catch_up().await?;
        self.caught_up.fetch_max(gave_up, Ordering::AcqRel);
        Ok(Some(report))
    }

    /// Brings every snapshot up to its account's newest stored version. Run at start and
    /// after give-ups: this is what makes a crash between append and publish, or a record
    /// the mapping dropped, lose nothing.
    pub async fn catch_up(&self) -> Result<CatchUp, StoreError> {
        let _one_at_a_time = self.catching_up.lock().await;
        let mut report = CatchUp::default();
        let mut after: Option<AccountId> = None;
        loop {
            let accounts =
                transient_retried(|| self.events.accounts(after.as_ref(), 1_000)).await?;
            let Some((last, _)) = accounts.last() else {
                break;
            };
            after = Some(last.clone());
            let names: Vec<String> = accounts.iter().map(|(a, _)| a.to_string()).collect();
            let snapshots = transient_retried(|| self.snapshots.get_many(names.clone())).await?;
            for ((account, newest), snapshot) in accounts.iter().zip(snapshots) {
                report.accounts += 1;
                let start = snapshot.unwrap_or_default();
                if start.version < *newest {
                    let caught =
                        transient_retried(|| self.catch_up_account(account, start, *newest));
                    match caught.await? {
                        CaughtUp::Written | CaughtUp::Moved => report.caught_up += 1,
                        CaughtUp::Parked => report.parked += 1,
                    }
                } else if start.version > *newest {
                    // Ahead of the listing: events appended and projected since it was
                    // made, or an altered item that would swallow the next events as
                    // duplicates. The tip, read after the snapshot, tells them apart.
                    let tip = transient_retried(|| self.events.tip(account))
                        .await?
                        .version;
                    if start.version > tip {
                        let error = format!(
                            "the snapshot is at version {}, ahead of the newest event {tip}",
                            start.version
                        );
                        self.park(met_by_catch_up(account.as_str(), tip + 1, error))
                            .await?;
                        report.parked += 1;
                    }
                }
            }
        }
        Ok(report)
    }

    /// Brings one account's snapshot from `start` (what the store holds) up to `newest`
    /// from the event store (in bounded reads), with the same conditional put as a batch:
    /// the catch-up, the AWS backstop (`service::backstop`) and the redrive of a parked
    /// account share this one fold path. Events that do not fold park the account.
    pub async fn catch_up_account(
        &self,
        account: &AccountId,
        start: Snapshot,
        newest: u64,
    ) -> Result<CaughtUp, StoreError> {
        if start.version >= newest {
            return Ok(CaughtUp::Moved);
        }
        // A parked account waits for its redrive: the backstop and a catch-up must not move
        // it behind the operator's back (one read, for lagging accounts only).
        if self.quarantine.parked(account.as_str()).await?.is_some() {
            return Ok(CaughtUp::Parked);
        }
        match self.fold_from_store(account, start, newest).await {
            Ok(snapshot) => self.put_caught_up(account, start, snapshot).await,
            Err(FoldFailure::Store(e)) => Err(e),
            Err(FoldFailure::Unfoldable { version, error }) => {
                self.park(met_by_catch_up(account.as_str(), version, error))
                    .await?;
                Ok(CaughtUp::Parked)
            }
        }
    }

    /// The conditional put of a catch-up: `Written`, or `Moved` if the stored snapshot is
    /// no longer `start` (someone else projected; the caller may look again).
    async fn put_caught_up(
        &self,
        account: &AccountId,
        start: Snapshot,
        snapshot: Snapshot,
    ) -> Result<CaughtUp, StoreError> {
        let put = put(account.as_str(), start.version, snapshot);
        match self.snapshots.put_many(vec![put]).await.pop() {
            Some(Ok(())) => {
                Metrics::add(&self.metrics.snapshots_written, 1);
                Metrics::add(
                    &self.metrics.events_projected,
                    snapshot.version.saturating_sub(start.version),
                );
                self.cache().commit(account.as_str(), snapshot);
                Ok(CaughtUp::Written)
            }
            // Someone projected it meanwhile; the cache learns the stored item next batch.
            Some(Err(SnapshotError::Conflict { .. })) => Ok(CaughtUp::Moved),
            Some(Err(SnapshotError::Store(e))) => Err(e),
            None => Err(StoreError::Unavailable(
                "snapshot store answered no result".into(),
            )),
        }
    }
}

fn put(account: &str, expected_version: u64, snapshot: Snapshot) -> SnapshotPut {
    SnapshotPut {
        account: account.to_owned(),
        expected_version,
        snapshot,
    }
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    pub accounts: u64,
    pub caught_up: u64,
    /// Accounts whose events do not fold: parked (now, or already).
    pub parked: u64,
}

/// `call`, made again after a jittered pause while it fails transiently (throttled,
/// unavailable), at most [`APPEND_RETRIES_MAX`] more times: one throttled read must not
/// throw away a catch-up's progress through thousands of accounts, which under sustained
/// throttling never finished (the simulator's seeds 2674 and 3192).
async fn transient_retried<T, F, Fut>(mut call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    let mut attempt = 0;
    loop {
        match call().await {
            Err(e) if crate::service::command::transient(&e) && attempt < APPEND_RETRIES_MAX => {
                attempt += 1;
                tokio::time::sleep(crate::service::command::retry_delay(attempt)).await;
            }
            done => return done,
        }
    }
}
