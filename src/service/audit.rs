//! `verify` and `replay`: re-fold every account from the event store. Verify only reads and
//! reports — snapshots that differ from the fold of their events, snapshots behind their
//! events, event chains that do not fold — and repairs nothing (it must be able to see what
//! went wrong). Replay rewrites snapshots from the events.

use futures_util::stream::{self, StreamExt};

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

/// Accounts verified or replayed concurrently (their events read in parallel).
pub const IN_FLIGHT_MAX: usize = 16;

/// Accounts whose snapshots are read in one `get_many`.
const CHUNK_ACCOUNTS: usize = 100;

/// What one account came to.
enum Finding {
    Clean,
    Different(Box<Difference>),
    Lagging(Lag),
    Broken(Broken),
}

/// Reads every account's events and snapshot and reports what disagrees. Writes nothing.
/// Lists accounts page by page ([`EventStore::accounts`]).
pub async fn verify<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    let mut after: Option<AccountId> = None;
    loop {
        let page = events.accounts(after.as_ref(), ACCOUNTS_PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(report);
        };
        after = Some(last.clone());
        verify_accounts(events, snapshots, &page, &mut report).await?;
    }
}

/// [`verify`] over a listing the caller made (a backend's parallel scan: every account
/// once, in any order, with its newest version when listed).
pub async fn verify_listed<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
    accounts: &[(AccountId, u64)],
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    verify_accounts(events, snapshots, accounts, &mut report).await?;
    Ok(report)
}

async fn verify_accounts<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
    accounts: &[(AccountId, u64)],
    report: &mut VerifyReport,
) -> Result<(), StoreError> {
    for chunk in accounts.chunks(CHUNK_ACCOUNTS) {
        let names = chunk.iter().map(|(a, _)| a.to_string()).collect();
        let stored = snapshots.get_many(names).await?;
        let checked: Vec<Result<(u64, Finding), StoreError>> =
            stream::iter(chunk.iter().zip(stored))
                .map(|((account, newest), stored)| check(events, account, *newest, stored))
                .buffered(IN_FLIGHT_MAX)
                .collect()
                .await;
        for c in checked {
            let (n, finding) = c?;
            report.accounts += 1;
            report.events += n;
            match finding {
                Finding::Clean => {}
                Finding::Different(d) => report.differences.add(*d),
                Finding::Lagging(l) => report.lagging.add(l),
                Finding::Broken(b) => report.broken.add(b),
            }
        }
    }
    Ok(())
}

/// One account: its events (up to the newer of the listed version and the snapshot's, as a
/// live system may have moved on since the listing) against its snapshot.
async fn check<E: EventStore>(
    events: &E,
    account: &AccountId,
    listed: u64,
    stored: Option<Snapshot>,
) -> Result<(u64, Finding), StoreError> {
    let version = stored.map_or(0, |s| s.version);
    let newest = listed.max(version);
    let all = events.read(account, 1, newest).await?;
    let n = all.len() as u64;
    let newest = all.last().map_or(0, |e| e.version).max(listed);
    let account = account.clone();
    let upto = version.min(newest);
    let folded = if stored.is_some() { upto } else { newest };
    let folded = match fold_all(&all[..(folded as usize).min(all.len())], folded)
        .and_then(|s| fold_all(&all, newest).map(|_| s))
    {
        Ok(s) => s,
        Err(reason) => return Ok((n, Finding::Broken(Broken { account, reason }))),
    };
    Ok((
        n,
        if version > newest {
            Finding::Broken(Broken {
                account,
                reason: format!("snapshot at version {version} is ahead of the events ({newest})"),
            })
        } else if stored.is_some() && stored != Some(folded) {
            Finding::Different(Box::new(Difference {
                account,
                stored,
                folded,
            }))
        } else if version < newest {
            Finding::Lagging(Lag {
                account,
                snapshot_version: version,
                newest_version: newest,
            })
        } else {
            Finding::Clean
        },
    ))
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Replayed {
    /// Accounts whose snapshot was rewritten from their events.
    pub accounts: u64,
    /// Accounts whose events do not fold, left as they were: (account, why).
    pub unfoldable: Vec<(String, String)>,
}

/// Rewrites every snapshot from its events, going past accounts whose events do not fold
/// (reported, left as they were). Lists accounts page by page.
pub async fn replay<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
) -> Result<Replayed, StoreError> {
    let mut done = Replayed::default();
    let mut after: Option<AccountId> = None;
    loop {
        let page = events.accounts(after.as_ref(), ACCOUNTS_PAGE).await?;
        let Some((last, _)) = page.last() else {
            return Ok(done);
        };
        after = Some(last.clone());
        let more = replay_listed(events, snapshots, &page).await?;
        done.accounts += more.accounts;
        done.unfoldable.extend(more.unfoldable);
    }
}

/// [`replay`] over a listing the caller made.
pub async fn replay_listed<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
    accounts: &[(AccountId, u64)],
) -> Result<Replayed, StoreError> {
    let mut done = Replayed::default();
    for chunk in accounts.chunks(CHUNK_ACCOUNTS) {
        let folded: Vec<Result<Result<Snapshot, String>, StoreError>> = stream::iter(chunk)
            .map(|(account, newest)| async move {
                let all = events.read(account, 1, *newest).await?;
                Ok(fold_all(&all, *newest))
            })
            .buffered(IN_FLIGHT_MAX)
            .collect()
            .await;
        let names = chunk.iter().map(|(a, _)| a.to_string()).collect();
        let current = snapshots.get_many(names).await?;
        let mut puts = Vec::with_capacity(chunk.len());
        let mut replayed = Vec::with_capacity(chunk.len());
        for (((account, _), snapshot), current) in chunk.iter().zip(folded).zip(current) {
            match snapshot? {
                Ok(snapshot) => {
                    replayed.push(account);
                    puts.push(SnapshotPut {
                        account: account.to_string(),
                        expected_version: current.map_or(0, |s| s.version),
                        snapshot,
                    });
                }
                Err(reason) => {
                    tracing::error!(account = %account, reason = %reason, "events do not fold; snapshot left as it is");
                    done.unfoldable.push((account.to_string(), reason));
                }
            }
        }
        done.accounts += puts.len() as u64;
        for (put, result) in replayed.into_iter().zip(snapshots.put_many(puts).await) {
            match result {
                Ok(()) => {}
                Err(SnapshotError::Conflict { .. }) => {
                    return Err(StoreError::Unavailable(format!(
                        "{put} changed during replay; run it again"
                    )));
                }
                Err(SnapshotError::Store(e)) => return Err(e),
            }
        }
    }
    Ok(done)
}
