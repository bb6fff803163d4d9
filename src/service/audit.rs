//! `verify` and `replay`: re-fold every account from the event store. Verify compares with
//! the stored snapshot (any difference is a bug or corruption); replay rewrites snapshots.

use crate::domain::{AccountId, Effect, Event, Snapshot};
use crate::ports::{EventStore, SnapshotError, SnapshotPut, SnapshotStore, StoreError};
use crate::service::projector::fold_group;

/// Accounts read per store call.
const ACCOUNTS_PAGE: usize = 1_000;

/// One account whose snapshot differs from the fold of its events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    pub account: AccountId,
    pub stored: Option<Snapshot>,
    pub folded: Snapshot,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    pub accounts: u64,
    pub events: u64,
    pub differences: Vec<Difference>,
}

/// Folds all events of `account` from the initial state, checking every carried balance.
async fn refold<E: EventStore>(
    events: &E,
    account: &AccountId,
    newest: u64,
) -> Result<(Snapshot, u64), StoreError> {
    let all = events.read(account, 1, newest).await?;
    let fx: Vec<Effect> = all.iter().filter_map(Event::effect).collect();
    let fold = fold_group(Snapshot::default(), &fx);
    if fold.stop.is_some() || fold.snapshot.version != newest || fx.len() != all.len() {
        return Err(StoreError::Corrupt(format!(
            "events of {account} do not fold to version {newest} (stopped: {:?})",
            fold.stop
        )));
    }
    Ok((fold.snapshot, all.len() as u64))
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

pub async fn verify<E: EventStore, S: SnapshotStore>(
    events: &E,
    snapshots: &S,
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport::default();
    each_account(events, async |account, newest| {
        let (folded, n) = refold(events, &account, newest).await?;
        report.accounts += 1;
        report.events += n;
        let stored = snapshots.get(account.as_str()).await?;
        if stored != Some(folded) {
            report.differences.push(Difference {
                account,
                stored,
                folded,
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
        let (folded, _) = refold(events, &account, newest).await?;
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
