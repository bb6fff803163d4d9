//! The projector (DESIGN.md step 3) as the Lambda runs it: `KinesisEvent` in,
//! `KinesisEventResponse` out. The pure fold lives in [`fold`]; this module does the I/O
//! the plan asks for: quarantine poison, load missing snapshots, fill gaps from the event
//! store, write each touched account once, resync on conflict, and report the accounts
//! that still fail at their first record's sequence number.

pub mod fold;

pub use fold::*;

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::{KinesisBatchItemFailure, KinesisEventResponse};
use tokio::sync::Mutex;

use crate::codec::kinesis::{Arena, KinesisBatch};
use crate::domain::{AccountId, Effect, Snapshot};
use crate::ports::{
    EventStore, Quarantine, Quarantined, SnapshotError, SnapshotPut, SnapshotStore, StoreError,
};
use crate::service::command::{retry_delay, transient};
use crate::service::metrics::Metrics;

/// Rounds of conditional snapshot writes per batch (conflicts resynced, throttled writes
/// retried after a jittered pause) before an account is reported failed.
pub const SNAPSHOT_RETRIES_MAX: u32 = 4;
/// Default snapshot cache size (entries).
pub const CACHE_ENTRIES_DEFAULT: usize = 100_000;

pub struct Projector<E, S, Q> {
    events: E,
    snapshots: S,
    quarantine: Q,
    cache: Mutex<SnapshotCache>,
    metrics: Arc<Metrics>,
}

