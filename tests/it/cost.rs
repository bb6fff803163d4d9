//! Cost accounting on DynamoDB Local: every call asks for `ReturnConsumedCapacity=TOTAL`
//! and the adapter adds the units to metrics, so a workload's read/write units per event
//! can be counted for bulk ingestion and for projection, next to the Kinesis records and
//! bytes per event with and without aggregation.
//!
//! `cost_reaches_the_floor_on_dynamodb` (run by `scripts/test`) asserts the projector's
//! floor, one snapshot write per distinct account per batch, on small workloads. The
//! table in BENCHMARKS.md comes from the ignored `cost_table`:
//!
//! ```sh
//! scripts/emulators up && eval "$(scripts/emulators env)"
//! cargo test --release --test it cost_table -- --ignored --nocapture
//! scripts/emulators down
//! ```

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use tally::adapters::aws::dynamodb::DynamoStore;
use tally::codec::bucket::partition_key_of;
use tally::codec::{WirePage, encode_page};
use tally::domain::limits::BUCKETS_DEFAULT;
use tally::domain::{
    AccountId, AccountState, Command, Event, EventKind, Money, Page, Policy, Snapshot, Timestamp,
    TxnId, TxnOutcome,
};
use tally::ports::{
    Append, Appended, EventStore, PageWrite, Parked, Quarantine, Quarantined, SnapshotError,
    SnapshotPut, SnapshotStore, StoreError,
};
use tally::service::audit;
use tally::service::command::{AccountChunk, CommandOutcome, CommandService};
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;
use tally::workload::{Picker, Rng};

use crate::faults::Recorder;
use crate::harness::batch_of;

/// us-east-1 list prices, November 2026 (aws.amazon.com/dynamodb/pricing/on-demand,
/// aws.amazon.com/kinesis/data-streams/pricing): on-demand DynamoDB per million request
/// units, Kinesis on-demand per GB in and out (each record rounded up to 1 KiB).
const WRITE_UNIT_USD_PER_MILLION: f64 = 0.625;
const READ_UNIT_USD_PER_MILLION: f64 = 0.125;
const KINESIS_USD_PER_GB_IN: f64 = 0.08;
const KINESIS_USD_PER_GB_OUT: f64 = 0.04;

/// Counts what DynamoDB bills by its documented rules, from the calls the services make,
/// for the places DynamoDB Local under-reports `ConsumedCapacity` (measured: a
/// `TransactWriteItems` is charged 2 × the first item's KiB instead of 2 per KiB of every
/// item; a consistent read of a missing item is charged 0 instead of 1). Items are sized
/// like the adapter lays them out; all but a page are far below 1 KiB.
#[derive(Clone)]
pub struct Meter<T> {
    inner: T,
    model: Arc<Mutex<Model>>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Model {
    pub read: u64,
    pub write: u64,
}

/// Bytes of a page item besides the encoded page: key and number attributes, generously.
const PAGE_ITEM_OVERHEAD: usize = 128;

/// Write units AWS bills for one page write, by its documented rules: a transaction costs 2
/// units per KiB of every item (page, outcome markers, target updates); a page of exactly
/// one refusal is a plain conditional `PutItem`, 1 unit.
fn page_write_units(account: &AccountId, p: &PageWrite) -> u64 {
    if p.events.is_empty() && p.refusals.len() == 1 {
        return 1;
    }
    let page_kib = if p.events.is_empty() {
        0
    } else {
        let page = Page::new(account.clone(), p.events.clone()).unwrap();
        (encode_page(&WirePage::from_page(&page)).unwrap().len() + PAGE_ITEM_OVERHEAD)
            .div_ceil(1024) as u64
    };
    let reversals = p
        .events
        .iter()
        .filter(|e| matches!(e.kind, EventKind::Reversed { .. }))
        .count() as u64;
    2 * (page_kib + p.events.len() as u64 + reversals + p.refusals.len() as u64)
}

impl<T: EventStore> EventStore for Meter<T> {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        self.model.lock().unwrap().read += 1; // a consistent query, ≤ 4 KiB
        self.inner.tip(account).await
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        let loaded = self.inner.load(account, txns).await?;
        let mut unique: Vec<&TxnId> = txns.iter().collect();
        unique.sort_unstable();
        unique.dedup();
        // The head query, then one consistent read per marker key (the adapter skips the
        // markers of an account with no items at all).
        let any = loaded.0.version > 0 || loaded.1.iter().any(Option::is_some);
        let markers = if any { unique.len() as u64 } else { 0 };
        self.model.lock().unwrap().read += 1 + markers;
        Ok(loaded)
    }

    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        self.model.lock().unwrap().read += 1;
        self.inner.txn(account, txn).await
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        let mut units = 0;
        for a in &appends {
            for p in &a.pages {
                units += page_write_units(&a.account, p);
            }
        }
        self.model.lock().unwrap().write += units;
        self.inner.append(appends).await
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        let events = self.inner.read(account, from, to).await?;
        // The query for the first page, then the range (≤ 4 KiB per 50-odd events).
        self.model.lock().unwrap().read += 1 + (events.len() as u64 * 80).div_ceil(4096).max(1);
        Ok(events)
    }

    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<tally::domain::Segment>, StoreError> {
        self.model.lock().unwrap().read += 1;
        self.inner.segments(account, from, limit).await
    }

    async fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, u64)>, StoreError> {
        self.inner.accounts(after, limit).await
    }
}

