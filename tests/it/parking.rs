//! Per-account parking (DESIGN.md step 3) on both backends (DynamoDB Local skipped, saying
//! so, without the emulators): an account whose events cannot be folded is parked with its
//! first failing version, the record and the error, never blocks its shard, has its later
//! records skipped, and is projected and unparked by a redrive once the cause is fixed;
//! events that still do not fold stay parked. A catch-up parks such an account and goes on.
//! The CLI (`tally parked list|redrive`) says what it did and exits 1 while any stays.

use std::sync::Arc;

use tally::adapters::embedded::EmbeddedStore;
use tally::codec::{WireAggregate, WirePage, encode_aggregate};
use tally::domain::{AccountId, Event, Money, Page, Snapshot, Timestamp};
use tally::ports::{
    Append, EventStore, PageWrite, Parked, Quarantine, QuarantineAdmin, SnapshotPut, SnapshotStore,
};
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;
use tally::service::quarantine::{parked, redrive_parked};

use crate::aws::store;
use crate::harness::{Ledger, batch_of, tally_bin};
use crate::reference::RefCmd;

/// `n` deposits of one account (amounts 100, 101, …), as decided.
fn deposits(tag: &str, n: usize) -> Ledger {
    let mut ledger = Ledger::default();
    for i in 0..n {
        let at = 1_793_523_600_000 + (i as i64) * 3_600_000;
        ledger.must(
            &RefCmd::Deposit {
                txn: format!("{tag}-{i}"),
                amount: 100 + i as i64,
                at,
            },
            at + 1,
        );
    }
    ledger
}

fn record(account: &str, events: &[Event]) -> Vec<u8> {
    let page = Page::new(AccountId::new(account).unwrap(), events.to_vec()).unwrap();
    encode_aggregate(&WireAggregate {
        pages: vec![WirePage::from_page(&page)],
    })
    .unwrap()
    .to_vec()
}

/// Writes `events` (continuing `after`) straight into the event store, as they are.
async fn append<S: EventStore>(store: &S, account: &str, after: u64, events: &[Event]) {
    let done = store
        .append(vec![Append {
            account: AccountId::new(account).unwrap(),
            expected_version: after,
            pages: vec![PageWrite {
                events: events.to_vec(),
                refusals: vec![],
            }],
            attempt: 1,
            decided_at: events.first().map_or(Timestamp::MIN, |e| e.recorded_at),
        }])
        .await;
    assert_eq!(done[0].error, None, "{done:?}");
}

fn projector<S>(store: &S) -> (Projector<S, S, S>, Arc<Metrics>)
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let metrics = Arc::new(Metrics::default());
    let p = Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1_000,
        metrics.clone(),
    );
    (p, metrics)
}

