//! The projector's batch fold: grouping keeps per-account order, duplicates skipped, gaps
//! and poison reported; and the projector around it under cache pressure and failed reads.

use std::sync::Arc;

use tally::adapters::embedded::EmbeddedStore;
use tally::codec::{WireAggregate, WirePage, encode_aggregate};
use tally::domain::{AccountId, Event, Page, Snapshot};
use tally::ports::SnapshotStore;
use tally::service::metrics::Metrics;
use tally::service::projector::{Projection, Projector, Stop, fold_group, group};

use crate::faults::Flaky;
use crate::harness::{Ledger, batch_of};
use crate::reference::RefCmd;

fn account_events(n: usize, seed: i64) -> Vec<Event> {
    let mut ledger = Ledger::default();
    for i in 0..n {
        let at = 1_793_523_600_000 + (i as i64) * 86_400_000 * 7; // weekly, across months
        ledger.must(
            &RefCmd::Deposit {
                txn: format!("d{seed}-{i}"),
                amount: 100 + i as i64,
                at,
            },
            at + 1,
        );
    }
    ledger.events
}

fn record(pages: &[(&str, &[Event])]) -> Vec<u8> {
    let pages = pages
        .iter()
        .map(|(a, evs)| {
            WirePage::from_page(&Page::new(AccountId::new(*a).unwrap(), evs.to_vec()).unwrap())
        })
        .collect();
    encode_aggregate(&WireAggregate { pages }).unwrap().to_vec()
}

/// A poison record whose first page names an account new to the batch leaves nothing of
/// it behind: the account's group starts at its first valid record, so a failure of that
/// group is reported there, not at the poison (which the mapping would redeliver and
/// quarantine again).
#[test]
fn a_poison_record_leaves_no_trace_in_the_groups_of_the_records_after_it() {
    let z = account_events(3, 9);
    let mut pages = vec![WirePage::from_page(
        &Page::new(AccountId::new("acct-z").unwrap(), z[0..1].to_vec()).unwrap(),
    )];
    let mut bad = pages[0].clone();
    bad.account = String::new(); // not an account id: the record is poison
    pages.push(bad);
    let records = vec![
        encode_aggregate(&WireAggregate { pages }).unwrap().to_vec(),
        record(&[("acct-y", &account_events(1, 8))]),
        record(&[("acct-z", &z)]),
    ];
    let batch = batch_of(&records);
    let grouped = group(&batch);
    assert_eq!(grouped.poison.len(), 1);
    assert_eq!(grouped.poison[0].record, 0);
    assert_eq!(
        grouped
            .groups
            .iter()
            .map(|g| (g.account, g.first_record, g.range.len()))
            .collect::<Vec<_>>(),
        [("acct-y", 1, 1), ("acct-z", 2, 3)]
    );
}

#[test]
fn a_batch_folds_to_one_write_per_account_with_duplicates_gaps_and_poison_reported() {
    let a = account_events(6, 1);
    let b = account_events(4, 2);
    let c = account_events(3, 3);
    let records = vec![
        record(&[("acct-a", &a[0..2]), ("acct-b", &b[0..1])]),
        b"poison: not a record".to_vec(),
        record(&[("acct-a", &a[1..4])]), // redelivers version 2
        record(&[("acct-b", &b[1..4])]),
        record(&[("acct-c", &c[2..3])]), // versions 1-2 missing
        record(&[("acct-a", &a[4..6])]),
    ];
    let batch = batch_of(&records);
    let grouped = group(&batch);
    assert_eq!(grouped.poison.len(), 1);
    assert_eq!(grouped.poison[0].record, 1);
    assert_eq!(
        grouped
            .groups
            .iter()
            .map(|g| (g.account, g.first_record))
            .collect::<Vec<_>>(),
        [("acct-a", 0), ("acct-b", 0), ("acct-c", 4)]
    );

    let folds: Vec<_> = grouped
        .groups
        .iter()
        .map(|g| fold_group(Snapshot::default(), grouped.effects_of(g)))
        .collect();
    let counts: Vec<(u32, u32, u64)> = folds
        .iter()
        .map(|f| (f.applied, f.duplicates, f.snapshot.version))
        .collect();
    assert_eq!(counts, [(6, 1, 6), (4, 0, 4), (0, 0, 0)]);
    let folded_a = a.iter().fold(Snapshot::default(), |mut s, e| {
        tally::domain::apply(&mut s, e).unwrap();
        s
    });
    assert_eq!(folds[0].snapshot, folded_a);
    assert_eq!(folds[0].stop, None);
    assert_eq!(
        folds[2].stop,
        Some(Stop::Gap {
            expected: 1,
            found: 3,
            at: 0
        })
    );
    // Folding the same batch again onto its result: everything is a duplicate.
    let again = fold_group(folds[0].snapshot, grouped.effects_of(&grouped.groups[0]));
    assert_eq!((again.applied, again.duplicates), (0, 7));
    assert_eq!(again.snapshot, folds[0].snapshot);
}

