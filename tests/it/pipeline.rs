//! End to end on the embedded backend: command service → event store → stream → projector →
//! snapshots, with an oracle, crashes, poison, redelivery and racing writers.

use std::collections::HashMap;
use std::sync::Arc;

use tally::adapters::embedded::EmbeddedStore;
use tally::app::{Embedded, Settings};
use tally::codec::rows::{Format, RowReader};
use tally::domain::{AccountId, Command, Money, Policy, Snapshot, Timestamp};
use tally::ports::{EventPublisher, OutRecord, StoreError};
use tally::service::audit;
use tally::service::command::{CommandOutcome, CommandService};
use tally::service::ingest::{Rejects, ingest};
use tally::workload::{GenSpec, generate};

use crate::harness::{batch_of, txn};
use crate::reference::{RefCmd, RefLedger};

fn fixed_clock() -> tally::service::command::Clock {
    Arc::new(|| Timestamp::from_millis(1_795_000_000_000).unwrap())
}

fn settings() -> Settings {
    Settings {
        clock: fixed_clock(),
        ..Settings::default()
    }
}

/// Independent expectation: each account's rows through the reference model in file order.
/// A txn id's first decision is its outcome forever: a later row with that id (same request
/// or not) changes nothing, whether the id was booked or refused; only a refusal of the input
/// itself (an amount out of range) leaves the id free.
fn oracle(csv: &str, policy: Policy) -> HashMap<String, RefLedger> {
    let mut ledgers: HashMap<String, RefLedger> = HashMap::new();
    let mut decided: HashMap<(String, String), bool> = HashMap::new();
    for row in RowReader::new(csv.as_bytes(), Format::Csv).unwrap() {
        let Ok(row) = row else { continue };
        let ledger = ledgers
            .entry(row.account.to_string())
            .or_insert_with(|| RefLedger::new(policy.amount_max, policy.overdraft_limit));
        let key = (row.account.to_string(), row.command.txn_id().to_string());
        if decided.contains_key(&key) {
            continue;
        }
        match ledger.decide(&ref_command(&row.command), 0) {
            Ok(e) => {
                ledger.events.push(e);
                decided.insert(key, true);
            }
            Err("amount_out_of_range") => {}
            Err(_) => {
                decided.insert(key, false);
            }
        }
    }
    ledgers.retain(|_, l| !l.events.is_empty());
    ledgers
}

fn ref_command(c: &Command) -> RefCmd {
    match c {
        Command::Deposit {
            txn_id,
            amount,
            occurred_at,
        } => RefCmd::Deposit {
            txn: txn_id.to_string(),
            amount: amount.minor(),
            at: occurred_at.millis(),
        },
        Command::Withdraw {
            txn_id,
            amount,
            occurred_at,
        } => RefCmd::Withdraw {
            txn: txn_id.to_string(),
            amount: amount.minor(),
            at: occurred_at.millis(),
        },
        Command::Reverse {
            txn_id,
            reverses,
            occurred_at,
        } => RefCmd::Reverse {
            txn: txn_id.to_string(),
            target: reverses.to_string(),
            at: occurred_at.millis(),
        },
    }
}

async fn ingest_text(app: &Embedded, csv: &str) -> tally::service::ingest::IngestSummary {
    let rows = RowReader::new(std::io::Cursor::new(csv.as_bytes().to_vec()), Format::Csv).unwrap();
    let mut rejects = Rejects::new(Vec::new()).unwrap();
    let summary = ingest(rows, &app.commands, &mut rejects, |_| {})
        .await
        .unwrap();
    app.drain().await;
    summary
}