fn count(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// The cause is in the read model: the stored snapshot of `bad` was altered (an edited
/// Balances item), so its next events do not fold onto it.
async fn an_account_that_does_not_fold_is_parked_skipped_and_redriven<S>(store: S)
where
    S: EventStore + SnapshotStore + QuarantineAdmin + Clone,
{
    let mut bad = deposits("bad", 4);
    let good = deposits("good", 2);
    append(&store, "bad", 0, &bad.events).await;
    append(&store, "good", 0, &good.events).await;
    let (first, _) = projector(&store);
    assert!(
        first
            .project(&batch_of(&[record("bad", &bad.events[..1])]))
            .await
            .failed
            .is_empty()
    );
    let mut altered = store.get("bad").await.unwrap().unwrap();
    assert_eq!(altered.version, 1);
    // Altered consistently (credits too), so only the next event's carried balance tells.
    altered.balance = Money(altered.balance.0 + 999);
    altered.credit_total += 999;
    let put = SnapshotPut {
        account: "bad".into(),
        expected_version: 1,
        snapshot: altered,
    };
    assert_eq!(store.put_many(vec![put]).await, vec![Ok(())]);

    // One batch: the account that does not fold is parked, the other goes on.
    let (p, metrics) = projector(&store);
    let records = [
        record("bad", &bad.events[1..3]),
        record("good", &good.events),
    ];
    let done = p.project(&batch_of(&records)).await;
    assert!(
        done.failed.is_empty(),
        "a parked account never blocks its shard: {done:?}"
    );
    assert_eq!(store.get("good").await.unwrap().map(|s| s.version), Some(2));
    assert_eq!(
        store.get("bad").await.unwrap(),
        Some(altered),
        "left as it was"
    );
    let list = parked(&store).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (
            list[0].account.as_str(),
            list[0].version,
            list[0].shard.as_str(),
            list[0].sequence_number.as_str()
        ),
        ("bad", 2, "shardId-000000000000", "1000")
    );
    assert!(
        list[0].error.contains("carries balance"),
        "{}",
        list[0].error
    );
    assert_eq!(count(&metrics.accounts_parked), 1);

    // Its later records are skipped, not failed, and change nothing.
    let done = p
        .project(&batch_of(&[record("bad", &bad.events[3..4])]))
        .await;
    assert!(done.failed.is_empty(), "{done:?}");
    assert_eq!(count(&metrics.parked_groups_skipped), 1);
    assert_eq!(store.get("bad").await.unwrap(), Some(altered));

    // A projector that never saw it parked meets the same fault; the first record is kept.
    let (fresh, fresh_metrics) = projector(&store);
    let done = fresh
        .project(&batch_of(&[record("bad", &bad.events[3..4])]))
        .await;
    assert!(done.failed.is_empty(), "{done:?}");
    assert_eq!(count(&fresh_metrics.accounts_parked), 0, "parked once");
    assert_eq!(parked(&store).await.unwrap(), list);
    assert_eq!(store.get("bad").await.unwrap(), Some(altered));

    // Nor does a catch-up (the embedded start, or the AWS backstop's path) move it behind
    // the operator's back, though it lags its events.
    let report = fresh.catch_up().await.unwrap();
    assert_eq!((report.caught_up, report.parked), (0, 1), "{report:?}");
    assert_eq!(store.get("bad").await.unwrap(), Some(altered));

    // The redrive finds the stored snapshot is what does not fold, folds from the first
    // event instead, replaces it and unparks.
    let redriven = redrive_parked(&p, &store, &[]).await.unwrap();
    assert_eq!(redriven.unparked, vec![("bad".to_owned(), 4)]);
    assert!(redriven.still_parked.is_empty() && redriven.not_parked.is_empty());
    assert_eq!(store.get("bad").await.unwrap(), Some(bad.snapshot));
    assert!(parked(&store).await.unwrap().is_empty());

    // The projector that knew it parked sees the unpark: the next event projects.
    bad.must(
        &RefCmd::Deposit {
            txn: "bad-after".into(),
            amount: 7,
            at: 1_793_600_000_000,
        },
        1_793_600_000_001,
    );
    append(&store, "bad", 4, &bad.events[4..]).await;
    let done = p
        .project(&batch_of(&[record("bad", &bad.events[4..])]))
        .await;
    assert!(done.failed.is_empty(), "{done:?}");
    assert_eq!(store.get("bad").await.unwrap(), Some(bad.snapshot));
}