impl<T: SnapshotStore> SnapshotStore for Meter<T> {
    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        self.model.lock().unwrap().read += accounts.len() as u64;
        self.inner.get_many(accounts).await
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        self.model.lock().unwrap().write += puts.len() as u64; // snapshot items < 1 KiB
        self.inner.put_many(puts).await
    }
}

impl<T: Quarantine> Quarantine for Meter<T> {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        self.model.lock().unwrap().write += 1;
        self.inner.put(record).await
    }

    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        self.model.lock().unwrap().write += 1;
        self.inner.park(parked).await
    }

    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        self.model.lock().unwrap().read += 1;
        self.inner.parked(account).await
    }
}

/// What one workload cost.
#[derive(Debug, Clone, Default)]
pub struct Cost {
    pub workload: &'static str,
    pub batch: usize,
    pub events: u64,
    /// Σ over batches of the distinct accounts in the batch: the projector's floor.
    pub distinct_per_batch: u64,
    /// As DynamoDB Local reports them.
    pub ingest_read: f64,
    pub ingest_write: f64,
    pub project_read: f64,
    pub project_write: f64,
    /// As AWS documents billing them ([`Meter`]).
    pub ingest_model: Model,
    pub project_model: Model,
    pub snapshot_writes: u64,
    /// Kinesis as published (pages aggregated per bucket): records, bytes (data + key),
    /// KiB billed (each record rounded up).
    pub records: u64,
    pub bytes: u64,
    pub kib_billed: u64,
    /// The same events one record each.
    pub single_bytes: u64,
    pub single_kib_billed: u64,
}

fn units(metrics: &Metrics) -> (f64, f64) {
    (
        metrics.read_capacity_milli.load(Ordering::SeqCst) as f64 / 1000.0,
        metrics.write_capacity_milli.load(Ordering::SeqCst) as f64 / 1000.0,
    )
}

