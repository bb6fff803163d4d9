//! The `EventStore` contract (`src/ports.rs`), tested once and run on every backend: the
//! embedded store here, DynamoDB Local through `aws::store`. Conditions tell conflicts,
//! duplicates and reversed targets apart; an account's pages commit in order and stop at the
//! first failure; one result per account append; a retried page succeeds again; refusals are
//! outcomes like bookings.

use tally::adapters::embedded::EmbeddedStore;
use tally::domain::{
    AccountId, AccountState, Command, Event, EventKind, Money, Refusal, Rejection, Timestamp,
    TxnOutcome,
};
use tally::ports::{Append, AppendError, Appended, EventStore, PageWrite};

use crate::harness::txn;

fn at() -> Timestamp {
    Timestamp::from_millis(1_793_523_600_000).unwrap()
}

pub fn deposit(version: u64, id: &str, amount: i64, balance: i64) -> Event {
    Event {
        version,
        txn_id: txn(id),
        kind: EventKind::Deposited {
            amount: Money(amount),
        },
        occurred_at: at(),
        recorded_at: at(),
        balance: Money(balance),
    }
}

fn reversal(version: u64, id: &str, target: &str, delta: i64, balance: i64) -> Event {
    Event {
        version,
        txn_id: txn(id),
        kind: EventKind::Reversed {
            reverses: txn(target),
            delta: Money(delta),
        },
        occurred_at: at(),
        recorded_at: at(),
        balance: Money(balance),
    }
}

fn refusal(id: &str, amount: i64, balance: i64, version: u64) -> Refusal {
    Refusal {
        command: Command::Withdraw {
            txn_id: txn(id),
            amount: Money(amount),
            occurred_at: at(),
        },
        rejection: Rejection::InsufficientFunds {
            balance: Money(balance),
            amount: Money(amount),
            overdraft_limit: 0,
        },
        version,
    }
}

fn events(events: Vec<Event>) -> PageWrite {
    PageWrite {
        events,
        refusals: vec![],
    }
}

fn append(account: &AccountId, expected_version: u64, pages: Vec<PageWrite>) -> Append {
    Append {
        account: account.clone(),
        expected_version,
        pages,
    }
}

fn ok(pages: usize) -> Appended {
    Appended { pages, error: None }
}

fn stopped(pages: usize, e: AppendError) -> Appended {
    Appended {
        pages,
        error: Some(e),
    }
}

fn reversed(o: Option<TxnOutcome>) -> Option<bool> {
    match o? {
        TxnOutcome::Booked { reversed, .. } => Some(reversed),
        TxnOutcome::Refused(_) => None,
    }
}