/// The cause is in the event store itself (an event whose carried balance is wrong): no
/// redrive can fold it, so the account stays parked, with today's error. A catch-up over
/// every account parks it too and still brings the account after it up to date.
async fn events_that_never_fold_stay_parked_and_a_catch_up_goes_past_them<S>(store: S)
where
    S: EventStore + SnapshotStore + QuarantineAdmin + Clone,
{
    let mut broken = deposits("broken", 3).events;
    broken[1].balance = Money(broken[1].balance.0 + 1);
    broken[2].balance = Money(broken[2].balance.0 + 1);
    append(&store, "a-broken", 0, &broken).await;
    let lagging = deposits("lagging", 3);
    append(&store, "b-lagging", 0, &lagging.events).await;

    let (p, metrics) = projector(&store);
    let report = p.catch_up().await.unwrap();
    assert_eq!(
        (report.accounts, report.caught_up, report.parked),
        (2, 1, 1)
    );
    assert_eq!(
        store.get("b-lagging").await.unwrap(),
        Some(lagging.snapshot)
    );
    assert_eq!(count(&metrics.accounts_parked), 1);
    let list = parked(&store).await.unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((list[0].account.as_str(), list[0].version), ("a-broken", 2));
    assert_eq!(list[0].shard, "", "a catch-up met it, not a stream record");
    assert_eq!(
        store.get("a-broken").await.unwrap(),
        None,
        "nothing written for an account that does not fold"
    );

    // Its stream records are skipped too.
    let done = p.project(&batch_of(&[record("a-broken", &broken)])).await;
    assert!(done.failed.is_empty(), "{done:?}");

    let redriven = redrive_parked(&p, &store, &["a-broken".into(), "nobody".into()])
        .await
        .unwrap();
    assert!(redriven.unparked.is_empty(), "{redriven:?}");
    assert_eq!(redriven.not_parked, vec!["nobody".to_owned()]);
    assert_eq!(redriven.still_parked.len(), 1);
    let again: &Parked = &redriven.still_parked[0];
    assert_eq!((again.account.as_str(), again.version), ("a-broken", 2));
    assert!(again.error.contains("carries balance"), "{}", again.error);
    assert_eq!(parked(&store).await.unwrap().len(), 1, "still parked");
    assert_eq!(store.get("a-broken").await.unwrap(), None);

    // A replay rewrites every other snapshot and names the account it cannot.
    let replayed = tally::service::audit::replay(&store, &store).await.unwrap();
    assert_eq!(replayed.accounts, 1);
    assert_eq!(replayed.unfoldable.len(), 1);
    assert_eq!(replayed.unfoldable[0].0, "a-broken");

    // One account a redrive cannot finish does not stop it for the others.
    let healthy = deposits("healthy", 2);
    append(&store, "c-healthy", 0, &healthy.events).await;
    for account in ["b name", "c-healthy"] {
        let p = Parked {
            account: account.into(),
            version: 1,
            shard: String::new(),
            sequence_number: String::new(),
            error: "parked by hand".into(),
        };
        assert!(store.park(p).await.unwrap());
    }
    // Parked, its events waiting: a catch-up (the backstop's path) leaves it to the redrive
    // even though they would fold.
    let report = p.catch_up().await.unwrap();
    assert_eq!(report.parked, 2, "{report:?}");
    assert_eq!(store.get("c-healthy").await.unwrap(), None);
    let redriven = redrive_parked(&p, &store, &[]).await.unwrap();
    assert_eq!(redriven.unparked, vec![("c-healthy".to_owned(), 2)]);
    assert_eq!(redriven.errors.len(), 1, "{redriven:?}");
    assert_eq!(redriven.errors[0].0, "b name");
    assert_eq!(redriven.still_parked.len(), 1, "a-broken");
    assert_eq!(
        store.get("c-healthy").await.unwrap(),
        Some(healthy.snapshot)
    );
}