/// Books `events` deposits over `accounts` accounts (uniform, or Zipf(`zipf`)) in
/// ingestion batches of `batch` rows, and projects each batch's records as one Lambda
/// batch on a projector whose cache lives across batches (a warm instance).
pub async fn measure(
    store: DynamoStore,
    zipf: Option<f64>,
    batch: usize,
    events: usize,
    accounts: usize,
) -> Cost {
    let ingest_metrics = Arc::new(Metrics::default());
    let project_metrics = Arc::new(Metrics::default());
    let recorder = Recorder::default();
    let at = || Timestamp::from_millis(1_793_523_600_000).expect("in range");
    let ingest_model = Arc::new(Mutex::new(Model::default()));
    let project_model = Arc::new(Mutex::new(Model::default()));
    let service = CommandService::new(
        Meter {
            inner: store.clone().with_metrics(ingest_metrics.clone()),
            model: ingest_model.clone(),
        },
        recorder.clone(),
        Policy::default(),
        BUCKETS_DEFAULT,
        Arc::new(at),
    );
    let projected = Meter {
        inner: store.clone().with_metrics(project_metrics.clone()),
        model: project_model.clone(),
    };
    let projector = Projector::new(
        projected.clone(),
        projected.clone(),
        projected,
        100_000,
        project_metrics.clone(),
    );
    let picker = Picker::new(accounts, zipf);
    let mut rng = Rng::new(42);
    let mut cost = Cost {
        workload: if zipf.is_some() {
            "Zipf(1.0)"
        } else {
            "uniform"
        },
        batch,
        events: events as u64,
        ..Cost::default()
    };
    let mut next_txn = 0;
    for start in (0..events).step_by(batch) {
        let mut chunks: Vec<AccountChunk> = Vec::new();
        let mut slot: HashMap<usize, usize> = HashMap::new();
        for _ in start..(start + batch).min(events) {
            let account = picker.pick(&mut rng);
            let i = *slot.entry(account).or_insert_with(|| {
                chunks.push(AccountChunk {
                    account: AccountId::new(format!("acct-{account:06}")).expect("valid"),
                    commands: Vec::new(),
                });
                chunks.len() - 1
            });
            next_txn += 1;
            chunks[i].commands.push(Command::Deposit {
                txn_id: TxnId::new(format!("t{next_txn}")).expect("valid"),
                amount: Money(1 + rng.below(100_000) as i64),
                occurred_at: at(),
            });
        }
        cost.distinct_per_batch += chunks.len() as u64;
        let outcomes = service
            .submit_chunks(chunks.clone())
            .await
            .into_result()
            .unwrap();
        for (chunk, outcomes) in chunks.iter().zip(outcomes) {
            for outcome in outcomes {
                let CommandOutcome::Booked(event) = outcome else {
                    panic!("deposits are booked: {outcome:?}");
                };
                let page = Page::new(chunk.account.clone(), vec![event]).unwrap();
                let size = encode_page(&WirePage::from_page(&page)).unwrap().len()
                    + partition_key_of(chunk.account.as_str(), BUCKETS_DEFAULT).len();
                cost.single_bytes += size as u64;
                cost.single_kib_billed += size.div_ceil(1024) as u64;
            }
        }
        let records = std::mem::take(&mut *recorder.0.lock().unwrap());
        for r in &records {
            let size = r.data.len() + r.partition_key.len();
            cost.records += 1;
            cost.bytes += size as u64;
            cost.kib_billed += size.div_ceil(1024) as u64;
        }
        let data: Vec<Vec<u8>> = records.into_iter().map(|r| r.data).collect();
        let response = projector.project(&batch_of(&data)).await;
        assert!(response.failed.is_empty());
    }
    (cost.ingest_read, cost.ingest_write) = units(&ingest_metrics);
    (cost.project_read, cost.project_write) = units(&project_metrics);
    cost.ingest_model = *ingest_model.lock().unwrap();
    cost.project_model = *project_model.lock().unwrap();
    cost.snapshot_writes = project_metrics.snapshots_written.load(Ordering::SeqCst);
    assert_eq!(
        project_metrics.events_projected.load(Ordering::SeqCst),
        events as u64
    );
    let report = audit::verify(&store, &store).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    assert_eq!(report.events, events as u64);
    cost
}

impl Cost {
    fn per_event(&self, x: f64) -> f64 {
        x / self.events as f64
    }