/// Conditions: a stale writer conflicts, a repeated id is a duplicate, a reversed target
/// cannot be reversed again, a target booked and reversed in one page is written reversed.
pub async fn conditions_tell_conflicts_duplicates_and_reversed_targets_apart<S: EventStore>(
    store: S,
) {
    let acct = AccountId::new("acct-1").unwrap();
    let first = vec![deposit(1, "d1", 100, 100), deposit(2, "d2", 50, 150)];
    assert_eq!(
        store
            .append(vec![append(&acct, 0, vec![events(first)])])
            .await,
        vec![ok(1)]
    );
    let tip = store.tip(&acct).await.unwrap();
    assert_eq!(
        tip,
        AccountState {
            version: 2,
            balance: Money(150)
        }
    );
    let stale = store
        .append(vec![append(
            &acct,
            0,
            vec![events(vec![deposit(1, "x1", 5, 5)])],
        )])
        .await;
    assert_eq!(
        stale,
        vec![stopped(0, AppendError::Conflict { current: 2 })]
    );
    let dup = store
        .append(vec![append(
            &acct,
            2,
            vec![events(vec![deposit(3, "d1", 7, 157)])],
        )])
        .await;
    assert_eq!(dup, vec![stopped(0, AppendError::DuplicateTxn(txn("d1")))]);
    assert_eq!(
        store.tip(&acct).await.unwrap().version,
        2,
        "nothing written"
    );

    let rev = |v, id: &str, balance| events(vec![reversal(v, id, "d2", -50, balance)]);
    assert_eq!(
        store
            .append(vec![append(&acct, 2, vec![rev(3, "r1", 100)])])
            .await,
        vec![ok(1)]
    );
    assert_eq!(
        reversed(store.txn(&acct, &txn("d2")).await.unwrap()),
        Some(true)
    );
    let again = store
        .append(vec![append(&acct, 3, vec![rev(4, "r2", 50)])])
        .await;
    assert_eq!(
        again,
        vec![stopped(0, AppendError::TargetReversed(txn("d2")))]
    );

    let same_page = vec![deposit(4, "d4", 10, 110), reversal(5, "r4", "d4", -10, 100)];
    assert_eq!(
        store
            .append(vec![append(&acct, 3, vec![events(same_page)])])
            .await,
        vec![ok(1)]
    );
    assert_eq!(
        reversed(store.txn(&acct, &txn("d4")).await.unwrap()),
        Some(true)
    );
    let (tip, found) = store
        .load(&acct, &[txn("d1"), txn("nope"), txn("r4")])
        .await
        .unwrap();
    assert_eq!(tip.version, 5);
    let versions: Vec<Option<u64>> = found
        .iter()
        .map(|o| match o {
            Some(TxnOutcome::Booked { event, .. }) => Some(event.version),
            _ => None,
        })
        .collect();
    assert_eq!(versions, [Some(1), None, Some(5)]);
    assert_eq!(
        found[0],
        Some(TxnOutcome::Booked {
            event: deposit(1, "d1", 100, 100),
            reversed: false
        }),
        "the outcome carries the whole event"
    );
    let read: Vec<u64> = store
        .read(&acct, 2, 4)
        .await
        .unwrap()
        .iter()
        .map(|e| e.version)
        .collect();
    assert_eq!(read, [2, 3, 4], "a range read spans pages");
    assert_eq!(store.accounts(None, 10).await.unwrap(), vec![(acct, 5)]);
}

/// An account's pages commit in order, and none after the first that fails: the repro of
/// two bulk requests racing on one account, where the loser's second page used to commit
/// on top of the winner's events. One result per account, whatever the mix.
pub async fn an_accounts_pages_stop_at_the_first_failure<S: EventStore>(store: S) {
    let (a, b, c) = (
        AccountId::new("race-a").unwrap(),
        AccountId::new("race-b").unwrap(),
        AccountId::new("race-c").unwrap(),
    );
    // The winner books 32 deposits of 1 on `a`.
    let winner: Vec<Event> = (1..=32)
        .map(|v| deposit(v, &format!("w{v}"), 1, v as i64))
        .collect();
    assert_eq!(
        store
            .append(vec![append(&a, 0, vec![events(winner)])])
            .await,
        vec![ok(1)]
    );
    // The loser decided 33 deposits of 100 on version 0: its first page conflicts, and its
    // second page (expected version 32) must not commit on top of the winner's events.
    let loser: Vec<Event> = (1..=33)
        .map(|v| deposit(v, &format!("l{v}"), 100, 100 * v as i64))
        .collect();
    let pages = vec![events(loser[..32].to_vec()), events(loser[32..].to_vec())];
    // In the same call: `b` writes both of its pages, `c` fails on its second.
    let b_pages = vec![
        events(vec![deposit(1, "b1", 1, 1)]),
        events(vec![deposit(2, "b2", 1, 2)]),
    ];
    let c_pages = vec![
        events(vec![deposit(1, "c1", 1, 1)]),
        events(vec![deposit(2, "c1", 1, 2)]), // the same id again: refused
        events(vec![deposit(3, "c3", 1, 3)]),
    ];
    let results = store
        .append(vec![
            append(&a, 0, pages),
            append(&b, 0, b_pages),
            append(&c, 0, c_pages),
        ])
        .await;
    assert_eq!(
        results,
        vec![
            stopped(0, AppendError::Conflict { current: 32 }),
            ok(2),
            stopped(1, AppendError::DuplicateTxn(txn("c1"))),
        ]
    );
    assert_eq!(store.tip(&a).await.unwrap().version, 32);
    assert_eq!(store.txn(&a, &txn("l33")).await.unwrap(), None);
    assert_eq!(store.tip(&b).await.unwrap().version, 2);
    assert_eq!(store.tip(&c).await.unwrap().version, 1);
    assert_eq!(store.txn(&c, &txn("c3")).await.unwrap(), None);
    let a_events = store.read(&a, 1, 40).await.unwrap();
    assert_eq!(a_events.len(), 32);
    assert!(a_events.iter().all(|e| e.txn_id.as_str().starts_with('w')));
}