/// Altered Balances items a fold cannot see through: one ahead of its events (the next
/// events would pass for duplicates) and one whose figures do not add up. A catch-up parks
/// the first, a batch parks the second (no panic, other accounts go on), and a redrive
/// rebuilds both from their first event.
async fn altered_snapshots_are_parked_and_rebuilt_by_a_redrive<S>(store: S)
where
    S: EventStore + SnapshotStore + QuarantineAdmin + Clone,
{
    let ahead = deposits("ahead", 3);
    let totals = deposits("totals", 3);
    let other = deposits("other", 2);
    for (account, l) in [("ahead", &ahead), ("totals", &totals), ("other", &other)] {
        append(&store, account, 0, &l.events).await;
    }
    let (p, _) = projector(&store);
    let records = [
        record("ahead", &ahead.events),
        record("totals", &totals.events[..1]),
    ];
    assert!(p.project(&batch_of(&records)).await.failed.is_empty());
    let mut moved = ahead.snapshot;
    moved.version = 10;
    let mut bad_totals = store.get("totals").await.unwrap().unwrap();
    bad_totals.credit_total += 1;
    for (account, from, snapshot) in [("ahead", 3, moved), ("totals", 1, bad_totals)] {
        let put = SnapshotPut {
            account: account.into(),
            expected_version: from,
            snapshot,
        };
        assert_eq!(store.put_many(vec![put]).await, vec![Ok(())]);
    }

    let (p, _) = projector(&store);
    let report = p.catch_up().await.unwrap();
    assert_eq!(report.parked, 2, "{report:?}");
    let list = parked(&store).await.unwrap();
    let of = |a: &str| list.iter().find(|p| p.account == a).cloned().unwrap();
    assert!(
        of("ahead").error.contains("ahead of the newest event 3"),
        "{list:?}"
    );
    assert!(of("totals").error.contains("does not add up"), "{list:?}");
    assert_eq!(store.get("other").await.unwrap(), Some(other.snapshot));

    // A stream batch meets the altered totals too: parked, not a panic, and not a failure.
    let (fresh, _) = projector(&store);
    let done = fresh
        .project(&batch_of(&[record("totals", &totals.events[1..])]))
        .await;
    assert!(done.failed.is_empty(), "{done:?}");

    // Neither is ever served as a balance while it is wrong.
    let query = tally::service::query::QueryService::new(store.clone(), store.clone());
    for account in ["ahead", "totals"] {
        let read = query.balance(&AccountId::new(account).unwrap()).await;
        assert!(
            matches!(read, Err(tally::ports::StoreError::Corrupt(_))),
            "{account}: {read:?}"
        );
    }

    let redriven = redrive_parked(&p, &store, &[]).await.unwrap();
    assert_eq!(
        redriven.unparked,
        vec![("ahead".to_owned(), 3), ("totals".to_owned(), 3)]
    );
    assert_eq!(store.get("ahead").await.unwrap(), Some(ahead.snapshot));
    assert_eq!(store.get("totals").await.unwrap(), Some(totals.snapshot));
    assert!(parked(&store).await.unwrap().is_empty());
    let read = query.balance(&AccountId::new("ahead").unwrap()).await;
    assert_eq!(read, Ok(Some(ahead.snapshot)));
}