    /// DynamoDB (ingestion + projection, as AWS bills it) and Kinesis (in + out) dollars per
    /// million events.
    fn usd_per_million(&self, kib: u64) -> (f64, f64) {
        let (i, p) = (self.ingest_model, self.project_model);
        let dynamodb = self.per_event((i.write + p.write) as f64) * WRITE_UNIT_USD_PER_MILLION
            + self.per_event((i.read + p.read) as f64) * READ_UNIT_USD_PER_MILLION;
        let gb_per_million = self.per_event(kib as f64) * 1e6 / (1024.0 * 1024.0);
        (
            dynamodb,
            gb_per_million * (KINESIS_USD_PER_GB_IN + KINESIS_USD_PER_GB_OUT),
        )
    }

    pub fn markdown_header() -> &'static str {
        "| workload | batch | ingest RRU/ev | ingest WRU/ev | project RRU/ev | project WRU/ev | \
         snapshot writes/ev (floor) | Kinesis rec/ev | B/ev | KiB billed/ev agg (single) | \
         $/M ev DynamoDB | $/M ev Kinesis agg (single) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    }

    pub fn markdown_row(&self) -> String {
        let (dynamodb, kinesis) = self.usd_per_million(self.kib_billed);
        let (_, kinesis_single) = self.usd_per_million(self.single_kib_billed);
        // Units: AWS's billing model, then what DynamoDB Local reported in brackets.
        let pair = |model: u64, local: f64| {
            format!(
                "{:.3} [{:.3}]",
                self.per_event(model as f64),
                self.per_event(local)
            )
        };
        format!(
            "| {} | {} | {} | {} | {} | {} | {:.4} ({:.4}) | {:.4} | {:.1} | {:.4} ({:.3}) | {:.2} | {:.4} ({:.4}) |",
            self.workload,
            self.batch,
            pair(self.ingest_model.read, self.ingest_read),
            pair(self.ingest_model.write, self.ingest_write),
            pair(self.project_model.read, self.project_read),
            pair(self.project_model.write, self.project_write),
            self.per_event(self.snapshot_writes as f64),
            self.per_event(self.distinct_per_batch as f64),
            self.per_event(self.records as f64),
            self.per_event(self.bytes as f64),
            self.per_event(self.kib_billed as f64),
            self.per_event(self.single_kib_billed as f64),
            dynamodb,
            kinesis,
            kinesis_single,
        )
    }
}

/// The projector writes each distinct account of a batch exactly once, and a snapshot
/// write is one write unit (items under 1 KB): the floor, uniform and skewed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_reaches_the_floor_on_dynamodb() {
    for (zipf, batch) in [(None, 100), (Some(1.0), 100), (Some(1.0), 1_000)] {
        let Some(store) = crate::aws::store("cost").await else {
            return;
        };
        let cost = measure(store, zipf, batch, 2_000, 1_000).await;
        eprintln!("{}", cost.markdown_row());
        assert_eq!(cost.snapshot_writes, cost.distinct_per_batch, "{cost:?}");
        assert!(
            (cost.project_write - cost.snapshot_writes as f64).abs() < 1e-6,
            "one write unit per snapshot write: {cost:?}"
        );
        // Where DynamoDB Local reports what AWS bills (single puts), the model agrees.
        assert_eq!(cost.project_model.write, cost.snapshot_writes, "{cost:?}");
        // Every event costs at least its marker, a 2-unit transactional write, and Local
        // under-reports transactions (why the model exists).
        assert!(cost.ingest_model.write >= 2 * cost.events, "{cost:?}");
        assert!(
            cost.ingest_write < cost.ingest_model.write as f64,
            "{cost:?}"
        );
        assert!(
            cost.records < cost.events,
            "records are aggregated: {cost:?}"
        );
    }
}

/// The full table for BENCHMARKS.md (see the module docs for the command).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "minutes against DynamoDB Local; prints the cost table"]
async fn cost_table() {
    let mut rows = vec![Cost::markdown_header().to_owned()];
    for zipf in [None, Some(1.0)] {
        for batch in [100, 1_000, 10_000] {
            let store = crate::aws::store("cost-table")
                .await
                .expect("the cost table needs DynamoDB Local (scripts/emulators up)");
            let cost = measure(store, zipf, batch, 20_000, 10_000).await;
            assert_eq!(cost.snapshot_writes, cost.distinct_per_batch);
            rows.push(cost.markdown_row());
            eprintln!("{}", rows[rows.len() - 1]);
        }
    }
    println!("{}", rows.join("\n"));
}