/// A page identical to one already written succeeds again without writing twice: what a
/// caller that saw a timeout after the store committed sends next.
pub async fn a_retried_page_succeeds_again_and_writes_once<S: EventStore>(store: S) {
    let acct = AccountId::new("retry-1").unwrap();
    let page = PageWrite {
        events: vec![deposit(1, "d1", 100, 100), deposit(2, "d2", 5, 105)],
        refusals: vec![refusal("w1", 500, 100, 1)],
    };
    let call = || vec![append(&acct, 0, vec![page.clone()])];
    assert_eq!(store.append(call()).await, vec![ok(1)]);
    assert_eq!(
        store.append(call()).await,
        vec![ok(1)],
        "the retry succeeds"
    );
    assert_eq!(store.read(&acct, 1, 10).await.unwrap().len(), 2);
    // Later pages can follow the retried one in the same call.
    let next = events(vec![deposit(3, "d3", 1, 106)]);
    assert_eq!(
        store
            .append(vec![append(&acct, 0, vec![page.clone(), next])])
            .await,
        vec![ok(2)]
    );
    assert_eq!(store.tip(&acct).await.unwrap().version, 3);
    // A different page at the same place is still a conflict.
    let other = events(vec![deposit(1, "d9", 100, 100)]);
    assert_eq!(
        store.append(vec![append(&acct, 0, vec![other])]).await,
        vec![stopped(0, AppendError::Conflict { current: 3 })]
    );
    // A page of one refusal, retried, and a different refusal under a used id.
    let alone = |r: Refusal| {
        vec![append(
            &acct,
            3,
            vec![PageWrite {
                events: vec![],
                refusals: vec![r],
            }],
        )]
    };
    assert_eq!(
        store.append(alone(refusal("w2", 900, 106, 3))).await,
        vec![ok(1)]
    );
    assert_eq!(
        store.append(alone(refusal("w2", 900, 106, 3))).await,
        vec![ok(1)]
    );
    assert_eq!(
        store.append(alone(refusal("w2", 901, 106, 3))).await,
        vec![stopped(0, AppendError::DuplicateTxn(txn("w2")))]
    );
}

/// Refusals are outcomes: stored with their figures, even on an account with no events, and
/// a refused id cannot be booked afterwards.
pub async fn refusals_are_outcomes_even_without_events<S: EventStore>(store: S) {
    let acct = AccountId::new("refuse-1").unwrap();
    let r = refusal("w1", 500, 0, 0);
    let page = PageWrite {
        events: vec![],
        refusals: vec![r.clone(), refusal("w2", 7, 0, 0)],
    };
    assert_eq!(
        store.append(vec![append(&acct, 0, vec![page])]).await,
        vec![ok(1)]
    );
    let (tip, found) = store.load(&acct, &[txn("w1"), txn("w3")]).await.unwrap();
    assert_eq!(tip, AccountState::default());
    assert_eq!(found, vec![Some(TxnOutcome::Refused(r)), None]);
    let booked_after = store
        .append(vec![append(
            &acct,
            0,
            vec![events(vec![deposit(1, "w1", 500, 500)])],
        )])
        .await;
    assert_eq!(
        booked_after,
        vec![stopped(0, AppendError::DuplicateTxn(txn("w1")))]
    );
    assert_eq!(store.tip(&acct).await.unwrap().version, 0);
}