/// A cold start whose snapshot read fails: the accounts in the cache still project, only
/// those it had to load are reported, and a redelivery of the batch completes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_read_fails_only_the_accounts_not_cached() {
    let store = EmbeddedStore::in_memory().unwrap();
    let flaky = Flaky::new(store.clone());
    let projector = Projector::new(
        store.clone(),
        flaky.clone(),
        store.clone(),
        8,
        Arc::default(),
    );
    let warm = account_events(4, 21);
    let cold = account_events(2, 22);
    let first = batch_of(&[record(&[("acct-warm", &warm[..2])])]);
    assert_eq!(projector.project(&first).await, Projection::default());
    flaky
        .faults
        .get_many
        .store(1, std::sync::atomic::Ordering::SeqCst);
    let second = batch_of(&[
        record(&[("acct-cold", &cold[..])]),
        record(&[("acct-warm", &warm[2..])]),
    ]);
    let response = projector.project(&second).await;
    assert_eq!(flaky.faults.injected(), 1);
    assert_eq!(
        response.failed,
        [0],
        "only acct-cold's first record is reported"
    );
    assert_eq!(
        store.get("acct-warm").await.unwrap().map(|s| s.version),
        Some(4)
    );
    assert_eq!(store.get("acct-cold").await.unwrap(), None);
    assert_eq!(projector.project(&second).await, Projection::default());
    assert_eq!(
        store.get("acct-cold").await.unwrap().map(|s| s.version),
        Some(2)
    );
}

/// One batch over 50 accounts through a cache of 1 entry: every account is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_wider_than_the_cache_writes_every_account() {
    let store = EmbeddedStore::in_memory().unwrap();
    let metrics = Arc::new(Metrics::default());
    let projector = Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1,
        metrics.clone(),
    );
    let names: Vec<String> = (0..50).map(|i| format!("wide-{i}")).collect();
    let events = account_events(3, 23);
    for round in [0..2, 1..3] {
        let records: Vec<Vec<u8>> = names
            .iter()
            .map(|n| record(&[(n.as_str(), &events[round.clone()])]))
            .collect();
        assert_eq!(
            projector.project(&batch_of(&records)).await,
            Projection::default()
        );
    }
    for n in &names {
        assert_eq!(
            store.get(n).await.unwrap().map(|s| s.version),
            Some(3),
            "{n}"
        );
    }
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(metrics.events_projected.load(SeqCst), 150);
    assert_eq!(metrics.duplicates_skipped.load(SeqCst), 50);
}

/// A record the mapping gives up on (its account's snapshot writes fail past every retry)
/// is not lost: the give-up schedules a catch-up, which keeps failing while the store does
/// and projects the account once it recovers; only then does the stream count as drained.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_mapping_gave_up_on_is_projected_by_the_catch_up() {
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;
    use tally::adapters::embedded::stream::{EmbeddedStream, Mapping, spawn_consumers};
    use tally::domain::{Command, Money, Policy, Timestamp, TxnId};
    use tally::service::command::{CommandService, system_clock};

    let store = EmbeddedStore::in_memory().unwrap();
    let flaky = Flaky::new(store.clone());
    let metrics = Arc::new(Metrics::default());
    let projector = Arc::new(Projector::new(
        store.clone(),
        flaky.clone(),
        store.clone(),
        16,
        metrics.clone(),
    ));
    let stream = EmbeddedStream::new(1, metrics.clone());
    let mapping = Mapping {
        batch_size: 10,
        window: Duration::ZERO,
        retries_max: 1,
    };
    *flaky.faults.only.lock().unwrap() = Some("stuck".into());
    flaky.faults.put.store(u32::MAX, SeqCst);
    let consumers = spawn_consumers(stream.clone(), projector.clone(), mapping);
    let service = CommandService::new(
        store.clone(),
        stream.clone(),
        Policy::default(),
        64,
        system_clock(),
    )
    .with_metrics(metrics.clone());
    for account in ["stuck", "fine"] {
        service
            .submit(
                AccountId::new(account).unwrap(),
                Command::Deposit {
                    txn_id: TxnId::new(format!("{account}-1")).unwrap(),
                    amount: Money(500),
                    occurred_at: Timestamp::from_millis(1_793_523_600_000).unwrap(),
                },
            )
            .await
            .unwrap();
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metrics.records_given_up.load(SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the mapping never gave up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(stream.pending(), 0, "the given-up record left the stream");
    assert_eq!(store.get("stuck").await.unwrap(), None);
    assert_eq!(store.get("fine").await.unwrap().map(|s| s.version), Some(1));
    assert!(projector.is_behind());
    flaky.faults.clear();
    tokio::time::timeout(Duration::from_secs(20), consumers.drain())
        .await
        .expect("the catch-up projects the account once the store recovers");
    assert_eq!(
        store.get("stuck").await.unwrap().map(|s| s.version),
        Some(1)
    );
    let report = tally::service::audit::verify(&store, &store).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(
        metrics.events_appended.load(SeqCst),
        metrics.events_projected.load(SeqCst)
    );
    consumers.stop().await;
}
