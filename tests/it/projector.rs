//! The projector's batch fold on Lambda-shaped input: grouping keeps per-account order,
//! one write per touched account, duplicates skipped, gaps and poison reported.

use tally::codec::kinesis::{Arena, KinesisBatch};
use tally::codec::{WireAggregate, WirePage, encode_aggregate};
use tally::domain::{AccountId, Event, Page, Snapshot};
use tally::service::projector::{SnapshotCache, Stop, group, plan};

use crate::harness::{Ledger, lambda_json};
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
    let json = lambda_json(&records);
    let batch = KinesisBatch::parse(json.as_bytes()).unwrap();
    let mut arena = Arena::default();
    arena.fill(&batch);
    let grouped = group(&arena);
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

    let mut cache = SnapshotCache::new(16);
    for acct in ["acct-a", "acct-b", "acct-c"] {
        cache.commit(acct, Snapshot::default());
    }
    let p = plan(&grouped, &cache);
    assert_eq!((p.applied, p.duplicates), (10, 1));
    let writes: Vec<(&str, u64, u64)> = p
        .writes
        .iter()
        .map(|w| (w.account, w.expected_version, w.snapshot.version))
        .collect();
    assert_eq!(writes, [("acct-a", 0, 6), ("acct-b", 0, 4)]);
    let folded_a = a.iter().fold(Snapshot::default(), |mut s, e| {
        tally::domain::apply(&mut s, e).unwrap();
        s
    });
    assert_eq!(p.writes[0].snapshot, folded_a);
    assert_eq!(p.pending.len(), 1);
    assert_eq!(p.pending[0].account, "acct-c");
    assert_eq!(
        p.pending[0].stop,
        Stop::Gap {
            expected: 1,
            found: 3,
            at: 0
        }
    );

    // The cache is untouched until writes succeed; replaying the batch plans the same.
    assert_eq!(plan(&grouped, &cache).writes, p.writes);
    for w in &p.writes {
        cache.commit(w.account, w.snapshot);
    }
    let again = plan(&grouped, &cache);
    assert!(
        again.writes.is_empty(),
        "a fully redelivered batch writes nothing"
    );
    assert_eq!(again.duplicates, 11);
}

#[test]
fn accounts_missing_from_the_cache_are_listed_for_loading_not_guessed() {
    let a = account_events(2, 9);
    let mut arena = Arena::default();
    arena.push_bytes(&record(&[("acct-new", &a[..])]));
    let grouped = group(&arena);
    let p = plan(&grouped, &SnapshotCache::new(4));
    assert_eq!(p.missing, ["acct-new"]);
    assert!(p.writes.is_empty());
}

#[test]
fn the_cache_stays_bounded_and_never_moves_backward() {
    let mut cache = SnapshotCache::new(2);
    let newer = Snapshot {
        version: 5,
        ..Snapshot::default()
    };
    cache.commit("x", newer);
    cache.commit(
        "x",
        Snapshot {
            version: 3,
            ..Snapshot::default()
        },
    );
    assert_eq!(cache.get("x").map(|s| s.version), Some(5));
    cache.commit("y", Snapshot::default());
    cache.commit("z", Snapshot::default());
    assert_eq!(cache.len(), 2);
}
