//! Per-account parking (DESIGN.md step 3): an account whose events cannot be folded (a
//! carried balance that disagrees, an overflow, versions missing from the event store) is
//! recorded in the quarantine with its first failing version, the record it was met in and
//! the error, and skipped from then on, instead of blocking its shard. Other accounts of the
//! same records go on. A redrive ([`Projector::redrive_parked`]) re-projects it from the
//! event store once the cause is fixed, and unparks it.
//!
//! Parking is decided only on what is deterministic: a store that cannot be read is a
//! failure to retry, never a reason to park. A projector remembers the accounts it saw
//! parked and checks the quarantine for them at every batch (one consistent read each), so
//! an unpark is seen at once; an instance that does not know an account is parked meets the
//! same fault again, and parking again keeps the first record.

use std::collections::HashSet;

use super::fold::{Group, Grouped, fold_group};
use super::{Fate, Projector};
use crate::codec::batch::RecordBatch;
use crate::domain::{AccountId, Effect, Snapshot};
use crate::ports::{EventStore, Parked, Quarantine, QuarantineAdmin, SnapshotStore, StoreError};
use crate::service::metrics::Metrics;

/// Accounts a projector remembers as parked; past it, an instance finds a parked account
/// again by meeting its fault (the same outcome, one more event store read).
pub const PARKED_KNOWN_MAX: usize = 10_000;

/// Why an account's events were not folded.
#[derive(Debug)]
pub(super) enum FoldFailure {
    /// A store could not be read or written: retry.
    Store(StoreError),
    /// The events themselves do not fold from `version` on: park.
    Unfoldable { version: u64, error: String },
}

/// The park record of an account a catch-up, the backstop or a redrive met (no record).
pub(super) fn met_by_catch_up(account: &str, version: u64, error: String) -> Parked {
    Parked {
        account: account.to_owned(),
        version,
        shard: String::new(),
        sequence_number: String::new(),
        error,
    }
}

/// What [`Projector::catch_up_account`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaughtUp {
    /// The snapshot now holds the newest version.
    Written,
    /// The stored snapshot moved away from the start meanwhile (someone else projected).
    Moved,
    /// The account's events do not fold: it is parked (now, or already was).
    Parked,
}

/// What a redrive did for one parked account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redriven {
    /// Projected up to its newest version and unparked.
    Unparked { version: u64 },
    /// Still does not fold: parked again, with today's error.
    StillParked(Parked),
}

