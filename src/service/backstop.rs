//! The backstop (DESIGN.md step 4) on AWS: every page appended to the event store is looked
//! at once, a delay after its append, and if its account's snapshot is still below the
//! page's last version the account is projected from the event store. That covers a publish
//! lost to a network cut, a process that died between append and publish, and a stream
//! record the event source mapping gave up on, without ever scanning a table.
//!
//! Input is transport-neutral: [`PageNotice`]s (account, last version, when appended). Only
//! the adapters know DynamoDB Streams (`adapters::aws::streams` locally, `codec::ddb_stream`
//! for Lambda's event). The decision of which accounts lag is pure ([`newest_per_account`],
//! [`lagging`], [`due`]); the fold and the conditional write are the projector's own
//! ([`Projector::catch_up_account`]): this module never folds events itself and never
//! writes a snapshot any other way.

use std::sync::Arc;
use std::time::Duration;

use crate::domain::{AccountId, Snapshot};
use crate::ports::{EventStore, Quarantine, SnapshotStore, StoreError};
use crate::service::metrics::Metrics;
use crate::service::projector::{CaughtUp, Projector};

/// Accounts whose snapshots one check reads at once (a `BatchGetItem`'s worth).
pub const CHECK_ACCOUNTS_MAX: usize = 100;
/// Times an account whose repair lost a race is looked at again in one check: a race means
/// someone else moved the snapshot, usually past the page, so one more look settles it.
pub const REPAIR_ROUNDS_MAX: u32 = 3;
/// Default delay between a page's append and its check: long enough for the projector to
/// have folded it in normal operation (its mapping's window is 1 s), short enough that a
/// lost publish is repaired within two minutes.
pub const DELAY_SECS_DEFAULT: u64 = 60;

/// One page appended to the event store, as its change stream reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageNotice {
    pub account: String,
    /// The page's last event version: the snapshot must reach at least this.
    pub last_version: u64,
    /// When the page was appended (or first seen), Unix milliseconds.
    pub appended_at_ms: i64,
}

/// What one check did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Checked {
    /// Distinct accounts looked at.
    pub accounts: u64,
    /// Accounts that were behind and were projected from the event store.
    pub repaired: u64,
    /// Accounts that were behind and could not be brought up to date (an account id that
    /// is not one): logged and counted, never retried forever.
    pub failed: u64,
    /// Accounts that were behind and whose events do not fold: parked (`tally parked`).
    pub parked: u64,
}

impl Checked {
    fn add(&mut self, other: Checked) {
        self.accounts += other.accounts;
        self.repaired += other.repaired;
        self.failed += other.failed;
        self.parked += other.parked;
    }
}

/// Each account of `notices` once, with the newest version appended for it, in the order
/// the accounts first appear.
pub fn newest_per_account(notices: &[PageNotice]) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = Vec::new();
    let mut index: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    for n in notices {
        match index.get(n.account.as_str()) {
            Some(&i) => out[i].1 = out[i].1.max(n.last_version),
            None => {
                index.insert(&n.account, out.len());
                out.push((n.account.clone(), n.last_version));
            }
        }
    }
    out
}

/// The accounts (indexes into `newest`) whose stored snapshot is below their newest
/// appended version, with the snapshot to start from (`None` in `snapshots`: never written).
pub fn lagging(newest: &[(String, u64)], snapshots: &[Option<Snapshot>]) -> Vec<(usize, Snapshot)> {
    newest
        .iter()
        .zip(snapshots)
        .enumerate()
        .filter_map(|(i, ((_, version), snapshot))| {
            let start = snapshot.unwrap_or_default();
            (start.version < *version).then_some((i, start))
        })
        .collect()
}

/// How many leading notices are due at `now_ms`: appended at least `delay` ago. Checks take
/// notices in order, so one not yet due holds back those after it.
pub fn due(notices: &[PageNotice], now_ms: i64, delay: Duration) -> usize {
    let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
    notices
        .iter()
        .take_while(|n| n.appended_at_ms.saturating_add(delay_ms) <= now_ms)
        .count()
}