/// What a refusal costs on DynamoDB, per refusal, three ways: a single refused command (its
/// outcome is one conditional `PutItem`), refusals recorded in a page with events (one
/// transactional item each), and a replayed refusal (reads only). Measured with the billing
/// model and with DynamoDB Local's own figures; printed for BENCHMARKS.md and asserted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cost_of_a_refusal_on_dynamodb() {
    let Some(store) = crate::aws::store("refusal-cost").await else {
        return;
    };
    let n = 200u64;
    let metrics = Arc::new(Metrics::default());
    let model = Arc::new(Mutex::new(Model::default()));
    let at = || Timestamp::from_millis(1_793_523_600_000).expect("in range");
    let service = CommandService::new(
        Meter {
            inner: store.clone().with_metrics(metrics.clone()),
            model: model.clone(),
        },
        Recorder::default(),
        Policy::default(),
        BUCKETS_DEFAULT,
        Arc::new(at),
    );
    let withdraw = |account: String, txn: String| AccountChunk {
        account: AccountId::new(account).unwrap(),
        commands: vec![Command::Withdraw {
            txn_id: TxnId::new(txn).unwrap(),
            amount: Money(5),
            occurred_at: at(),
        }],
    };
    let measure = async |label: &str, chunks: Vec<AccountChunk>, per: u64| {
        let before = (units(&metrics), *model.lock().unwrap());
        let out = service.submit_chunks(chunks).await.into_result().unwrap();
        let after = (units(&metrics), *model.lock().unwrap());
        let row = format!(
            "| {label} | {:.2} [{:.2}] | {:.2} [{:.2}] |",
            (after.1.read - before.1.read) as f64 / per as f64,
            (after.0.0 - before.0.0) / per as f64,
            (after.1.write - before.1.write) as f64 / per as f64,
            (after.0.1 - before.0.1) / per as f64,
        );
        eprintln!("{row}");
        (
            out,
            after.1.write - before.1.write,
            after.1.read - before.1.read,
        )
    };
    // Single refused commands on empty accounts: one PutItem each.
    let single: Vec<_> = (0..n)
        .map(|i| withdraw(format!("r{i}"), format!("w{i}")))
        .collect();
    let (out, writes, _) = measure("single refusal", single.clone(), n).await;
    assert!(
        out.iter()
            .all(|o| matches!(o[0], CommandOutcome::Refused(_)))
    );
    assert_eq!(writes, n, "1 write unit per single refusal");
    // The same again: replayed from the stored outcome, no write.
    let (out, writes, reads) = measure("replayed refusal", single, n).await;
    assert!(
        out.iter()
            .all(|o| matches!(o[0], CommandOutcome::ReplayedRefusal(_)))
    );
    assert_eq!(
        (writes, reads),
        (0, 2 * n),
        "a head query and one outcome read"
    );
    // In a page with an event: one transactional item (2 units) per refusal on top of the
    // deposit's own page and marker.
    let mixed: Vec<_> = (0..n)
        .map(|i| AccountChunk {
            account: AccountId::new(format!("m{i}")).unwrap(),
            commands: vec![
                Command::Deposit {
                    txn_id: TxnId::new("d").unwrap(),
                    amount: Money(1),
                    occurred_at: at(),
                },
                Command::Withdraw {
                    txn_id: TxnId::new("w").unwrap(),
                    amount: Money(5),
                    occurred_at: at(),
                },
            ],
        })
        .collect();
    let (out, writes, _) = measure("deposit + refusal, one page", mixed, n).await;
    assert!(
        out.iter()
            .all(|o| matches!(o[1], CommandOutcome::Refused(_)))
    );
    assert_eq!(
        writes,
        n * (2 + 2 + 2),
        "page 2 + deposit marker 2 + refusal 2"
    );
}