/// A live projector that swallowed events against an altered item ahead of them holds that
/// item in its cache; once the account is parked and redriven elsewhere, it must fold the
/// next event onto the rebuild, not skip it as a duplicate of what it cached (and park the
/// account again for a cause the redrive removed).
async fn a_live_projector_forgets_what_it_cached_of_a_parked_account<S>(store: S)
where
    S: EventStore + SnapshotStore + QuarantineAdmin + Clone,
{
    let mut ahead = deposits("live", 4);
    append(&store, "live", 0, &ahead.events[..3]).await;
    let (first, _) = projector(&store);
    let done = first
        .project(&batch_of(&[record("live", &ahead.events[..3])]))
        .await;
    assert!(done.failed.is_empty());
    let mut moved = store.get("live").await.unwrap().unwrap();
    moved.version = 10;
    let put = SnapshotPut {
        account: "live".into(),
        expected_version: 3,
        snapshot: moved,
    };
    assert_eq!(store.put_many(vec![put]).await, vec![Ok(())]);

    let (live, _) = projector(&store);
    append(&store, "live", 3, &ahead.events[3..4]).await;
    let done = live
        .project(&batch_of(&[record("live", &ahead.events[3..4])]))
        .await;
    assert!(done.failed.is_empty());
    assert_eq!(
        store.get("live").await.unwrap(),
        Some(moved),
        "swallowed as a duplicate: what the alteration does"
    );
    assert_eq!(live.catch_up().await.unwrap().parked, 1);

    let (operator, _) = projector(&store);
    let redriven = redrive_parked(&operator, &store, &[]).await.unwrap();
    assert_eq!(redriven.unparked, vec![("live".to_owned(), 4)]);

    ahead.must(
        &RefCmd::Deposit {
            txn: "live-after".into(),
            amount: 11,
            at: 1_793_600_000_000,
        },
        1_793_600_000_001,
    );
    append(&store, "live", 4, &ahead.events[4..]).await;
    let done = live
        .project(&batch_of(&[record("live", &ahead.events[4..])]))
        .await;
    assert!(done.failed.is_empty(), "{done:?}");
    assert_eq!(store.get("live").await.unwrap(), Some(ahead.snapshot));
    assert!(parked(&store).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_live_projector_forgets_what_it_cached_of_a_parked_account() {
    a_live_projector_forgets_what_it_cached_of_a_parked_account(
        EmbeddedStore::in_memory().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_live_projector_forgets_what_it_cached_of_a_parked_account() {
    if let Some(s) = store("parking-live").await {
        a_live_projector_forgets_what_it_cached_of_a_parked_account(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_altered_snapshots_are_parked_and_rebuilt_by_a_redrive() {
    altered_snapshots_are_parked_and_rebuilt_by_a_redrive(EmbeddedStore::in_memory().unwrap())
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_altered_snapshots_are_parked_and_rebuilt_by_a_redrive() {
    if let Some(s) = store("parking-altered").await {
        altered_snapshots_are_parked_and_rebuilt_by_a_redrive(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_an_account_that_does_not_fold_is_parked_skipped_and_redriven() {
    an_account_that_does_not_fold_is_parked_skipped_and_redriven(
        EmbeddedStore::in_memory().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_an_account_that_does_not_fold_is_parked_skipped_and_redriven() {
    if let Some(s) = store("parking-redrive").await {
        an_account_that_does_not_fold_is_parked_skipped_and_redriven(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_events_that_never_fold_stay_parked_and_a_catch_up_goes_past_them() {
    events_that_never_fold_stay_parked_and_a_catch_up_goes_past_them(
        EmbeddedStore::in_memory().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_events_that_never_fold_stay_parked_and_a_catch_up_goes_past_them() {
    if let Some(s) = store("parking-stays").await {
        events_that_never_fold_stay_parked_and_a_catch_up_goes_past_them(s).await;
    }
}

/// What an operator runs when the `AccountsParked` alarm fires, on the embedded backend
/// (the AWS flags are covered in `aws_cli`): the list names the account, its failing version
/// and the error; a redrive that cannot fold it says so and exits 1; after the cause is
/// fixed (here: the altered snapshot), a redrive projects it and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_parked_list_and_redrive_on_the_embedded_backend() {
    let dir = std::env::temp_dir().join(format!("tally-parked-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let bad = deposits("cli", 3);
    {
        let store = EmbeddedStore::open(&dir).unwrap();
        append(&store, "cli-acct", 0, &bad.events).await;
        let (p, _) = projector(&store);
        // The cause: an altered Balances item at version 1.
        let mut one = Snapshot::default();
        tally::domain::apply(&mut one, &bad.events[0]).unwrap();
        one.balance = Money(one.balance.0 - 1);
        one.credit_total -= 1;
        let put = SnapshotPut {
            account: "cli-acct".into(),
            expected_version: 0,
            snapshot: one,
        };
        assert_eq!(store.put_many(vec![put]).await, vec![Ok(())]);
        let done = p
            .project(&batch_of(&[record("cli-acct", &bad.events[1..])]))
            .await;
        assert!(done.failed.is_empty(), "{done:?}");
        assert_eq!(parked(&store).await.unwrap().len(), 1);
    }
    let run = |args: &[&str]| {
        let out = tally_bin()
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["parked", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("cli-acct\tversion 2\tshardId-000000000000/1000\tevent 2 carries balance"),
        "{out}"
    );
    assert!(out.contains("1 parked accounts"), "{out}");
    let (code, out, err) = run(&["parked", "redrive", "cli-acct"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("unparked\tcli-acct\tprojected to version 3"),
        "{out}"
    );
    assert!(out.contains("unparked 1 accounts; 0 still parked"), "{out}");
    let (code, out, _) = run(&["parked", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("0 parked accounts"), "{out}");
    let (code, out, _) = run(&["parked", "redrive", "cli-acct"]);
    assert_eq!(code, Some(1), "a named account that is not parked: {out}");
    assert!(out.contains("not parked\tcli-acct"), "{out}");
    let store = EmbeddedStore::open(&dir).unwrap();
    assert_eq!(store.get("cli-acct").await.unwrap(), Some(bad.snapshot));
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same commands against DynamoDB Local (`--backend aws`): a parked account whose
/// events fold (the cause fixed) is listed, then projected and unparked by a redrive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_parked_list_and_redrive_on_dynamodb() {
    let Some(store) = store("parking-cli").await else {
        return;
    };
    let ledger = deposits("aws-cli", 3);
    append(&store, "aws-cli-acct", 0, &ledger.events).await;
    let parked_by_hand = Parked {
        account: "aws-cli-acct".into(),
        version: 2,
        shard: "shardId-000000000007".into(),
        sequence_number: "4711".into(),
        error: "a fold bug since fixed".into(),
    };
    assert!(store.park(parked_by_hand.clone()).await.unwrap());
    assert!(
        !store
            .park(Parked {
                version: 3,
                ..parked_by_hand.clone()
            })
            .await
            .unwrap(),
        "the first park record is kept"
    );
    let flags = crate::aws_cli::aws_flags(&store, "unused");
    let (code, out, err) = crate::aws_cli::run(&flags, &["parked", "list"]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("aws-cli-acct\tversion 2\tshardId-000000000007/4711\ta fold bug since fixed"),
        "{out}"
    );
    assert!(out.contains("1 parked accounts"), "{out}");
    let (code, out, err) = crate::aws_cli::run(&flags, &["parked", "redrive"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("unparked\taws-cli-acct\tprojected to version 3"),
        "{out}"
    );
    assert!(parked(&store).await.unwrap().is_empty());
    assert_eq!(
        store.get("aws-cli-acct").await.unwrap(),
        Some(ledger.snapshot)
    );
    assert!(
        store.quarantined().await.unwrap().is_empty(),
        "a parked item is not a quarantined record"
    );
}

/// A mistyped `--data-dir` is an error naming it, for every command that works on data
/// that must exist, and creates nothing (it used to create an empty store and report "0
/// parked accounts", "0 differences": a healthy-looking answer about the wrong ledger).
#[test]
fn a_mistyped_data_dir_is_an_error_and_creates_nothing() {
    let dir = std::env::temp_dir().join(format!("tally-no-such-dir-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // Fails, and says what on stderr.
    let failing = |args: &[&str]| {
        let out = tally_bin()
            .args(["--data-dir", dir.to_str().unwrap()])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    for args in [
        &["verify"][..],
        &["balance", "alice"],
        &["history", "alice"],
        &["replay"],
        &["parked", "list"],
        &["parked", "redrive"],
        &["quarantine", "list"],
        &["quarantine", "redrive"],
    ] {
        let err = failing(args);
        assert!(err.contains("no tally data there"), "{args:?}: {err}");
        assert!(!dir.exists(), "{args:?} created the data dir");
    }
    // A data dir that is a file is named as one, by readers and by `ingest` alike (found
    // from the outside: "no tally.redb" and "cannot create …: File exists").
    std::fs::write(&dir, "not a directory").unwrap();
    let csv = std::env::temp_dir().join(format!("tally-file-dir-{}.csv", std::process::id()));
    std::fs::write(&csv, "txn_id,account,kind,amount,occurred_at,reverses\n").unwrap();
    for args in [&["verify"][..], &["ingest", csv.to_str().unwrap()]] {
        let err = failing(args);
        assert!(
            err.contains("is a file, not a directory"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_file(&dir);
    let _ = std::fs::remove_file(&csv);
}
