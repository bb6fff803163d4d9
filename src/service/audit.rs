//! `verify` and `replay`: re-fold every account from the event store. Verify only reads and
//! reports — snapshots that differ from the fold of their events, snapshots behind their
//! events, event chains that do not fold — and repairs nothing (it must be able to see what
//! went wrong). Replay rewrites snapshots from the events.

use crate::domain::{AccountId, Effect, Event, Snapshot};
use crate::ports::{EventStore, SnapshotError, SnapshotPut, SnapshotStore, StoreError};
use crate::service::projector::fold_group;

/// Accounts read per store call.
const ACCOUNTS_PAGE: usize = 1_000;

/// Accounts listed per kind of finding; the rest are counted.
pub const LISTED_MAX: usize = 10;

/// One account whose snapshot is not the fold of its events up to the snapshot's version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub account: AccountId,
    pub stored: Option<Snapshot>,
    /// The fold of the events up to the stored version (all of them if none is stored).
    pub folded: Snapshot,
}

/// One account whose snapshot is behind its events (it may still be right up to there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lag {
    pub account: AccountId,
    /// 0: no snapshot at all.
    pub snapshot_version: u64,
    pub newest_version: u64,
}

/// One account whose events do not fold (a broken chain): corruption, not lag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken {
    pub account: AccountId,
    pub reason: String,
}

/// How many of one kind, and the first [`LISTED_MAX`] of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Findings<T> {
    pub count: u64,
    pub first: Vec<T>,
}

impl<T> Default for Findings<T> {
    fn default() -> Self {
        Findings {
            count: 0,
            first: Vec::new(),
        }
    }
}

impl<T> Findings<T> {
    fn add(&mut self, item: T) {
        self.count += 1;
        if self.first.len() < LISTED_MAX {
            self.first.push(item);
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub accounts: u64,
    pub events: u64,
    pub differences: Findings<Difference>,
    pub lagging: Findings<Lag>,
    pub broken: Findings<Broken>,
}

impl VerifyReport {
    /// Nothing to report: every snapshot is the fold of all its account's events.
    pub fn is_clean(&self) -> bool {
        self.differences.count + self.lagging.count + self.broken.count == 0
    }
}

/// Folds events from the initial state, checking every carried balance; `Err` says why the
/// chain is broken.
fn fold_all(events: &[Event], newest: u64) -> Result<Snapshot, String> {
    let fx: Vec<Effect> = events.iter().filter_map(Event::effect).collect();
    if fx.len() != events.len() {
        return Err("an event has an impossible delta".into());
    }
    let fold = fold_group(Snapshot::default(), &fx);
    match fold.stop {
        Some(stop) => Err(format!("fold stops: {stop:?}")),
        None if fold.snapshot.version != newest => Err(format!(
            "events fold to version {}, but the newest is {newest}",
            fold.snapshot.version
        )),
        None => Ok(fold.snapshot),
    }
}

/// Visits every account with its newest version.
async fn each_account<E: EventStore>(
    events: &E,
    mut visit: impl AsyncFnMut(AccountId, u64) -> Result<(), StoreError>,
) -> Result<(), StoreError> {
    let mut after: Option<AccountId> = None;
    loop {
        let page = events.accounts(after.as_ref(), ACCOUNTS_PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(());
        };
        after = Some(last.clone());
        for (account, newest) in page {
            visit(account, newest).await?;
        }
    }
}

/// Reads every account's events and snapshot and reports what disagrees. Writes nothing.
pub async fn verify<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    each_account(events, async |account, newest| {
        report.accounts += 1;
        let all = events.read(&account, 1, newest).await?;
        report.events += all.len() as u64;
        let stored = snapshots.get(account.as_str()).await?;
        let upto = stored.map_or(newest, |s| s.version.min(newest));
        let folded = match fold_all(&all[..(upto as usize).min(all.len())], upto)
            .and_then(|s| fold_all(&all, newest).map(|_| s))
        {
            Ok(s) => s,
            Err(reason) => {
                report.broken.add(Broken { account, reason });
                return Ok(());
            }
        };
        let version = stored.map_or(0, |s| s.version);
        if stored.is_some_and(|s| s.version <= newest) && stored != Some(folded) {
            report.differences.add(Difference {
                account,
                stored,
                folded,
            });
        } else if version > newest {
            report.broken.add(Broken {
                account,
                reason: format!("snapshot at version {version} is ahead of the events ({newest})"),
            });
        } else if version < newest {
            report.lagging.add(Lag {
                account,
                snapshot_version: version,
                newest_version: newest,
            });
        }
        Ok(())
    })
    .await?;
    Ok(report)
}

/// Rewrites every snapshot from its events; returns the number of accounts.
pub async fn replay<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
) -> Result<u64, StoreError> {
    let mut accounts = 0;
    each_account(events, async |account, newest| {
        let all = events.read(&account, 1, newest).await?;
        let folded = fold_all(&all, newest).map_err(|reason| {
            StoreError::Corrupt(format!("events of {account} do not fold: {reason}"))
        })?;
        let current = snapshots
            .get(account.as_str())
            .await?
            .map_or(0, |s| s.version);
        let put = SnapshotPut {
            account: account.to_string(),
            expected_version: current,
            snapshot: folded,
        };
        match snapshots.put_many(vec![put]).await.pop() {
            Some(Ok(())) => {}
            Some(Err(SnapshotError::Conflict { .. })) => {
                return Err(StoreError::Unavailable(format!(
                    "{account} changed during replay; run it again"
                )));
            }
            Some(Err(SnapshotError::Store(e))) => return Err(e),
            None => {}
        }
        accounts += 1;
        Ok(())
    })
    .await?;
    Ok(accounts)
}
