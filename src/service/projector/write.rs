//! The projector's snapshot writes: rounds of conditional `put_many`, a conflict resynced
//! from the item the store returns, a throttled write retried after a pause. A group's fate
//! turns to `Stored` only on a successful write, or when the store already holds a snapshot
//! covering the group; whatever is left after the last round stays failed.

use std::time::Duration;

use super::{Fate, Grouped, Projector, SNAPSHOT_RETRIES_MAX, put};
use crate::codec::batch::RecordBatch;
use crate::domain::Snapshot;
use crate::domain::limits::RETRY_DELAY_MS_MAX;
use crate::ports::{EventStore, Quarantine, SnapshotError, SnapshotStore, StoreError};
use crate::service::metrics::Metrics;

fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Throttled | StoreError::Unavailable(_))
}

/// One conditional write still to make: group `group`'s `snapshot`, on `expected`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Pending {
    pub group: usize,
    pub expected: u64,
    pub snapshot: Snapshot,
}

/// The pause before write round `round` after a throttled round: full jitter, uniform in
/// (0, min(`RETRY_DELAY_MS_MAX`, 2^round ms)]. Drawn from [`crate::entropy`], so projectors
/// racing on the same accounts spread out, and a simulation (which seeds it) replays.
fn backoff(round: u32) -> Duration {
    let ceiling_ms = (1u64 << round.min(16)).min(RETRY_DELAY_MS_MAX);
    Duration::from_micros(crate::entropy::next_u64() % (ceiling_ms * 1_000) + 1)
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> Projector<E, S, Q> {
    /// Makes the `pending` writes, recording each group's fate.
    pub(super) async fn write(
        &self,
        mut pending: Vec<Pending>,
        grouped: &Grouped<'_>,
        batch: &RecordBatch,
        fates: &mut [Fate],
    ) {
        let account = |p: &Pending| grouped.groups[p.group].account;
        // Set when the last round had a throttled write: only then is a pause worth it
        // (a conflict is resolved from the item the write returned).
        let mut throttled = false;
        for round in 0..SNAPSHOT_RETRIES_MAX {
            if pending.is_empty() {
                return;
            }
            if std::mem::take(&mut throttled) {
                tokio::time::sleep(backoff(round)).await;
            }
            let puts = pending
                .iter()
                .map(|p| put(account(p), p.expected, p.snapshot))
                .collect();
            let results = self.snapshots.put_many(puts).await;
            if results.len() != pending.len() {
                tracing::error!(
                    puts = pending.len(),
                    results = results.len(),
                    "snapshot store answered a different number of results; failing the round"
                );
                return;
            }
            let mut retry = Vec::new();
            // Counted here and added once per round: an atomic add per account is not free.
            let (mut written, mut projected) = (0, 0);
            for (p, result) in pending.into_iter().zip(results) {
                match result {
                    Ok(()) => {
                        written += 1;
                        projected += p.snapshot.version - p.expected;
                        fates[p.group] = Fate::Stored(p.snapshot);
                    }
                    Err(SnapshotError::Conflict { current }) => {
                        Metrics::add(&self.metrics.snapshot_conflicts, 1);
                        let current = current.map_or_else(Snapshot::default, |s| *s);
                        if let Some(again) =
                            self.resync(p.group, current, grouped, batch, fates).await
                        {
                            retry.push(again);
                        }
                    }
                    Err(SnapshotError::Store(e)) if transient(&e) => {
                        tracing::warn!(account = account(&p), error = %e, "snapshot write failed; retrying");
                        throttled = true;
                        retry.push(p);
                    }
                    Err(SnapshotError::Store(e)) => {
                        tracing::error!(account = account(&p), error = %e, "snapshot write failed");
                    }
                }
            }
            Metrics::add(&self.metrics.snapshots_written, written);
            Metrics::add(&self.metrics.events_projected, projected);
            pending = retry;
        }
        for p in &pending {
            tracing::error!(
                account = account(p),
                "snapshot write still failing after retries"
            );
        }
    }

    /// After a conflict: refolds group `g` onto the stored `current`. Returns the write to
    /// try next, or `None` when the group is settled (covered already, or failed).
    async fn resync(
        &self,
        g: usize,
        current: Snapshot,
        grouped: &Grouped<'_>,
        batch: &RecordBatch,
        fates: &mut [Fate],
    ) -> Option<Pending> {
        let group = &grouped.groups[g];
        match self
            .fold_with_fill(group.account, current, grouped.effects_of(group))
            .await
        {
            Ok(snapshot) if snapshot.version > current.version => Some(Pending {
                group: g,
                expected: current.version,
                snapshot,
            }),
            // Every event of the group is already in the stored snapshot.
            Ok(_) => {
                fates[g] = Fate::Stored(current);
                None
            }
            Err(failure) => {
                self.fold_failed(batch, group, g, failure, fates).await;
                None
            }
        }
    }
}