/// Where each record of a batch came from, for quarantine and failure reports.
struct Origin {
    sequence_number: String,
    shard: String,
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
            cache: Mutex::new(SnapshotCache::new(cache_entries)),
            metrics,
        }
    }

    /// The Lambda handler's body.
    pub async fn handle(&self, event: KinesisEvent) -> KinesisEventResponse {
        let mut arena = Arena::default();
        let mut origins = Vec::with_capacity(event.records.len());
        for r in &event.records {
            arena.push_bytes(&r.kinesis.data);
            origins.push(Origin {
                sequence_number: r.kinesis.sequence_number.clone(),
                shard: shard_of_event_id(r.event_id.as_deref()),
            });
        }
        self.project(&arena, &origins).await
    }

    /// The same, straight from the JSON Lambda delivers (the fast path).
    pub async fn handle_json(
        &self,
        json: &[u8],
    ) -> Result<KinesisEventResponse, serde_json::Error> {
        let batch = KinesisBatch::parse(json)?;
        let mut arena = Arena::default();
        arena.fill(&batch);
        let origins: Vec<Origin> = batch
            .records
            .iter()
            .map(|r| Origin {
                sequence_number: r.kinesis.sequence_number.to_string(),
                shard: r.shard_id().unwrap_or("unknown").to_owned(),
            })
            .collect();
        Ok(self.project(&arena, &origins).await)
    }

    async fn project(&self, arena: &Arena, origins: &[Origin]) -> KinesisEventResponse {
        let grouped = group(arena);
        let mut failed: Vec<usize> = Vec::new();
        for poison in &grouped.poison {
            let origin = &origins[poison.record];
            let record = Quarantined {
                shard: origin.shard.clone(),
                sequence_number: origin.sequence_number.clone(),
                data: arena
                    .record(poison.record)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
                error: poison.error.to_string(),
            };
            tracing::warn!(shard = %record.shard, seq = %record.sequence_number, error = %record.error, "quarantining record");
            match self.quarantine.put(record).await {
                Ok(()) => Metrics::add(&self.metrics.records_quarantined, 1),
                Err(e) => {
                    tracing::error!(error = %e, "quarantine unavailable; reporting the record as failed");
                    failed.push(poison.record);
                }
            }
        }
        let mut cache = self.cache.lock().await;
        if let Err(e) = self.load_missing(&grouped, &mut cache).await {
            tracing::error!(error = %e, "snapshot store unavailable; failing the whole batch");
            failed.extend(grouped.groups.iter().map(|g| g.first_record));
            return self.respond(&failed, origins);
        }
        let plan = plan(&grouped, &cache);
        Metrics::add(&self.metrics.duplicates_skipped, plan.duplicates);
        let mut puts: Vec<(SnapshotPut, usize)> = Vec::new();
        for w in &plan.writes {
            if !plan.pending.iter().any(|p| p.account == w.account) {
                puts.push((
                    SnapshotPut {
                        account: w.account.to_owned(),
                        expected_version: w.expected_version,
                        snapshot: w.snapshot,
                    },
                    w.first_record,
                ));
            }
        }
        for p in &plan.pending {
            let group = grouped
                .groups
                .iter()
                .find(|g| g.account == p.account)
                .expect("pending comes from a group");
            let start = cache.get(p.account).unwrap_or_default();
            match self
                .fold_with_fill(p.account, start, grouped.effects_of(group))
                .await
            {
                Ok(snapshot) if snapshot.version > start.version => puts.push((
                    SnapshotPut {
                        account: p.account.to_owned(),
                        expected_version: start.version,
                        snapshot,
                    },
                    p.first_record,
                )),
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(account = p.account, error = %e, "cannot fold account; reporting failure");
                    failed.push(p.first_record);
                }
            }
        }
        failed.extend(self.write(puts, &grouped, &mut cache).await);
        Metrics::add(&self.metrics.batches_projected, 1);
        self.respond(&failed, origins)
    }

    async fn load_missing(
        &self,
        grouped: &Grouped<'_>,
        cache: &mut SnapshotCache,
    ) -> Result<(), StoreError> {
        let missing: Vec<String> = grouped
            .groups
            .iter()
            .filter(|g| cache.get(g.account).is_none())
            .map(|g| g.account.to_owned())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let loaded = self.snapshots.get_many(missing.clone()).await?;
        for (account, snapshot) in missing.iter().zip(loaded) {
            cache.commit(account, snapshot.unwrap_or_default());
        }
        Ok(())
    }

    /// Folds `effects` onto `start`, filling every gap from the event store.
    async fn fold_with_fill(
        &self,
        account: &str,
        start: Snapshot,
        effects: &[Effect],
    ) -> Result<Snapshot, FoldFailure> {
        let id = AccountId::new(account).map_err(|e| FoldFailure(e.to_string()))?;
        let mut snapshot = start;
        let mut rest = effects;
        loop {
            let fold = fold_group(snapshot, rest);
            snapshot = fold.snapshot;
            match fold.stop {
                None => return Ok(snapshot),
                Some(Stop::Fault { error, .. }) => return Err(FoldFailure(error.to_string())),
                Some(Stop::Gap {
                    expected,
                    found,
                    at,
                }) => {
                    let missing = self
                        .events
                        .read(&id, expected, found - 1)
                        .await
                        .map_err(|e| FoldFailure(e.to_string()))?;
                    let fill: Vec<Effect> = missing.iter().filter_map(|e| e.effect()).collect();
                    let filled = fold_group(snapshot, &fill);
                    if filled.stop.is_some() || filled.snapshot.version != found - 1 {
                        return Err(FoldFailure(format!(
                            "event store lacks versions {expected}..{found}"
                        )));
                    }
                    Metrics::add(&self.metrics.gaps_filled, 1);
                    snapshot = filled.snapshot;
                    rest = &rest[at..];
                }
            }
        }
    }

    /// Writes the snapshots; resyncs conflicts from the stored item. Returns the first
    /// records of accounts that still failed.
    async fn write(
        &self,
        mut puts: Vec<(SnapshotPut, usize)>,
        grouped: &Grouped<'_>,
        cache: &mut SnapshotCache,
    ) -> Vec<usize> {
        let mut failed = Vec::new();
        // Set when the last round had a throttled write: only then is a pause worth it
        // (a conflict is resolved from the item the write returned).
        let mut throttled = false;
        for round in 0..SNAPSHOT_RETRIES_MAX {
            if puts.is_empty() {
                break;
            }
            if std::mem::take(&mut throttled) {
                tokio::time::sleep(retry_delay(round)).await;
            }
            let results = self
                .snapshots
                .put_many(puts.iter().map(|(p, _)| p.clone()).collect())
                .await;
            let mut retry = Vec::new();
            for ((put, first), result) in puts.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        Metrics::add(&self.metrics.snapshots_written, 1);
                        Metrics::add(
                            &self.metrics.events_projected,
                            put.snapshot.version - put.expected_version,
                        );
                        cache.commit(&put.account, put.snapshot);
                    }
                    Err(SnapshotError::Conflict { current }) => {
                        Metrics::add(&self.metrics.snapshot_conflicts, 1);
                        let current = current.map_or_else(Snapshot::default, |s| *s);
                        cache.forget(&put.account);
                        cache.commit(&put.account, current);
                        if current.version >= put.snapshot.version {
                            continue; // someone else got there first
                        }
                        let group = grouped.groups.iter().find(|g| g.account == put.account);
                        let effects = group.map(|g| grouped.effects_of(g)).unwrap_or_default();
                        match self.fold_with_fill(&put.account, current, effects).await {
                            Ok(s) if s.version > current.version => retry.push((
                                SnapshotPut {
                                    account: put.account,
                                    expected_version: current.version,
                                    snapshot: s,
                                },
                                first,
                            )),
                            Ok(_) => {}
                            Err(_) => failed.push(first),
                        }
                    }
                    Err(SnapshotError::Store(e)) if transient(&e) => {
                        tracing::warn!(account = %put.account, error = %e, "snapshot write failed; retrying");
                        throttled = true;
                        retry.push((put, first));
                    }
                    Err(SnapshotError::Store(e)) => {
                        tracing::error!(account = %put.account, error = %e, "snapshot write failed");
                        failed.push(first);
                    }
                }
            }
            puts = retry;
        }
        failed.extend(puts.into_iter().map(|(_, first)| first));
        failed
    }

    fn respond(&self, failed: &[usize], origins: &[Origin]) -> KinesisEventResponse {
        Metrics::add(&self.metrics.accounts_failed, failed.len() as u64);
        let mut response = KinesisEventResponse::default();
        let mut records: Vec<usize> = failed.to_vec();
        records.sort_unstable();
        records.dedup();
        response.batch_item_failures = records
            .into_iter()
            .map(|i| {
                let mut f = KinesisBatchItemFailure::default();
                f.item_identifier = Some(origins[i].sequence_number.clone());
                f
            })
            .collect();
        response
    }

    /// Brings every snapshot up to its account's newest stored version. Run at start: this
    /// is what makes a crash between append and publish lose nothing.
    pub async fn catch_up(&self) -> Result<CatchUp, StoreError> {
        let mut report = CatchUp::default();
        let mut after: Option<AccountId> = None;
        loop {
            let accounts = self.events.accounts(after.as_ref(), 1_000).await?;
            let Some((last, _)) = accounts.last() else {
                break;
            };
            after = Some(last.clone());
            let names: Vec<String> = accounts.iter().map(|(a, _)| a.to_string()).collect();
            let snapshots = self.snapshots.get_many(names).await?;
            for ((account, newest), snapshot) in accounts.iter().zip(snapshots) {
                report.accounts += 1;
                let start = snapshot.unwrap_or_default();
                if start.version < *newest {
                    self.catch_up_account(account, start, *newest).await?;
                    report.caught_up += 1;
                }
            }
        }
        self.cache.lock().await.clear();
        Ok(report)
    }
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> Projector<E, S, Q> {
    /// Brings one account's snapshot from `start` (what the store holds) up to `newest`
    /// from the event store, with the same conditional put as a batch: the catch-up at
    /// start and the AWS backstop (`service::backstop`) share this one fold path. `Ok(true)`:
    /// written; `Ok(false)`: the stored snapshot moved away from `start` meanwhile (someone
    /// else projected; the caller may look again). A fold that does not reach `newest` is
    /// `Corrupt`.
    pub async fn catch_up_account(
        &self,
        account: &AccountId,
        start: Snapshot,
        newest: u64,
    ) -> Result<bool, StoreError> {
        let events = self.events.read(account, start.version + 1, newest).await?;
        let fx: Vec<Effect> = events.iter().filter_map(|e| e.effect()).collect();
        let fold = fold_group(start, &fx);
        if fold.stop.is_some() || fold.snapshot.version != newest {
            return Err(StoreError::Corrupt(format!(
                "events of {account} do not fold to version {newest}"
            )));
        }
        let put = SnapshotPut {
            account: account.to_string(),
            expected_version: start.version,
            snapshot: fold.snapshot,
        };
        match self.snapshots.put_many(vec![put]).await.pop() {
            Some(Ok(())) => {
                Metrics::add(&self.metrics.snapshots_written, 1);
                Ok(true)
            }
            Some(Err(SnapshotError::Conflict { .. })) | None => Ok(false),
            Some(Err(SnapshotError::Store(e))) => Err(e),
        }
    }
}

/// Index in `sequence_numbers` of the lowest record a response reports failed: where an
/// event source mapping resumes, as Lambda does.
pub fn lowest_failure(
    response: &KinesisEventResponse,
    sequence_numbers: &[String],
) -> Option<usize> {
    response
        .batch_item_failures
        .iter()
        .filter_map(|f| f.item_identifier.as_deref())
        .filter_map(|seq| sequence_numbers.iter().position(|s| s == seq))
        .min()
}

/// What a catch-up did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CatchUp {
    pub accounts: u64,
    pub caught_up: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct FoldFailure(String);

fn shard_of_event_id(event_id: Option<&str>) -> String {
    event_id
        .and_then(|id| id.split_once(':'))
        .map_or_else(|| "unknown".to_owned(), |(shard, _)| shard.to_owned())
}
