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
use tally::ports::{Append, AppendError, Appended, EventStore, Load, PageWrite, StoreError};

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

pub fn refusal(id: &str, amount: i64, balance: i64, version: u64) -> Refusal {
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

/// The attempt of every append these tests make, unless a test says otherwise.
pub const ATTEMPT: u64 = 1;

fn append(account: &AccountId, expected_version: u64, pages: Vec<PageWrite>) -> Append {
    Append {
        account: account.clone(),
        expected_version,
        pages,
        attempt: ATTEMPT,
        decided_at: at(),
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
    assert_eq!(
        read_versions(&store, &acct, 2, 4).await,
        [2, 3, 4],
        "a range read spans pages"
    );
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

/// Two callers that decide the same thing in the same millisecond produce byte-identical
/// pages: only the one that wrote it is told so; the other gets the conflict (and finds the
/// outcome as a duplicate), for pages of events and for pages of refusals alone.
pub async fn an_identical_page_from_another_attempt_is_not_a_success<S: EventStore>(store: S) {
    let acct = AccountId::new("twin-1").unwrap();
    let page = PageWrite {
        events: vec![deposit(1, "d1", 100, 100)],
        refusals: vec![refusal("w1", 500, 100, 1)],
    };
    let by = |attempt: u64, expected: u64, page: &PageWrite| Append {
        account: acct.clone(),
        expected_version: expected,
        pages: vec![page.clone()],
        attempt,
        decided_at: at(),
    };
    assert_eq!(store.append(vec![by(7, 0, &page)]).await, vec![ok(1)]);
    assert_eq!(
        store.append(vec![by(8, 0, &page)]).await,
        vec![stopped(0, AppendError::Conflict { current: 1 })],
        "the twin attempt is not told it wrote the page"
    );
    assert_eq!(
        store.append(vec![by(7, 0, &page)]).await,
        vec![ok(1)],
        "the writer's own retry still succeeds"
    );
    let alone = PageWrite {
        events: vec![],
        refusals: vec![refusal("w2", 900, 100, 1)],
    };
    assert_eq!(store.append(vec![by(7, 1, &alone)]).await, vec![ok(1)]);
    assert_eq!(
        store.append(vec![by(8, 1, &alone)]).await,
        vec![stopped(0, AppendError::DuplicateTxn(txn("w2")))],
        "the twin refusal is a duplicate"
    );
    assert_eq!(store.append(vec![by(7, 1, &alone)]).await, vec![ok(1)]);
    assert_eq!(store.read(&acct, 1, 10).await.unwrap().len(), 1);
}

#[tokio::test]
async fn embedded_an_identical_page_from_another_attempt_is_not_a_success() {
    an_identical_page_from_another_attempt_is_not_a_success(EmbeddedStore::in_memory().unwrap())
        .await;
}

/// Many accounts in one call (more than one DynamoDB transaction holds): each gets its own
/// result, in order; a stale writer and a reused id fail alone, everything else is written.
pub async fn each_of_many_accounts_in_one_call_gets_its_own_result<S: EventStore>(store: S) {
    let ids: Vec<AccountId> = (0..150)
        .map(|i| AccountId::new(format!("many-{i:03}")).unwrap())
        .collect();
    // Account 70 already has an event; account 120 already used the id it will send.
    assert_eq!(
        store
            .append(vec![
                append(&ids[70], 0, vec![events(vec![deposit(1, "pre", 1, 1)])]),
                append(&ids[120], 0, vec![events(vec![deposit(1, "dup", 1, 1)])]),
            ])
            .await,
        vec![ok(1), ok(1)]
    );
    let calls: Vec<Append> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            let (expected, first) = if i == 120 { (1, 2) } else { (0, 1) };
            let id_of = |k: u64| {
                if i == 120 {
                    "dup".into()
                } else {
                    format!("m{i}-{k}")
                }
            };
            let pages = vec![
                events(vec![deposit(first, &id_of(first), 10, 10)]),
                events(vec![deposit(first + 1, &format!("m{i}-next"), 5, 15)]),
            ];
            append(id, expected, pages)
        })
        .collect();
    let results = store.append(calls).await;
    assert_eq!(results.len(), ids.len());
    for (i, r) in results.iter().enumerate() {
        let want = match i {
            70 => stopped(0, AppendError::Conflict { current: 1 }),
            120 => stopped(0, AppendError::DuplicateTxn(txn("dup"))),
            _ => ok(2),
        };
        assert_eq!(r, &want, "account {i}");
    }
    assert_eq!(store.tip(&ids[0]).await.unwrap().version, 2);
    assert_eq!(store.tip(&ids[149]).await.unwrap().version, 2);
    assert_eq!(store.tip(&ids[70]).await.unwrap().version, 1);
    assert_eq!(store.txn(&ids[70], &txn("m70-1")).await.unwrap(), None);
    assert_eq!(store.tip(&ids[120]).await.unwrap().version, 1);
}

/// An account that appears more than once in one call is appended as if by calls in that
/// order: a second append at a version the first took conflicts, one that continues the
/// first goes on, and one that continues a failed first is a conflict at the real tip, never
/// a page written past a gap. The other accounts of the call are untouched by all of it.
pub async fn an_account_twice_in_one_call_is_appended_in_order<S: EventStore>(store: S) {
    let (a, b, d) = (
        AccountId::new("twice-a").unwrap(),
        AccountId::new("twice-b").unwrap(),
        AccountId::new("twice-d").unwrap(),
    );
    // d has no event but has refused "dd": a page booking "dd" fails as a duplicate.
    let refused = PageWrite {
        events: vec![],
        refusals: vec![refusal("dd", 5, 0, 0), refusal("dd2", 5, 0, 0)],
    };
    assert_eq!(
        store.append(vec![append(&d, 0, vec![refused])]).await,
        vec![ok(1)]
    );
    let results = store
        .append(vec![
            append(&a, 0, vec![events(vec![deposit(1, "a1", 10, 10)])]),
            append(&b, 0, vec![events(vec![deposit(1, "b1", 7, 7)])]),
            append(&a, 0, vec![events(vec![deposit(1, "a1x", 3, 3)])]),
            append(&a, 1, vec![events(vec![deposit(2, "a2", 5, 15)])]),
            append(&d, 0, vec![events(vec![deposit(1, "dd", 1, 1)])]),
            append(&d, 1, vec![events(vec![deposit(2, "d2", 1, 2)])]),
        ])
        .await;
    assert_eq!(
        results,
        vec![
            ok(1),
            ok(1),
            stopped(0, AppendError::Conflict { current: 1 }),
            ok(1),
            stopped(0, AppendError::DuplicateTxn(txn("dd"))),
            stopped(0, AppendError::Conflict { current: 0 }),
        ]
    );
    assert_eq!(store.tip(&a).await.unwrap().version, 2);
    assert_eq!(store.txn(&a, &txn("a1x")).await.unwrap(), None);
    assert_eq!(store.tip(&b).await.unwrap().version, 1);
    assert_eq!(store.tip(&d).await.unwrap().version, 0);
    assert_eq!(store.txn(&d, &txn("d2")).await.unwrap(), None);
    assert!(
        store.read(&d, 1, 10).await.unwrap().is_empty(),
        "no page past a gap"
    );
}

/// A call retried after a timeout that hid its commit succeeds again whatever travels with
/// it: here the retry carries the accounts alone, or with a further page, where the first
/// call carried them together (a DynamoDB transaction of other accounts, another token).
pub async fn a_retry_is_recognised_whatever_travels_with_it<S: EventStore>(store: S) {
    let (x, y, z) = (
        AccountId::new("regroup-x").unwrap(),
        AccountId::new("regroup-y").unwrap(),
        AccountId::new("regroup-z").unwrap(),
    );
    let x_page = events(vec![deposit(1, "x1", 100, 100), deposit(2, "x2", 1, 101)]);
    let y_page = PageWrite {
        events: vec![deposit(1, "y1", 10, 10)],
        refusals: vec![refusal("y2", 50, 10, 1)],
    };
    let z_page = PageWrite {
        events: vec![],
        refusals: vec![refusal("z1", 5, 0, 0), refusal("z2", 6, 0, 0)],
    };
    let first = store
        .append(vec![
            append(&x, 0, vec![x_page.clone()]),
            append(&y, 0, vec![y_page.clone()]),
            append(&z, 0, vec![z_page.clone()]),
        ])
        .await;
    assert_eq!(first, vec![ok(1), ok(1), ok(1)]);
    let x_next = events(vec![deposit(3, "x3", 1, 102)]);
    assert_eq!(
        store
            .append(vec![append(&y, 0, vec![y_page.clone()])])
            .await,
        vec![ok(1)]
    );
    assert_eq!(
        store
            .append(vec![
                append(&z, 0, vec![z_page.clone()]),
                append(&x, 0, vec![x_page.clone(), x_next]),
            ])
            .await,
        vec![ok(1), ok(2)]
    );
    assert_eq!(store.read(&x, 1, 10).await.unwrap().len(), 3);
    assert_eq!(store.read(&y, 1, 10).await.unwrap().len(), 1);
    // Another writer's refusals under the same ids are not ours: still duplicates.
    let other = PageWrite {
        events: vec![],
        refusals: vec![refusal("z1", 5, 0, 0), refusal("z2", 7, 0, 0)],
    };
    assert_eq!(
        store.append(vec![append(&z, 0, vec![other])]).await,
        vec![stopped(0, AppendError::DuplicateTxn(txn("z1")))]
    );
}

/// `load_many` answers each account as `load` does (outcomes always read, whatever account
/// they belong to), and a known tip comes back as given when the store skips reading it.
pub async fn load_many_answers_each_account_as_load_does<S: EventStore>(store: S) {
    let (booked, refused, empty) = (
        AccountId::new("lm-booked").unwrap(),
        AccountId::new("lm-refused").unwrap(),
        AccountId::new("lm-empty").unwrap(),
    );
    let page = PageWrite {
        events: vec![deposit(1, "b1", 100, 100), deposit(2, "b2", 5, 105)],
        refusals: vec![refusal("b3", 500, 105, 2)],
    };
    let refusals = PageWrite {
        events: vec![],
        refusals: vec![refusal("r1", 5, 0, 0)],
    };
    assert_eq!(
        store
            .append(vec![
                append(&booked, 0, vec![page]),
                append(&refused, 0, vec![refusals]),
            ])
            .await,
        vec![ok(1), ok(1)]
    );
    let ids = |names: &[&str]| names.iter().map(|n| txn(n)).collect::<Vec<_>>();
    let loads = vec![
        Load {
            account: booked.clone(),
            txns: ids(&["b2", "zz", "b3", "b1"]),
            known: None,
        },
        Load {
            account: refused.clone(),
            // The same id as another account's: outcomes are per account.
            txns: ids(&["r1", "b1"]),
            known: None,
        },
        Load {
            account: empty.clone(),
            txns: ids(&["b1"]),
            known: None,
        },
    ];
    let many = store.load_many(loads.clone()).await;
    assert_eq!(many.len(), 3);
    for (l, got) in loads.iter().zip(&many) {
        let got = got.as_ref().unwrap();
        let (tip, outcomes) = store.load(&l.account, &l.txns).await.unwrap();
        assert_eq!((got.tip, &got.outcomes, got.fresh), (tip, &outcomes, true));
    }
    assert!(many[0].as_ref().unwrap().outcomes[1].is_none());
    assert!(many[1].as_ref().unwrap().outcomes[0].is_some());
    assert!(many[1].as_ref().unwrap().outcomes[1].is_none());
    // A known tip: either read again (fresh) or handed back as given; outcomes still read.
    let stale = AccountState {
        version: 1,
        balance: Money(100),
    };
    let known = store
        .load_many(vec![Load {
            account: booked.clone(),
            txns: ids(&["b1"]),
            known: Some(stale),
        }])
        .await
        .pop()
        .unwrap()
        .unwrap();
    assert!(known.outcomes[0].is_some());
    if known.fresh {
        assert_eq!(known.tip.version, 2);
    } else {
        assert_eq!(known.tip, stale);
    }
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
async fn embedded_each_of_many_accounts_in_one_call_gets_its_own_result() {
    each_of_many_accounts_in_one_call_gets_its_own_result(EmbeddedStore::in_memory().unwrap())
        .await;
}

#[tokio::test]
async fn embedded_an_account_twice_in_one_call_is_appended_in_order() {
    an_account_twice_in_one_call_is_appended_in_order(EmbeddedStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn embedded_a_retry_is_recognised_whatever_travels_with_it() {
    a_retry_is_recognised_whatever_travels_with_it(EmbeddedStore::in_memory().unwrap()).await;
}

#[tokio::test]
async fn embedded_load_many_answers_each_account_as_load_does() {
    load_many_answers_each_account_as_load_does(EmbeddedStore::in_memory().unwrap()).await;
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

/// The versions `read` returns for `from..=to`.
async fn read_versions<S: EventStore>(
    store: &S,
    account: &AccountId,
    from: u64,
    to: u64,
) -> Vec<u64> {
    let events = store.read(account, from, to).await.unwrap();
    events.iter().map(|e| e.version).collect()
}

/// A fresh `dir` holding a bare redb file written by `fill`: a data dir as another layout
/// left it.
fn raw_data_dir(dir: &std::path::Path, fill: impl FnOnce(&redb::WriteTransaction)) {
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).unwrap();
    let db = redb::Database::create(dir.join("tally.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    fill(&tx);
    tx.commit().unwrap();
}

/// A data dir written by an older layout (a row per booked txn id) is refused by name rather
/// than read wrongly.
#[test]
fn embedded_an_older_data_dir_is_refused_naming_its_layout() {
    let dir = std::env::temp_dir().join(format!("tally-layout-{}", std::process::id()));
    raw_data_dir(&dir, |tx| {
        let def: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
        let mut t = tx.open_table(def).unwrap();
        t.insert(b"a\0\0\0\0\0\0\0\0\x01".as_slice(), b"x".as_slice())
            .unwrap();
    });
    let err = EmbeddedStore::open(&dir).err().expect("refused");
    assert!(err.to_string().contains("store layout 1"), "{err}");
    // Named as what it is: an older layout, not corrupt data.
    assert!(matches!(err, StoreError::Incompatible(_)), "{err:?}");
    assert!(!err.to_string().contains("corrupt"), "{err}");
    // Layout 2 (before the attempt prefix) is refused by name too.
    raw_data_dir(&dir, |tx| {
        let def: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        tx.open_table(def).unwrap().insert("layout", 2).unwrap();
    });
    let err = EmbeddedStore::open(&dir).err().expect("refused");
    assert!(err.to_string().contains("store layout 2"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A data dir of layout 3 (pages keyed by account) is upgraded when opened: its pages read
/// back, its ids keep their outcomes, appends continue, and it opens again as layout 4.
#[tokio::test]
async fn embedded_a_layout_3_data_dir_is_upgraded_in_place() {
    let dir = std::env::temp_dir().join(format!("tally-upgrade-{}", std::process::id()));
    let acct = AccountId::new("up").unwrap();
    raw_data_dir(&dir, |tx| {
        let meta: redb::TableDefinition<&str, u64> = redb::TableDefinition::new("meta");
        tx.open_table(meta).unwrap().insert("layout", 3).unwrap();
        let events: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("events");
        let mut events = tx.open_table(events).unwrap();
        let pages = [
            vec![deposit(1, "u1", 100, 100), deposit(2, "u2", 5, 105)],
            vec![deposit(3, "u3", 1, 106)],
        ];
        for page in &pages {
            let mut key = b"up\0".to_vec();
            key.extend_from_slice(&page[0].version.to_be_bytes());
            let mut value = ATTEMPT.to_le_bytes().to_vec();
            value.extend_from_slice(&tally::codec::encode_events(&acct, page).unwrap());
            events.insert(key.as_slice(), value.as_slice()).unwrap();
        }
        let tips: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("tips");
        let tip = tally::codec::stored::encode_tip(&AccountState::after(&pages[1][0]));
        tx.open_table(tips)
            .unwrap()
            .insert("up", tip.as_slice())
            .unwrap();
    });
    {
        let store = EmbeddedStore::open(&dir).unwrap();
        assert_eq!(read_versions(&store, &acct, 1, 9).await, [1, 2, 3]);
        assert_eq!(store.indexed_txns(), 3);
        assert!(matches!(
            store.txn(&acct, &txn("u2")).await.unwrap(),
            Some(TxnOutcome::Booked { .. })
        ));
        let again = events(vec![deposit(4, "u2", 5, 111)]);
        assert_eq!(
            store.append(vec![append(&acct, 3, vec![again])]).await,
            vec![stopped(0, AppendError::DuplicateTxn(txn("u2")))]
        );
        let next = events(vec![deposit(4, "u4", 5, 111)]);
        assert_eq!(
            store.append(vec![append(&acct, 3, vec![next])]).await,
            vec![ok(1)]
        );
    }
    {
        let db = redb::Database::create(dir.join("tally.redb")).unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let names: Vec<String> = tx
            .list_tables()
            .unwrap()
            .map(|t| redb::TableHandle::name(&t).to_owned())
            .collect();
        assert!(!names.iter().any(|n| n == "events"), "{names:?}");
    }
    let store = EmbeddedStore::open(&dir).unwrap();
    assert_eq!(store.tip(&acct).await.unwrap().version, 4);
    assert_eq!(store.read(&acct, 2, 4).await.unwrap().len(), 3);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Pages are stored in commit order (each commit's pages after every earlier one: the right
/// edge of the tree), whatever their accounts, and an account's events read back whole from
/// any version after a restart, however its pages interleave with other accounts'.
#[tokio::test]
async fn embedded_pages_are_stored_in_commit_order_and_read_back_by_account() {
    let dir = std::env::temp_dir().join(format!("tally-pages-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (a, b) = (AccountId::new("a").unwrap(), AccountId::new("b").unwrap());
    {
        let store = EmbeddedStore::open(&dir).unwrap();
        // Commit 1: b's first page. Commit 2: a then b. Commit 3: a.
        let b1 = events(vec![deposit(1, "b1", 10, 10), deposit(2, "b2", 10, 20)]);
        assert_eq!(
            store.append(vec![append(&b, 0, vec![b1])]).await,
            vec![ok(1)]
        );
        let a1 = events(vec![deposit(1, "a1", 1, 1)]);
        let b3 = events(vec![deposit(3, "b3", 10, 30)]);
        assert_eq!(
            store
                .append(vec![append(&a, 0, vec![a1]), append(&b, 2, vec![b3])])
                .await,
            vec![ok(1), ok(1)]
        );
        let a2 = events(vec![deposit(2, "a2", 1, 2), deposit(3, "a3", 1, 3)]);
        let a4 = events(vec![deposit(4, "a4", 1, 4)]);
        assert_eq!(
            store.append(vec![append(&a, 1, vec![a2, a4])]).await,
            vec![ok(2)]
        );
    }
    {
        let db = redb::Database::create(dir.join("tally.redb")).unwrap();
        let tx = redb::ReadableDatabase::begin_read(&db).unwrap();
        let def: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("pages");
        let table = tx.open_table(def).unwrap();
        let stored: Vec<(u64, String, u64)> = redb::ReadableTable::iter(&table)
            .unwrap()
            .map(|e| {
                let (k, v) = e.unwrap();
                // The value is the attempt (8 bytes), then the page.
                let page = tally::codec::decode_page(&v.value()[8..]).unwrap();
                let first = page.events()[0].version;
                (k.value(), page.account.as_str().to_owned(), first)
            })
            .collect();
        let expected = [
            (1, "b", 1),
            (2, "a", 1),
            (3, "b", 3),
            (4, "a", 2),
            (5, "a", 4),
        ];
        let expected: Vec<(u64, String, u64)> = expected
            .iter()
            .map(|&(seq, acct, first)| (seq, acct.to_owned(), first))
            .collect();
        assert_eq!(stored, expected);
    }
    let store = EmbeddedStore::open(&dir).unwrap();
    assert_eq!(read_versions(&store, &a, 1, 4).await, [1, 2, 3, 4]);
    assert_eq!(read_versions(&store, &a, 3, 9).await, [3, 4]);
    assert_eq!(read_versions(&store, &b, 2, 3).await, [2, 3]);
    assert_eq!(read_versions(&store, &b, 4, 9).await, Vec::<u64>::new());
    // The next commit continues the sequence after a restart, and the ids stay known.
    let a5 = events(vec![deposit(5, "a5", 1, 5)]);
    assert_eq!(
        store.append(vec![append(&a, 4, vec![a5])]).await,
        vec![ok(1)]
    );
    assert_eq!(read_versions(&store, &a, 4, 5).await, [4, 5]);
    let again = events(vec![deposit(6, "b1", 1, 6)]);
    assert_eq!(
        store.append(vec![append(&a, 5, vec![again.clone()])]).await,
        vec![ok(1)],
        "b1 is b's id, a new one for a"
    );
    let dup = events(vec![deposit(4, "b3", 1, 31)]);
    assert_eq!(
        store.append(vec![append(&b, 3, vec![dup])]).await,
        vec![stopped(0, AppendError::DuplicateTxn(txn("b3")))]
    );
    drop(store);
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