#[tokio::test]
async fn embedded_conditions_tell_conflicts_duplicates_and_reversed_targets_apart() {
    conditions_tell_conflicts_duplicates_and_reversed_targets_apart(
        EmbeddedStore::in_memory().unwrap(),
    )
    .await;
}

#[tokio::test]
async fn embedded_an_accounts_pages_stop_at_the_first_failure() {
    an_accounts_pages_stop_at_the_first_failure(EmbeddedStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn embedded_a_retried_page_succeeds_again_and_writes_once() {
    a_retried_page_succeeds_again_and_writes_once(EmbeddedStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn embedded_refusals_are_outcomes_even_without_events() {
    refusals_are_outcomes_even_without_events(EmbeddedStore::in_memory().unwrap()).await;
}

/// A balance as of a business time, read through segment summaries, equals the sum over
/// every event at or before that instant — with backdated events straddling segments — and
/// the store holds one summary per complete segment.
pub async fn point_in_time_reads_agree_with_every_event<S: EventStore + Clone>(store: S) {
    use tally::domain::limits::SEGMENT_EVENTS;
    use tally::service::query::QueryService;
    let acct = AccountId::new("pit-1").unwrap();
    let n = 2 * SEGMENT_EVENTS + 300;
    let base = 1_793_523_600_000i64;
    // Mostly in business-time order, every 97th event backdated by a day.
    let at_of =
        |v: u64| base + v as i64 * 60_000 - if v.is_multiple_of(97) { 86_400_000 } else { 0 };
    let mut events = Vec::new();
    let mut balance = 0;
    for v in 1..=n {
        let amount = (v % 13 + 1) as i64;
        balance += amount;
        let mut e = deposit(v, &format!("p{v}"), amount, balance);
        e.occurred_at = Timestamp::from_millis(at_of(v)).unwrap();
        events.push(e);
    }
    let pages: Vec<PageWrite> = events.chunks(32).map(|c| events_page(c.to_vec())).collect();
    // Two calls, so a segment is completed across calls too.
    let (a, b) = pages.split_at(40);
    assert_eq!(
        store.append(vec![append(&acct, 0, a.to_vec())]).await,
        vec![ok(a.len())]
    );
    assert_eq!(
        store.append(vec![append(&acct, 40 * 32, b.to_vec())]).await,
        vec![ok(b.len())]
    );
    let segments = store.segments(&acct, 0, 100).await.unwrap();
    assert_eq!(
        segments.iter().map(|s| s.index).collect::<Vec<_>>(),
        [0, 1],
        "one summary per complete segment"
    );
    let query = QueryService::new(store.clone(), NoSnapshots);
    for probe in [0, 1, 500, 1023, 1024, 1500, 2047, 2100, n, n + 5] {
        let at = Timestamp::from_millis(base + probe as i64 * 60_000 + 30_000).unwrap();
        let want: i64 = events
            .iter()
            .filter(|e| e.occurred_at <= at)
            .map(|e| e.kind.delta().unwrap().minor())
            .sum();
        let count = events.iter().filter(|e| e.occurred_at <= at).count() as u64;
        let got = query.balance_at(&acct, at).await.unwrap().unwrap();
        assert_eq!(
            (got.balance.minor(), got.events),
            (want, count),
            "at {probe}"
        );
    }
}

fn events_page(events: Vec<Event>) -> PageWrite {
    PageWrite {
        events,
        refusals: vec![],
    }
}

/// Point-in-time reads need no snapshots.
#[derive(Clone)]
struct NoSnapshots;

impl tally::ports::SnapshotStore for NoSnapshots {
    async fn get_many(
        &self,
        accounts: Vec<String>,
    ) -> Result<Vec<Option<tally::domain::Snapshot>>, tally::ports::StoreError> {
        Ok(vec![None; accounts.len()])
    }

    async fn put_many(
        &self,
        puts: Vec<tally::ports::SnapshotPut>,
    ) -> Vec<Result<(), tally::ports::SnapshotError>> {
        puts.iter().map(|_| Ok(())).collect()
    }
}

#[tokio::test]
async fn embedded_point_in_time_reads_agree_with_every_event() {
    point_in_time_reads_agree_with_every_event(EmbeddedStore::in_memory().unwrap()).await;
}

/// The embedded store's txn index lives in memory and is rebuilt from the pages, the
/// refusals and the reversed flags at open: every outcome survives a restart.
#[tokio::test]
async fn embedded_outcomes_survive_a_restart() {
    let dir = std::env::temp_dir().join(format!("tally-reopen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let acct = AccountId::new("re-1").unwrap();
    {
        let store = EmbeddedStore::open(&dir).unwrap();
        let page = PageWrite {
            events: vec![
                deposit(1, "d1", 100, 100),
                deposit(2, "d2", 5, 105),
                reversal(3, "r1", "d1", -100, 5),
            ],
            refusals: vec![refusal("w1", 500, 105, 2)],
        };
        assert_eq!(
            store.append(vec![append(&acct, 0, vec![page])]).await,
            vec![ok(1)]
        );
        assert_eq!(store.indexed_txns(), 4);
    }
    let store = EmbeddedStore::open(&dir).unwrap();
    assert_eq!(store.indexed_txns(), 4);
    assert_eq!(
        reversed(store.txn(&acct, &txn("d1")).await.unwrap()),
        Some(true)
    );
    assert_eq!(
        reversed(store.txn(&acct, &txn("d2")).await.unwrap()),
        Some(false)
    );
    assert_eq!(
        store.txn(&acct, &txn("w1")).await.unwrap(),
        Some(TxnOutcome::Refused(refusal("w1", 500, 105, 2)))
    );
    assert_eq!(store.txn(&acct, &txn("nope")).await.unwrap(), None);
    // The restarted store still refuses what the first one recorded.
    let again = store
        .append(vec![append(
            &acct,
            3,
            vec![events(vec![reversal(4, "r2", "d1", -100, -95)])],
        )])
        .await;
    assert_eq!(
        again,
        vec![stopped(0, AppendError::TargetReversed(txn("d1")))]
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data dir written by an older layout (a row per booked txn id) is refused by name rather
/// than read wrongly.
#[test]
fn embedded_an_older_data_dir_is_refused_naming_its_layout() {
    let dir = std::env::temp_dir().join(format!("tally-layout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    {
        let db = redb::Database::create(dir.join("tally.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
            let mut t = tx.open_table(def).unwrap();
            t.insert(b"a\0\0\0\0\0\0\0\0\x01".as_slice(), b"x".as_slice())
                .unwrap();
        }
        tx.commit().unwrap();
    }
    let err = EmbeddedStore::open(&dir).err().expect("refused");
    assert!(err.to_string().contains("store layout 1"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A page that does not continue the account's versions (a caller's bug) is refused as
/// corrupt, never written as a gap or an overlap.
pub async fn a_page_that_does_not_continue_its_versions_is_refused<S: EventStore>(store: S) {
    let acct = AccountId::new("shape-1").unwrap();
    let gap = events(vec![deposit(2, "g2", 1, 1)]);
    let skip = events(vec![deposit(1, "s1", 1, 1), deposit(3, "s3", 1, 2)]);
    for bad in [gap, skip] {
        let r = store.append(vec![append(&acct, 0, vec![bad])]).await;
        assert!(
            matches!(
                r[0],
                Appended {
                    pages: 0,
                    error: Some(AppendError::Store(tally::ports::StoreError::Corrupt(_)))
                }
            ),
            "{r:?}"
        );
    }
    assert_eq!(store.tip(&acct).await.unwrap().version, 0);
}

#[tokio::test]
async fn embedded_a_page_that_does_not_continue_its_versions_is_refused() {
    a_page_that_does_not_continue_its_versions_is_refused(EmbeddedStore::in_memory().unwrap())
        .await;
}