/// The version a fold stopped at, for a park record: the faulting effect's.
pub(super) fn failing_version(effects: &[Effect], at: usize, snapshot: Snapshot) -> u64 {
    effects
        .get(at)
        .map_or(snapshot.version.saturating_add(1), |e| e.version)
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> Projector<E, S, Q> {
    fn known_parked(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        // A set of hints: a panic mid-update loses at worst one name.
        self.parked
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the groups of accounts still parked ([`Fate::Parked`], skipped) and returns
    /// every group not to fold: those, and those whose park record could not be read
    /// (left [`Fate::Failed`], retried).
    pub(super) async fn skip_parked(&self, grouped: &Grouped<'_>, fates: &mut [Fate]) -> Vec<bool> {
        let mut skip = vec![false; grouped.groups.len()];
        let known: Vec<usize> = {
            let parked = self.known_parked();
            if parked.is_empty() {
                return skip;
            }
            (0..grouped.groups.len())
                .filter(|&g| parked.contains(grouped.groups[g].account))
                .collect()
        };
        for g in known {
            let account = grouped.groups[g].account;
            match self.quarantine.parked(account).await {
                Ok(Some(_)) => {
                    fates[g] = Fate::Parked;
                    skip[g] = true;
                    Metrics::add(&self.metrics.parked_groups_skipped, 1);
                }
                Ok(None) => {
                    self.known_parked().remove(account);
                    self.cache().forget(account);
                }
                Err(e) => {
                    tracing::error!(account, error = %e, "cannot read whether the account is parked; reporting failure");
                    skip[g] = true;
                }
            }
        }
        skip
    }

    /// Parks `account` (keeping an earlier park record). `Ok`: it is parked and its events
    /// may be skipped; `Err`: the quarantine could not take it (retry).
    pub(super) async fn park(&self, parked: Parked) -> Result<(), StoreError> {
        let (account, version) = (parked.account.clone(), parked.version);
        let account = account.as_str();
        // What the cache holds may be what did not fold (or ahead of a redrive's rebuild).
        self.cache().forget(account);
        match self.quarantine.park(parked).await {
            Ok(new) => {
                if new {
                    tracing::error!(
                        account,
                        version,
                        "account parked: its events do not fold; `tally parked list` shows why, `tally parked redrive` after the fix"
                    );
                    Metrics::add(&self.metrics.accounts_parked, 1);
                }
                let mut known = self.known_parked();
                if known.len() < PARKED_KNOWN_MAX {
                    known.insert(account.to_owned());
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(account, error = %e, "cannot park the account");
                Err(e)
            }
        }
    }

    /// What a batch does with group `g` whose fold failed: a store failure leaves it
    /// failed (retried); events that do not fold park the account, met at the group's
    /// first record, and clear the group as [`Fate::Parked`].
    pub(super) async fn fold_failed(
        &self,
        batch: &RecordBatch,
        group: &Group<'_>,
        g: usize,
        failure: FoldFailure,
        fates: &mut [Fate],
    ) {
        match failure {
            FoldFailure::Store(e) => {
                tracing::error!(account = group.account, error = %e, "cannot fold the account; reporting failure");
            }
            FoldFailure::Unfoldable { version, error } => {
                let parked = Parked {
                    account: group.account.to_owned(),
                    version,
                    shard: batch.shard(group.first_record).to_owned(),
                    sequence_number: batch.sequence_number(group.first_record).to_owned(),
                    error,
                };
                if self.park(parked).await.is_ok() {
                    fates[g] = Fate::Parked;
                }
            }
        }
    }
}

impl<E: EventStore, S: SnapshotStore, Q: QuarantineAdmin> Projector<E, S, Q> {
    /// Re-projects a parked account from the event store and unparks it, or parks it again
    /// with today's error if its events still do not fold.
    ///
    /// The rebuild is written while the account is still parked, so no projector or
    /// backstop folds it meanwhile from the snapshot that did not fold (and parks it again
    /// for the old cause). If the events do not fold onto the stored snapshot, or it is
    /// ahead of them or does not add up, the snapshot is what is wrong: the redrive folds
    /// from the first event instead (in bounded reads) and replaces it. Then it unparks,
    /// and catches up from a tip read after the unpark: a record skipped while the account
    /// was parked holds an event appended before, so nothing is left behind.
    pub async fn redrive_parked(&self, parked: &Parked) -> Result<Redriven, StoreError> {
        let account = AccountId::new(&parked.account).map_err(|e| {
            StoreError::Corrupt(format!("parked account {:?}: {e}", parked.account))
        })?;
        // A projector that read the old snapshot just before the rebuild may park the
        // account again right after the unpark, for the old cause: look once more, and
        // redrive again while the events fold.
        for _ in 0..super::SNAPSHOT_RETRIES_MAX {
            let done = self.redrive_once(&account).await?;
            match (&done, self.quarantine.parked(account.as_str()).await?) {
                (Redriven::Unparked { .. }, Some(_)) => continue,
                _ => return Ok(done),
            }
        }
        Err(StoreError::Unavailable(format!(
            "{account} keeps being parked again while its events fold; run the redrive again"
        )))
    }

    async fn redrive_once(&self, account: &AccountId) -> Result<Redriven, StoreError> {
        if let Some(again) = self.rebuild_parked(account).await? {
            return Ok(Redriven::StillParked(again));
        }
        self.quarantine.unpark(account.as_str()).await?;
        self.known_parked().remove(account.as_str());
        self.cache().forget(account.as_str());
        for _ in 0..super::SNAPSHOT_RETRIES_MAX {
            let (start, newest) = self.stored_and_newest(account).await?;
            match self.catch_up_account(account, start, newest).await? {
                CaughtUp::Written => return Ok(Redriven::Unparked { version: newest }),
                // Current already, or someone projected meanwhile: look again.
                CaughtUp::Moved if start.version >= newest => {
                    return Ok(Redriven::Unparked {
                        version: start.version,
                    });
                }
                CaughtUp::Moved => continue,
                CaughtUp::Parked => {
                    return match self.quarantine.parked(account.as_str()).await? {
                        Some(again) => Ok(Redriven::StillParked(again)),
                        None => Err(StoreError::Unavailable(format!(
                            "{account} was parked again and unparked meanwhile; run the redrive again"
                        ))),
                    };
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "the snapshot of {account} kept moving; it is unparked; run `tally verify`"
        )))
    }

    /// While the account is parked: folds it from the event store and writes the result.
    /// `Some`: its events still do not fold; it is parked again with today's error.
    async fn rebuild_parked(&self, account: &AccountId) -> Result<Option<Parked>, StoreError> {
        for _ in 0..super::SNAPSHOT_RETRIES_MAX {
            let (start, newest) = self.stored_and_newest(account).await?;
            // A snapshot ahead of the events or whose figures do not add up is what is
            // wrong: fold from the first event.
            let from = if start.version <= newest && start.adds_up() {
                start
            } else {
                Snapshot::default()
            };
            let folded = match self.fold_from_store(account, from, newest).await {
                Err(FoldFailure::Unfoldable { .. }) if from.version > 0 => {
                    self.fold_from_store(account, Snapshot::default(), newest)
                        .await
                }
                other => other,
            };
            let snapshot = match folded {
                Ok(snapshot) => snapshot,
                Err(FoldFailure::Store(e)) => return Err(e),
                Err(FoldFailure::Unfoldable { version, error }) => {
                    // Today's error replaces the first record.
                    self.quarantine.unpark(account.as_str()).await?;
                    self.park(met_by_catch_up(account.as_str(), version, error))
                        .await?;
                    return self.quarantine.parked(account.as_str()).await;
                }
            };
            if snapshot == start {
                return Ok(None);
            }
            match self.put_caught_up(account, start, snapshot).await? {
                CaughtUp::Written => return Ok(None),
                _ => continue,
            }
        }
        Err(StoreError::Unavailable(format!(
            "the snapshot of {account} kept moving while parked; run the redrive again"
        )))
    }
}

/// Events one read of a catch-up or redrive folds at most: memory stays bounded however
/// long the account.
pub const CATCH_UP_READ_EVENTS: u64 = 10_000;

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> Projector<E, S, Q> {
    /// The stored snapshot, then the newest version: read in that order, so a snapshot
    /// ahead of the tip is an altered item, never a projection that raced the read.
    pub(super) async fn stored_and_newest(
        &self,
        account: &AccountId,
    ) -> Result<(Snapshot, u64), StoreError> {
        let start = self
            .snapshots
            .get(account.as_str())
            .await?
            .unwrap_or_default();
        Ok((start, self.events.tip(account).await?.version))
    }

    /// Folds the stored events `start.version + 1 ..= newest` onto `start`, in reads of at
    /// most [`CATCH_UP_READ_EVENTS`], or says where they stop folding.
    pub(super) async fn fold_from_store(
        &self,
        account: &AccountId,
        start: Snapshot,
        newest: u64,
    ) -> Result<Snapshot, FoldFailure> {
        let mut snapshot = start;
        while snapshot.version < newest {
            let from = snapshot.version + 1;
            let to = newest.min(snapshot.version.saturating_add(CATCH_UP_READ_EVENTS));
            let events = self
                .events
                .read(account, from, to)
                .await
                .map_err(FoldFailure::Store)?;
            let fx: Vec<Effect> = events.iter().filter_map(|e| e.effect()).collect();
            snapshot = fold_to(snapshot, &fx, to)?;
        }
        Ok(snapshot)
    }
}

/// Folds `fx` onto `start`, which must bring it to version `to`, or says where it stops.
pub(super) fn fold_to(start: Snapshot, fx: &[Effect], to: u64) -> Result<Snapshot, FoldFailure> {
    let fold = fold_group(start, fx);
    match fold.stop {
        Some(super::Stop::Fault { error, at }) => Err(FoldFailure::Unfoldable {
            version: failing_version(fx, at, fold.snapshot),
            error: error.to_string(),
        }),
        _ if fold.snapshot.version != to => {
            let missing = fold.snapshot.version.saturating_add(1);
            Err(FoldFailure::Unfoldable {
                version: missing,
                error: format!(
                    "the event store lacks version {missing} (it holds events up to {to})"
                ),
            })
        }
        _ => Ok(fold.snapshot),
    }
}