async fn assert_matches_oracle(app: &Embedded, csv: &str) {
    let expected = oracle(csv, Policy::default());
    assert!(!expected.is_empty());
    for (account, reference) in &expected {
        let id = AccountId::new(account.as_str()).unwrap();
        let s = app
            .query
            .balance(&id)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{account} missing"));
        let want = reference.snapshot();
        assert_eq!(
            i128::from(s.balance.minor()),
            want.balance,
            "{account} balance"
        );
        assert_eq!(s.version, want.version, "{account} version");
        assert_eq!(
            s.month.map(|m| (m.year() as i32, m.month() as u8)),
            want.month,
            "{account} month"
        );
        assert_eq!(
            s.month_balance, want.month_balance,
            "{account} month balance"
        );
        assert_eq!(
            (s.credit_count, s.debit_count),
            (want.credit_count, want.debit_count),
            "{account} counts"
        );
    }
    let report = audit::verify(&app.store, &app.store).await.unwrap();
    assert!(report.is_clean(), "verify found {report:?}");
    assert_eq!(report.accounts as usize, expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_file_ingests_to_the_oracles_balances_and_twice_changes_nothing_booked() {
    let csv = include_str!("../../examples/transactions.csv");
    let app = Embedded::start(None, settings()).await.unwrap();
    let first = ingest_text(&app, csv).await;
    assert_eq!(
        (first.rows, first.accepted, first.duplicates, first.refused),
        (15, 13, 1, 1)
    );
    assert_matches_oracle(&app, csv).await;
    let alice = app
        .query
        .balance(&AccountId::new("alice").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (
            alice.balance,
            alice.month.unwrap().to_string(),
            alice.month_balance
        ),
        (Money(270_000), "2026-11".to_string(), 65_000)
    );
    // The same file again books nothing: booked ids are duplicates, and the bounced
    // withdrawal is not decided again (it would fit the balance now): its refusal is replayed.
    let before = everything(&app.store).await;
    let second = ingest_text(&app, csv).await;
    assert_eq!(
        (
            second.accepted,
            second.duplicates,
            second.refused,
            second.replayed_refusals
        ),
        (0, 14, 0, 1)
    );
    assert_eq!(everything(&app.store).await, before, "nothing changed");
    app.shutdown().await;
}

/// Every account's events and snapshot, to compare before and after.
pub(crate) async fn everything<S>(
    store: &S,
) -> Vec<(String, Vec<tally::domain::Event>, Option<Snapshot>)>
where
    S: tally::ports::EventStore + tally::ports::SnapshotStore,
{
    let mut out = Vec::new();
    for (account, newest) in store.accounts(None, 100_000).await.unwrap() {
        let events = store.read(&account, 1, newest).await.unwrap();
        let snapshot = store.get(account.as_str()).await.unwrap();
        out.push((account.to_string(), events, snapshot));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_zipf_workload_matches_the_oracle_and_ingesting_it_again_changes_nothing() {
    let mut buf = Vec::new();
    generate(
        GenSpec {
            accounts: 300,
            transactions: 12_000,
            zipf: Some(1.0),
            seed: 5,
        },
        &mut buf,
    )
    .unwrap();
    let csv = String::from_utf8(buf).unwrap();
    let app = Embedded::start(None, settings()).await.unwrap();
    let s = ingest_text(&app, &csv).await;
    assert!(
        s.duplicates > 0 && s.refused > 0,
        "the workload exercises duplicates and bounces: {s:?}"
    );
    let accounted = |s: &tally::service::ingest::IngestSummary| {
        s.accepted + s.duplicates + s.refused + s.replayed_refusals + s.reused + s.invalid
    };
    assert_eq!((s.rows, s.unprocessed), (accounted(&s), 0));
    assert_matches_oracle(&app, &csv).await;
    // The commonest accident with bulk files: running the job again. A no-op, every row
    // answered with its first outcome.
    let before = everything(&app.store).await;
    let again = ingest_text(&app, &csv).await;
    assert_eq!(everything(&app.store).await, before, "nothing changed");
    assert_eq!(
        (again.accepted, again.refused, again.rows),
        (0, 0, accounted(&again))
    );
    assert_eq!(again.duplicates, s.accepted + s.duplicates);
    assert_eq!(again.replayed_refusals, s.refused + s.replayed_refusals);
    assert_eq!((again.reused, again.invalid), (s.reused, s.invalid));
    app.shutdown().await;
}

/// A publisher that loses everything, as if the process died right after the append.
struct Lost;

impl EventPublisher for Lost {
    async fn publish(&self, _records: Vec<OutRecord>) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("process died".into()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_appended_but_never_published_are_projected_after_a_restart() {
    let store = EmbeddedStore::in_memory().unwrap();
    let service = CommandService::new(store.clone(), Lost, Policy::default(), 64, fixed_clock());
    let acct = AccountId::new("crash-1").unwrap();
    for (i, amount) in [500, 700].iter().enumerate() {
        let cmd = Command::Deposit {
            txn_id: txn(&format!("c{i}")),
            amount: Money(*amount),
            occurred_at: Timestamp::from_millis(1_793_523_600_000).unwrap(),
        };
        assert!(matches!(
            service.submit(acct.clone(), cmd).await.unwrap(),
            CommandOutcome::Booked(_)
        ));
    }
    // The read side completes a lagging snapshot from the events even before catch-up.
    let app = Embedded::start_with(store, settings()).await.unwrap();
    assert_eq!(app.catch_up.caught_up, 1);
    let s = app.query.balance(&acct).await.unwrap().unwrap();
    assert_eq!((s.version, s.balance), (2, Money(1_200)));
    assert!(
        audit::verify(&app.store, &app.store)
            .await
            .unwrap()
            .is_clean()
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_record_is_quarantined_and_the_shard_goes_on() {
    let app = Embedded::start(
        None,
        Settings {
            shards: 1,
            ..settings()
        },
    )
    .await
    .unwrap();
    app.stream
        .publish(vec![OutRecord {
            partition_key: "b0001".into(),
            data: b"this is not a tally record at all".to_vec(),
        }])
        .await
        .unwrap();
    let acct = AccountId::new("after-poison").unwrap();
    let cmd = Command::Deposit {
        txn_id: txn("p1"),
        amount: Money(42),
        occurred_at: Timestamp::from_millis(1_793_523_600_000).unwrap(),
    };
    app.commands.submit(acct.clone(), cmd).await.unwrap();
    app.drain().await;
    let q = app.store.quarantined().unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].data, b"this is not a tally record at all");
    assert!(q[0].error.contains("magic"), "{}", q[0].error);
    assert_eq!(app.store.get_snapshot_version(&acct).await, 1);
    app.shutdown().await;
}

trait SnapshotVersion {
    async fn get_snapshot_version(&self, account: &AccountId) -> u64;
}

impl SnapshotVersion for EmbeddedStore {
    async fn get_snapshot_version(&self, account: &AccountId) -> u64 {
        use tally::ports::SnapshotStore;
        self.get(account.as_str())
            .await
            .unwrap()
            .map_or(0, |s| s.version)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_txn_id_returns_the_original_outcome_and_books_nothing() {
    let app = Embedded::start(None, settings()).await.unwrap();
    let acct = AccountId::new("idem").unwrap();
    let at = Timestamp::from_millis(1_793_523_600_000).unwrap();
    let first = app
        .commands
        .submit(
            acct.clone(),
            Command::Deposit {
                txn_id: txn("same"),
                amount: Money(10),
                occurred_at: at,
            },
        )
        .await
        .unwrap();
    let deposit = |amount| Command::Deposit {
        txn_id: txn("same"),
        amount: Money(amount),
        occurred_at: at,
    };
    // The same request again: the original outcome.
    let again = app
        .commands
        .submit(acct.clone(), deposit(10))
        .await
        .unwrap();
    let (CommandOutcome::Booked(e1), CommandOutcome::Duplicate(e2)) = (first, again) else {
        panic!("unexpected outcomes")
    };
    assert_eq!(e1, e2);
    // Same id, different amount: refused as a reuse, naming the field; nothing booked.
    let reused = app
        .commands
        .submit(acct.clone(), deposit(99))
        .await
        .unwrap();
    let CommandOutcome::Reused { field, original } = reused else {
        panic!("expected a reuse, got {reused:?}")
    };
    assert_eq!(field, "amount");
    assert_eq!(original.command(), deposit(10));
    app.drain().await;
    assert_eq!(
        app.query.balance(&acct).await.unwrap().unwrap().balance,
        Money(10)
    );
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_withdrawals_racing_on_one_account_never_overdraw() {
    let app = Arc::new(Embedded::start(None, settings()).await.unwrap());
    let acct = AccountId::new("race").unwrap();
    let at = Timestamp::from_millis(1_793_523_600_000).unwrap();
    app.commands
        .submit(
            acct.clone(),
            Command::Deposit {
                txn_id: txn("fund"),
                amount: Money(100),
                occurred_at: at,
            },
        )
        .await
        .unwrap();
    let tasks: Vec<_> = (0..24)
        .map(|i| {
            let (app, acct) = (app.clone(), acct.clone());
            tokio::spawn(async move {
                app.commands
                    .submit(
                        acct,
                        Command::Withdraw {
                            txn_id: txn(&format!("w{i}")),
                            amount: Money(10),
                            occurred_at: at,
                        },
                    )
                    .await
            })
        })
        .collect();
    let mut booked = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(CommandOutcome::Booked(e)) => {
                booked += 1;
                assert!(e.balance.minor() >= 0);
            }
            Ok(CommandOutcome::Refused(_)) | Err(_) => {}
            Ok(other) => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(booked, 10);
    app.drain().await;
    assert_eq!(
        app.query.balance(&acct).await.unwrap().unwrap().balance,
        Money(0)
    );
    assert!(
        audit::verify(&app.store, &app.store)
            .await
            .unwrap()
            .is_clean()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reordered_and_redelivered_batches_converge_with_gaps_filled_from_the_store() {
    use tally::codec::{WireAggregate, WirePage, encode_aggregate};
    use tally::domain::Page;
    use tally::ports::EventStore;
    let store = EmbeddedStore::in_memory().unwrap();
    let service = CommandService::new(store.clone(), Lost, Policy::default(), 64, fixed_clock());
    let acct = AccountId::new("reorder").unwrap();
    let at = Timestamp::from_millis(1_793_523_600_000).unwrap();
    for i in 0..6 {
        service
            .submit(
                acct.clone(),
                Command::Deposit {
                    txn_id: txn(&format!("r{i}")),
                    amount: Money(10 + i),
                    occurred_at: at,
                },
            )
            .await
            .unwrap();
    }
    let events = store.read(&acct, 1, 6).await.unwrap();
    let record = |from: usize, to: usize| {
        let page = Page::new(acct.clone(), events[from..to].to_vec()).unwrap();
        encode_aggregate(&WireAggregate {
            pages: vec![WirePage::from_page(&page)],
        })
        .unwrap()
        .to_vec()
    };
    let metrics = Arc::new(tally::service::metrics::Metrics::default());
    let projector = tally::service::projector::Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        16,
        metrics.clone(),
    );
    // Newest first (gap: 1..=3 missing), then a redelivery of the middle, then the start.
    for batch in [
        vec![record(3, 6)],
        vec![record(1, 4), record(3, 6)],
        vec![record(0, 2)],
    ] {
        let response = projector.project(&batch_of(&batch)).await;
        assert!(response.failed.is_empty());
    }
    use tally::ports::SnapshotStore;
    let s = store.get("reorder").await.unwrap().unwrap();
    assert_eq!(
        (s.version, s.balance),
        (6, Money(10 + 11 + 12 + 13 + 14 + 15))
    );
    assert_eq!(
        metrics
            .gaps_filled
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    assert!(audit::verify(&store, &store).await.unwrap().is_clean());
}
