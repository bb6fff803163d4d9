//! The simulator itself: a seed replays exactly, a small budget finds nothing, and the
//! checker fails a run whose store breaks the append contract (issue 8, defect 1's class)
//! — on a deliberately broken store, so this keeps proving the checker after the real
//! store is fixed. The CI budget and the 100,000-seed command are in `.ci/run` and
//! BENCHMARKS.md.

use tally::domain::{AccountId, AccountState, Event, Segment, Snapshot, TxnId, TxnOutcome};
use tally::ports::{
    Append, Appended, EventStore, Parked, Quarantine, Quarantined, SnapshotError, SnapshotPut,
    SnapshotStore, StoreError,
};
use tally::sim::backend::{Backend, BackendKind, Models};
use tally::sim::history::Class;
use tally::sim::{Options, run_on, run_seed};

#[test]
fn a_seed_replays_exactly_the_same_run() {
    for seed in [3, 11, 17] {
        let (a, b) = (
            run_seed(seed, Options::default()),
            run_seed(seed, Options::default()),
        );
        assert_eq!(a.trace, b.trace, "seed {seed} ran differently twice");
        assert_eq!(a.events, b.events);
        assert!(a.commands > 0, "seed {seed} sent something");
    }
}

#[test]
fn a_small_budget_of_seeds_finds_nothing() {
    for seed in 0..12 {
        let r = run_seed(seed, Options::default());
        let new: Vec<String> = r.failures().iter().map(|v| v.to_string()).collect();
        assert!(new.is_empty(), "seed {seed} ({:?}): {new:#?}", r.backend);
    }
}

/// Found by the first 100,000-seed run: a timed-out invocation filled a projector's cache
/// with accounts the mapping never acknowledged, and the projector dropped groups (issue 8,
/// defect 2, then open). With the defect fixed, each must report nothing at all.
#[test]
fn seeds_where_a_timed_out_invocation_filled_the_cache_report_nothing() {
    for seed in [14_729, 67_489, 80_093, 93_407] {
        let r = run_seed(seed, Options::default());
        let new: Vec<String> = r.failures().iter().map(|v| v.to_string()).collect();
        assert!(new.is_empty(), "seed {seed}: {new:#?}");
    }
}

/// Found by a 3,400-seed run: under sustained throttling (30 % of calls) a restart's
/// catch-up gave up at its first throttled read and started over, 200 times, without
/// finishing ("restart failed: catch-up kept failing"). Each call is now retried on its
/// own, so the progress made stays made.
#[test]
fn seeds_where_a_throttled_catch_up_never_finished_report_nothing() {
    for seed in [2_674, 3_192] {
        let r = run_seed(seed, Options::default());
        let new: Vec<String> = r.failures().iter().map(|v| v.to_string()).collect();
        assert!(new.is_empty(), "seed {seed}: {new:#?}");
    }
}

/// The models, with an event store that checks each page of a call on its own: an
/// account's later page can commit after an earlier one failed (what issue 8 found in
/// the embedded store).
#[derive(Clone, Default)]
struct PageByPage(Models);

impl EventStore for PageByPage {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        self.0.events.tip(account).await
    }
    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        self.0.events.load(account, txns).await
    }
    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        self.0.events.txn(account, txn).await
    }
    /// Each page on its own: after a page fails, the account's later pages are still
    /// tried (and may commit), while the answer claims the call stopped there.
    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        let mut out = Vec::new();
        for a in appends {
            let mut expected = a.expected_version;
            let mut answer = Appended {
                pages: a.pages.len(),
                error: None,
            };
            for (i, page) in a.pages.iter().enumerate() {
                let one = Append {
                    account: a.account.clone(),
                    expected_version: expected,
                    pages: vec![page.clone()],
                    attempt: a.attempt,
                    decided_at: a.decided_at,
                };
                let r = self.0.events.append(vec![one]).await.remove(0);
                if let (Some(e), None) = (r.error, &answer.error) {
                    answer = Appended {
                        pages: i,
                        error: Some(e),
                    };
                }
                if let Some(last) = page.events.last() {
                    expected = last.version;
                }
            }
            out.push(answer);
        }
        out
    }
    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Segment>, StoreError> {
        self.0.events.segments(account, from, limit).await
    }
    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.0.events.read(account, from, to).await
    }
    async fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, u64)>, StoreError> {
        self.0.events.accounts(after, limit).await
    }
}

impl SnapshotStore for PageByPage {
    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        self.0.snapshots.get_many(accounts).await
    }
    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        self.0.snapshots.put_many(puts).await
    }
}

impl Quarantine for PageByPage {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        self.0.quarantine.put(record).await
    }
    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        self.0.quarantine.park(parked).await
    }
    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        self.0.quarantine.parked(account).await
    }
}

impl Backend for PageByPage {
    type Events = PageByPage;
    type Snapshots = PageByPage;
    type Quarantine = PageByPage;
    fn events(&self) -> PageByPage {
        self.clone()
    }
    fn snapshots(&self) -> PageByPage {
        self.clone()
    }
    fn quarantine(&self) -> PageByPage {
        self.clone()
    }
    fn parked(&self) -> Vec<Parked> {
        self.0.quarantine.parked_dump()
    }
    fn quarantined(&self) -> Vec<Quarantined> {
        self.0.quarantine.dump()
    }
}

#[test]
fn the_checker_fails_a_store_whose_later_page_commits_after_a_failed_one() {
    let found = (0..SEEDS_TO_FIND_PAGE_BY_PAGE).find_map(|seed| {
        let r = run_on(seed, BackendKind::Model, || Ok(PageByPage::default()));
        (!r.failures().is_empty()).then_some((seed, r))
    });
    let (seed, r) = found.expect("some seed makes two page-aligned appends race on one account");
    // The history replay sees the loser's later page on top of the winner's events.
    assert!(
        r.violations
            .iter()
            .any(|v| v.class == Class::New && v.what.contains("the rules give")),
        "seed {seed}: {:#?}",
        r.violations
    );
}

/// Seeds the search above may take (seed 7 was the first when written).
const SEEDS_TO_FIND_PAGE_BY_PAGE: u64 = 60;