/// The checker: reads snapshots, projects laggards through the projector.
pub struct Backstop<E, S, Q> {
    projector: Arc<Projector<E, S, Q>>,
    snapshots: S,
    metrics: Arc<Metrics>,
    delay: Duration,
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> Backstop<E, S, Q> {
    /// `projector` is only used for its catch-up of one account (its batch cache is never
    /// touched); `snapshots` is the store it writes to.
    pub fn new(
        projector: Arc<Projector<E, S, Q>>,
        snapshots: S,
        metrics: Arc<Metrics>,
        delay: Duration,
    ) -> Self {
        Backstop {
            projector,
            snapshots,
            metrics,
            delay,
        }
    }

    /// How long after its append a page is checked.
    pub fn delay(&self) -> Duration {
        self.delay
    }

    /// Checks `notices` now, whatever their age. An error is transient (the stores are
    /// unavailable): nothing is lost by checking the same notices again.
    pub async fn check(&self, notices: &[PageNotice]) -> Result<Checked, StoreError> {
        let mut done = Checked::default();
        for chunk in newest_per_account(notices).chunks(CHECK_ACCOUNTS_MAX) {
            done.add(self.check_accounts(chunk).await?);
        }
        Ok(done)
    }

    /// Checks `notices` (in order) as each becomes due, sleeping until then: the Lambda's
    /// body. `Err((i, e))`: notices from `i` on were not checked (report them failed so the
    /// mapping delivers them again); those before `i` were.
    pub async fn check_when_due(
        &self,
        notices: &[PageNotice],
        now_ms: impl Fn() -> i64,
    ) -> Result<Checked, (usize, StoreError)> {
        let mut done = Checked::default();
        let mut at = 0;
        while at < notices.len() {
            let ready = due(&notices[at..], now_ms(), self.delay);
            if ready == 0 {
                let delay_ms = i64::try_from(self.delay.as_millis()).unwrap_or(i64::MAX);
                let wait = notices[at].appended_at_ms.saturating_add(delay_ms) - now_ms();
                let wait = u64::try_from(wait.max(1)).unwrap_or(1);
                tokio::time::sleep(Duration::from_millis(wait)).await;
                continue;
            }
            let checked = self
                .check(&notices[at..at + ready])
                .await
                .map_err(|e| (at, e))?;
            done.add(checked);
            at += ready;
        }
        Ok(done)
    }

    async fn check_accounts(&self, newest: &[(String, u64)]) -> Result<Checked, StoreError> {
        let mut done = Checked {
            accounts: newest.len() as u64,
            ..Checked::default()
        };
        let mut look: Vec<(String, u64)> = newest.to_vec();
        for _ in 0..REPAIR_ROUNDS_MAX {
            if look.is_empty() {
                break;
            }
            let names: Vec<String> = look.iter().map(|(a, _)| a.clone()).collect();
            let snapshots = self.snapshots.get_many(names).await?;
            let mut again = Vec::new();
            for (i, start) in lagging(&look, &snapshots) {
                let (account, version) = &look[i];
                match self.repair(account, start, *version).await? {
                    Repair::Written => {
                        tracing::warn!(account = %account, from = start.version, to = version,
                            "backstop: snapshot was behind the event store; projected it");
                        Metrics::add(&self.metrics.accounts_repaired, 1);
                        done.repaired += 1;
                    }
                    Repair::Raced => again.push((account.clone(), *version)),
                    Repair::Parked => done.parked += 1,
                    Repair::Failed => done.failed += 1,
                }
            }
            look = again;
        }
        if !look.is_empty() {
            // Still moving under us after every round: someone else is projecting them.
            tracing::info!(
                accounts = look.len(),
                "backstop: snapshots kept moving; left to the projector"
            );
        }
        Ok(done)
    }

    async fn repair(
        &self,
        account: &str,
        start: Snapshot,
        version: u64,
    ) -> Result<Repair, StoreError> {
        let id = match AccountId::new(account) {
            Ok(id) => id,
            Err(e) => return Ok(self.failed(account, &e.to_string())),
        };
        match self.projector.catch_up_account(&id, start, version).await {
            Ok(CaughtUp::Written) => Ok(Repair::Written),
            Ok(CaughtUp::Moved) => Ok(Repair::Raced),
            // Counted and alarmed as `AccountsParked`; a redrive projects it after a fix.
            Ok(CaughtUp::Parked) => Ok(Repair::Parked),
            Err(StoreError::Corrupt(e)) => Ok(self.failed(account, &e)),
            Err(e) => Err(e),
        }
    }

    fn failed(&self, account: &str, error: &str) -> Repair {
        tracing::error!(account = %account, error = %error, "backstop: cannot project account");
        Metrics::add(&self.metrics.backstop_failures, 1);
        Repair::Failed
    }
}

enum Repair {
    Written,
    Raced,
    Parked,
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(account: &str, last_version: u64, at: i64) -> PageNotice {
        PageNotice {
            account: account.into(),
            last_version,
            appended_at_ms: at,
        }
    }

    #[test]
    fn each_account_is_checked_once_against_its_newest_page() {
        let n = [
            notice("a", 3, 0),
            notice("b", 1, 0),
            notice("a", 7, 0),
            notice("a", 5, 0),
        ];
        assert_eq!(
            newest_per_account(&n),
            vec![("a".to_owned(), 7), ("b".to_owned(), 1)]
        );
    }

    #[test]
    fn only_snapshots_below_the_newest_page_lag() {
        let newest = vec![
            ("a".to_owned(), 7),
            ("b".to_owned(), 1),
            ("c".to_owned(), 2),
        ];
        let at = |v| {
            Some(Snapshot {
                version: v,
                ..Snapshot::default()
            })
        };
        let lag = lagging(&newest, &[at(6), at(1), None]);
        assert_eq!(
            lag.iter().map(|(i, s)| (*i, s.version)).collect::<Vec<_>>(),
            vec![(0, 6), (2, 0)]
        );
    }

    #[test]
    fn a_notice_is_due_only_a_delay_after_its_append_and_holds_back_later_ones() {
        let n = [
            notice("a", 1, 1_000),
            notice("b", 1, 5_000),
            notice("c", 1, 2_000),
        ];
        let delay = Duration::from_secs(2);
        assert_eq!(due(&n, 2_999, delay), 0);
        assert_eq!(due(&n, 3_000, delay), 1);
        assert_eq!(due(&n, 6_999, delay), 1);
        assert_eq!(due(&n, 7_000, delay), 3);
    }
}
