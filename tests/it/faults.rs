//! Throttling injected at the port layer (neither emulator enforces limits): a wrapper that
//! makes chosen calls of any store or publisher fail with `StoreError::Throttled`, and the
//! behaviour each service owes its users then. The scenarios are generic over the backend:
//! the embedded store runs them here, DynamoDB Local in `aws.rs`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::json;
use tally::adapters::embedded::EmbeddedStore;
use tally::domain::{
    AccountId, AccountState, Command, Money, Policy, Snapshot, Timestamp, TxnId, TxnOutcome,
};
use tally::http::{Api, router};
use tally::ports::{
    Append, Appended, EventPublisher, EventStore, OutRecord, Parked, Quarantine, Quarantined,
    SnapshotError, SnapshotPut, SnapshotStore, StoreError,
};
use tally::service::audit;
use tally::service::command::{AccountChunk, CommandError, CommandOutcome, CommandService};
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;
use tally::service::query::QueryService;

use crate::harness::batch_of;
use crate::http::send;

/// How many of the next calls (or items, for batch calls) of each kind fail as throttled;
/// `u32::MAX` for "until cleared". `only` narrows the per-account faults (load, append,
/// read, put) to one account; `get_many` and `publish` name no single account and ignore it.
#[derive(Default)]
pub struct Faults {
    pub load: AtomicU32,
    pub append: AtomicU32,
    pub read: AtomicU32,
    pub get_many: AtomicU32,
    pub put: AtomicU32,
    pub publish: AtomicU32,
    /// Appends that fail as `Corrupt`: a failure retrying cannot fix.
    pub corrupt_append: AtomicU32,
    /// Appends that commit, but whose caller sees a timeout.
    pub lost_ack: AtomicU32,
    pub only: Mutex<Option<String>>,
    /// Faults actually injected, so a test proves the path it claims to cover was taken.
    pub injected: AtomicU32,
}

impl Faults {
    fn hit(&self, counter: &AtomicU32, account: Option<&str>) -> bool {
        if let (Some(only), Some(account)) = (self.only.lock().unwrap().as_deref(), account)
            && only != account
        {
            return false;
        }
        let hit = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| match n {
                0 => None,
                u32::MAX => Some(u32::MAX),
                n => Some(n - 1),
            })
            .is_ok();
        if hit {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        hit
    }

    pub fn clear(&self) {
        for c in [
            &self.load,
            &self.append,
            &self.read,
            &self.get_many,
            &self.put,
            &self.publish,
            &self.corrupt_append,
            &self.lost_ack,
        ] {
            c.store(0, Ordering::SeqCst);
        }
        *self.only.lock().unwrap() = None;
    }

    pub fn injected(&self) -> u32 {
        self.injected.load(Ordering::SeqCst)
    }
}

/// Any port, with faults.
#[derive(Clone)]
pub struct Flaky<T> {
    pub inner: T,
    pub faults: Arc<Faults>,
}

impl<T> Flaky<T> {
    pub fn new(inner: T) -> Flaky<T> {
        Flaky {
            inner,
            faults: Arc::default(),
        }
    }
}

impl<T: EventStore> EventStore for Flaky<T> {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        self.inner.tip(account).await
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        if self.faults.hit(&self.faults.load, Some(account.as_str())) {
            return Err(StoreError::Throttled);
        }
        self.inner.load(account, txns).await
    }

    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        self.inner.txn(account, txn).await
    }

    /// Throttles or corrupts chosen accounts' appends (nothing of that account is written),
    /// or lets them commit and then reports a timeout (`lost_ack`), as a network cut after
    /// the backend committed would.
    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        let mut out: Vec<Option<Appended>> = Vec::with_capacity(appends.len());
        let mut forward = Vec::new();
        let mut lost: Vec<bool> = Vec::new();
        for a in &appends {
            let account = Some(a.account.as_str());
            if self.faults.hit(&self.faults.append, account) {
                out.push(Some(Appended::failed(StoreError::Throttled.into())));
            } else if self.faults.hit(&self.faults.corrupt_append, account) {
                out.push(Some(Appended::failed(
                    StoreError::Corrupt("injected".into()).into(),
                )));
            } else {
                out.push(None);
                lost.push(self.faults.hit(&self.faults.lost_ack, account));
                forward.push(a.clone());
            }
        }
        let mut results =
            self.inner
                .append(forward)
                .await
                .into_iter()
                .zip(lost)
                .map(|(r, lost)| {
                    if lost {
                        Appended::failed(
                            StoreError::Unavailable("timed out (injected)".into()).into(),
                        )
                    } else {
                        r
                    }
                });
        out.into_iter()
            .map(|r| r.unwrap_or_else(|| results.next().expect("one result per append")))
            .collect()
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<tally::domain::Event>, StoreError> {
        if self.faults.hit(&self.faults.read, Some(account.as_str())) {
            return Err(StoreError::Throttled);
        }
        self.inner.read(account, from, to).await
    }

    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<tally::domain::Segment>, StoreError> {
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

impl<T: SnapshotStore> SnapshotStore for Flaky<T> {
    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        if self.faults.hit(&self.faults.get_many, None) {
            return Err(StoreError::Throttled);
        }
        self.inner.get_many(accounts).await
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        let throttled: Vec<bool> = puts
            .iter()
            .map(|p| self.faults.hit(&self.faults.put, Some(&p.account)))
            .collect();
        let forward = puts
            .into_iter()
            .zip(&throttled)
            .filter(|(_, t)| !**t)
            .map(|(p, _)| p)
            .collect();
        let mut results = self.inner.put_many(forward).await.into_iter();
        throttled
            .into_iter()
            .map(|t| {
                if t {
                    Err(StoreError::Throttled.into())
                } else {
                    results.next().expect("one result per put")
                }
            })
            .collect()
    }
}

impl<T: Quarantine> Quarantine for Flaky<T> {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        self.inner.put(record).await
    }

    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        self.inner.park(parked).await
    }

    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        self.inner.parked(account).await
    }
}

impl<T: EventPublisher> EventPublisher for Flaky<T> {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), StoreError> {
        if self.faults.hit(&self.faults.publish, None) {
            return Err(StoreError::Throttled);
        }
        self.inner.publish(records).await
    }
}

/// A stream that keeps what is published, so a test can hand it to the projector as Lambda
/// would, in its own batches.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<OutRecord>>>);

impl Recorder {
    pub fn take(&self) -> Vec<Vec<u8>> {
        std::mem::take(&mut *self.0.lock().unwrap())
            .into_iter()
            .map(|r| r.data)
            .collect()
    }
}

impl EventPublisher for Recorder {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), StoreError> {
        self.0.lock().unwrap().extend(records);
        Ok(())
    }
}

fn at() -> Timestamp {
    Timestamp::from_millis(1_793_523_600_000).unwrap()
}

fn deposits(account: &str, ids: impl IntoIterator<Item = usize>, amount: i64) -> AccountChunk {
    AccountChunk {
        account: AccountId::new(account).unwrap(),
        commands: ids
            .into_iter()
            .map(|i| Command::Deposit {
                txn_id: TxnId::new(format!("{account}-d{i}")).unwrap(),
                amount: Money(amount),
                occurred_at: at(),
            })
            .collect(),
    }
}

fn commands<S: EventStore>(
    store: S,
    publisher: impl EventPublisher,
) -> CommandService<S, impl EventPublisher> {
    CommandService::new(store, publisher, Policy::default(), 64, Arc::new(at))
}

async fn balance<S: EventStore>(store: &S, account: &str) -> (u64, i64) {
    let tip = store.tip(&AccountId::new(account).unwrap()).await.unwrap();
    (tip.version, tip.balance.minor())
}

/// Projects everything recorded as one Lambda batch on a fresh projector; nothing fails.
async fn project_recorded<S>(store: &S, recorder: &Recorder) -> Arc<Metrics>
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let metrics = Arc::new(Metrics::default());
    let projector = Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        100,
        metrics.clone(),
    );
    let response = projector.project(&batch_of(&recorder.take())).await;
    assert!(response.failed.is_empty());
    metrics
}

/// Verify is clean: every snapshot equals the fold of its account's events.
async fn assert_verified<S: EventStore + SnapshotStore>(store: &S, accounts: u64, events: u64) {
    let report = audit::verify(store, store).await.unwrap();
    assert_eq!(
        (report.accounts, report.events, report.is_clean()),
        (accounts, events, true),
        "{report:?}"
    );
}

/// Transient throttling of loads and appends is ridden out: every command is booked once,
/// published once, and projects to the right balance.
pub async fn commands_ride_out_transient_throttling<S>(store: S)
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let flaky = Flaky::new(store.clone());
    flaky.faults.load.store(2, Ordering::SeqCst);
    flaky.faults.append.store(3, Ordering::SeqCst);
    let recorder = Recorder::default();
    let service = commands(flaky.clone(), recorder.clone());
    let chunks = (0..3)
        .map(|a| deposits(&format!("t{a}"), 0..40, 100))
        .collect();
    let outcomes = service.submit_chunks(chunks).await.into_result().unwrap();
    assert_eq!(flaky.faults.injected(), 5, "every planned fault was hit");
    for (a, outcomes) in outcomes.iter().enumerate() {
        assert_eq!(outcomes.len(), 40);
        assert!(
            outcomes
                .iter()
                .all(|o| matches!(o, CommandOutcome::Booked(_))),
            "t{a}: {outcomes:?}"
        );
        assert_eq!(balance(&store, &format!("t{a}")).await, (40, 4_000));
    }
    project_recorded(&store, &recorder).await;
    assert_verified(&store, 3, 120).await;
}

/// Throttling that outlasts the retries: the call fails with `Throttled` naming nothing
/// half-written; what other accounts booked stays booked and published; resubmitting the
/// same commands books the rest and reports the earlier ones as duplicates.
pub async fn persistent_throttling_fails_cleanly_and_a_resubmission_completes<S>(store: S)
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let flaky = Flaky::new(store.clone());
    *flaky.faults.only.lock().unwrap() = Some("u1".into());
    flaky.faults.append.store(u32::MAX, Ordering::SeqCst);
    let recorder = Recorder::default();
    let service = commands(flaky.clone(), recorder.clone());
    let chunks = || vec![deposits("u0", 0..3, 500), deposits("u1", 0..3, 700)];
    let err = service
        .submit_chunks(chunks())
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(err, CommandError::Store(StoreError::Throttled));
    assert!(flaky.faults.injected() > 1, "the append was retried");
    assert_eq!(
        balance(&store, "u0").await,
        (3, 1_500),
        "booked stays booked"
    );
    assert_eq!(balance(&store, "u1").await, (0, 0), "nothing half-written");
    assert_eq!(
        recorder.0.lock().unwrap().len(),
        1,
        "u0's page was published"
    );

    flaky.faults.clear();
    let outcomes = service.submit_chunks(chunks()).await.into_result().unwrap();
    assert!(
        outcomes[0]
            .iter()
            .all(|o| matches!(o, CommandOutcome::Duplicate(_)))
    );
    assert!(
        outcomes[1]
            .iter()
            .all(|o| matches!(o, CommandOutcome::Booked(_)))
    );
    assert_eq!(balance(&store, "u1").await, (3, 2_100));
    project_recorded(&store, &recorder).await;
    assert_verified(&store, 2, 6).await;
}

/// A failure retrying cannot fix is returned at once, not retried, and what other accounts
/// booked in the same call is still published.
pub async fn a_permanent_failure_is_not_retried_and_the_rest_is_published<S>(store: S)
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let flaky = Flaky::new(store.clone());
    *flaky.faults.only.lock().unwrap() = Some("v1".into());
    flaky
        .faults
        .corrupt_append
        .store(u32::MAX, Ordering::SeqCst);
    let recorder = Recorder::default();
    let service = commands(flaky.clone(), recorder.clone());
    let err = service
        .submit_chunks(vec![deposits("v1", 0..2, 100), deposits("v0", 0..2, 100)])
        .await
        .into_result()
        .unwrap_err();
    assert_eq!(
        err,
        CommandError::Store(StoreError::Corrupt("injected".into()))
    );
    assert_eq!(flaky.faults.injected(), 1, "not retried");
    assert_eq!(balance(&store, "v0").await, (2, 200));
    assert_eq!(balance(&store, "v1").await, (0, 0));
    project_recorded(&store, &recorder).await;
    assert_verified(&store, 1, 2).await;
}

/// The projector retries throttled snapshot writes within the batch; what still fails is
/// reported at the account's first record, the other accounts are written, and a
/// redelivery from the lowest failure (as Lambda does) converges. A throttled snapshot read
/// fails the whole batch, and the retry projects it.
pub async fn the_projector_retries_throttled_writes_and_reports_what_still_fails<S>(store: S)
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let recorder = Recorder::default();
    let service = commands(store.clone(), recorder.clone());
    // One record per account: buckets of 64 put these three in different buckets.
    let accounts = ["p0", "p1", "p2"];
    service
        .submit_chunks(accounts.iter().map(|a| deposits(a, 0..5, 10)).collect())
        .await
        .into_result()
        .unwrap();
    let metrics = Arc::new(Metrics::default());
    let flaky = Flaky::new(store.clone());
    let projector = Projector::new(
        flaky.clone(),
        flaky.clone(),
        flaky.clone(),
        100,
        metrics.clone(),
    );
    flaky.faults.put.store(2, Ordering::SeqCst);
    let first = recorder.take();
    assert_eq!(first.len(), 3);
    let response = projector.project(&batch_of(&first)).await;
    assert_eq!(flaky.faults.injected(), 2);
    assert!(response.failed.is_empty(), "retried within the batch");
    for a in accounts {
        assert_eq!(store.get(a).await.unwrap().map(|s| s.version), Some(5));
    }

    service
        .submit_chunks(accounts.iter().map(|a| deposits(a, 5..7, 10)).collect())
        .await
        .into_result()
        .unwrap();
    let second = recorder.take();
    *flaky.faults.only.lock().unwrap() = Some("p1".into());
    flaky.faults.put.store(u32::MAX, Ordering::SeqCst);
    let response = projector.project(&batch_of(&second)).await;
    let lowest = response.lowest_failure().expect("p1 is reported");
    assert_eq!(response.failed.len(), 1);
    let snapshot_versions = |store: S| async move {
        let mut v = Vec::new();
        for a in accounts {
            v.push(store.get(a).await.unwrap().map_or(0, |s| s.version));
        }
        v
    };
    assert_eq!(snapshot_versions(store.clone()).await, vec![7, 5, 7]);
    flaky.faults.clear();
    let response = projector.project(&batch_of(&second[lowest..])).await;
    assert!(response.failed.is_empty());
    assert_eq!(snapshot_versions(store.clone()).await, vec![7, 7, 7]);

    // A cold projector whose snapshot read is throttled fails every account of the batch.
    service
        .submit_chunks(accounts.iter().map(|a| deposits(a, 7..8, 10)).collect())
        .await
        .into_result()
        .unwrap();
    let third = recorder.take();
    let cold = Projector::new(
        flaky.clone(),
        flaky.clone(),
        flaky.clone(),
        100,
        Arc::default(),
    );
    flaky.faults.get_many.store(1, Ordering::SeqCst);
    let response = cold.project(&batch_of(&third)).await;
    assert_eq!(response.failed.len(), 3);
    assert_eq!(snapshot_versions(store.clone()).await, vec![7, 7, 7]);
    let response = cold.project(&batch_of(&third)).await;
    assert!(response.failed.is_empty());
    assert_verified(&store, 3, 24).await;
}

/// A publish throttled past its retries loses nothing: the command is booked, reads see it
/// at once (the query completes a lagging snapshot from the events), and the account's
/// next record makes the projector fill the gap from the event store (once a throttled
/// read of it has been reported and redelivered).
pub async fn a_throttled_publish_loses_nothing<S>(store: S)
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let recorder = Recorder::default();
    let publisher = Flaky::new(recorder.clone());
    publisher.faults.publish.store(1, Ordering::SeqCst);
    let service = commands(store.clone(), publisher.clone());
    let outcomes = service
        .submit_chunks(vec![deposits("q0", 0..2, 250)])
        .await
        .into_result()
        .unwrap();
    assert!(matches!(outcomes[0][1], CommandOutcome::Booked(_)));
    assert_eq!(publisher.faults.injected(), 1);
    assert!(
        recorder.0.lock().unwrap().is_empty(),
        "nothing reached the stream"
    );
    let query = QueryService::new(store.clone(), store.clone());
    let seen = query
        .balance(&AccountId::new("q0").unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((seen.version, seen.balance), (2, Money(500)));

    service
        .submit_chunks(vec![deposits("q0", 2..3, 250)])
        .await
        .into_result()
        .unwrap();
    // The first delivery cannot fill the gap (the event store read is throttled) and
    // reports the account; the redelivery fills it.
    let records = batch_of(&recorder.take());
    let events = Flaky::new(store.clone());
    events.faults.read.store(1, Ordering::SeqCst);
    let metrics = Arc::new(Metrics::default());
    let projector = Projector::new(
        events.clone(),
        store.clone(),
        store.clone(),
        100,
        metrics.clone(),
    );
    let response = projector.project(&records).await;
    assert_eq!(response.failed.len(), 1);
    assert_eq!(events.faults.injected(), 1);
    assert_eq!(
        store.get("q0").await.unwrap(),
        None,
        "nothing projected yet"
    );
    let response = projector.project(&records).await;
    assert!(response.failed.is_empty());
    assert_eq!(metrics.gaps_filled.load(Ordering::SeqCst), 1);
    let snapshot = store.get("q0").await.unwrap().unwrap();
    assert_eq!((snapshot.version, snapshot.balance), (3, Money(750)));
    assert_verified(&store, 1, 3).await;
}

fn embedded() -> EmbeddedStore {
    EmbeddedStore::in_memory().unwrap()
}

#[tokio::test]
async fn embedded_commands_ride_out_transient_throttling() {
    commands_ride_out_transient_throttling(embedded()).await;
}

#[tokio::test]
async fn embedded_persistent_throttling_fails_cleanly_and_a_resubmission_completes() {
    persistent_throttling_fails_cleanly_and_a_resubmission_completes(embedded()).await;
}

#[tokio::test]
async fn embedded_permanent_failure_is_not_retried_and_the_rest_is_published() {
    a_permanent_failure_is_not_retried_and_the_rest_is_published(embedded()).await;
}

#[tokio::test]
async fn embedded_projector_retries_throttled_writes_and_reports_what_still_fails() {
    the_projector_retries_throttled_writes_and_reports_what_still_fails(embedded()).await;
}

#[tokio::test]
async fn embedded_committed_append_whose_ack_was_lost_is_booked_and_published() {
    a_committed_append_whose_ack_was_lost_is_booked_and_published(embedded()).await;
}

#[tokio::test]
async fn embedded_throttled_publish_loses_nothing() {
    a_throttled_publish_loses_nothing(embedded()).await;
}

/// An append that committed, but whose caller saw a timeout: the command service sends the
/// same pages again, the store recognises them, and the commands are answered as booked
/// (not as duplicates of themselves) and published once.
pub async fn a_committed_append_whose_ack_was_lost_is_booked_and_published<S>(store: S)
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    let flaky = Flaky::new(store.clone());
    flaky.faults.lost_ack.store(1, Ordering::SeqCst);
    let recorder = Recorder::default();
    let service = commands(flaky.clone(), recorder.clone());
    // 40 deposits: two pages; and a bounced withdrawal, recorded with them.
    let mut chunk = deposits("la", 0..40, 10);
    chunk.commands.push(Command::Withdraw {
        txn_id: TxnId::new("la-w").unwrap(),
        amount: Money(1_000_000),
        occurred_at: at(),
    });
    let outcomes = service
        .submit_chunks(vec![chunk])
        .await
        .into_result()
        .unwrap();
    assert_eq!(flaky.faults.injected(), 1, "the ack was lost once");
    assert!(
        outcomes[0][..40]
            .iter()
            .all(|o| matches!(o, CommandOutcome::Booked(_))),
        "{:?}",
        outcomes[0]
    );
    assert!(matches!(outcomes[0][40], CommandOutcome::Refused(_)));
    assert_eq!(balance(&store, "la").await, (40, 400));
    assert_eq!(recorder.0.lock().unwrap().len(), 1, "published once");
    project_recorded(&store, &recorder).await;
    assert_verified(&store, 1, 40).await;
}

/// Merged bulk calls (`with_coalescing`) fail apart: an account whose append fails stops
/// the call that brought it, while a call whose commands all have outcomes is answered
/// without an error.
#[tokio::test] // one thread: both calls are queued before the merging task takes them
async fn a_merged_call_fails_only_for_the_caller_whose_commands_have_no_outcome() {
    let store = Flaky::new(embedded());
    let service = commands(store.clone(), Recorder::default()).with_coalescing();
    let chunk = |account: &str, id: &str| AccountChunk {
        account: AccountId::new(account).unwrap(),
        commands: vec![Command::Deposit {
            txn_id: TxnId::new(id).unwrap(),
            amount: Money(10),
            occurred_at: at(),
        }],
    };
    *store.faults.only.lock().unwrap() = Some("bad".into());
    store.faults.corrupt_append.store(1, Ordering::SeqCst);
    let (a, b) = tokio::join!(
        service.submit_chunks_spread(vec![chunk("ok1", "a1"), chunk("bad", "a2")], 1),
        service.submit_chunks_spread(vec![chunk("ok2", "b1")], 1)
    );
    assert_eq!(store.faults.injected(), 1);
    assert!(a.error.is_some(), "{a:?}");
    assert!(
        matches!(a.outcomes[0][..], [CommandOutcome::Booked(_)]),
        "{a:?}"
    );
    assert!(a.outcomes.get(1).is_none_or(|o| o.is_empty()), "{a:?}");
    assert!(b.error.is_none(), "{b:?}");
    assert!(
        matches!(b.outcomes[0][..], [CommandOutcome::Booked(_)]),
        "{b:?}"
    );
    assert_eq!(balance(&store.inner, "ok2").await, (1, 10));
    assert_eq!(balance(&store.inner, "bad").await, (0, 0));
}

/// Over a real socket: a throttled backend is a 503 with a JSON body and `Retry-After`, on
/// single commands and bulk files alike, and the resubmission books the rest.
#[tokio::test]
async fn throttling_is_a_503_with_retry_after_and_a_resubmission_is_safe() {
    let store = Flaky::new(embedded());
    let recorder = Recorder::default();
    let api = Arc::new(Api {
        commands: commands(store.clone(), recorder.clone()),
        query: QueryService::new(store.clone(), store.inner.clone()),
        metrics: Arc::default(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(api)).await });

    store.faults.append.store(u32::MAX, Ordering::SeqCst);
    let body = json!({"txn_id": "h1", "amount": 100, "occurred_at": "2026-11-01T10:00:00Z"});
    let path = "/v1/accounts/h/deposits";
    let reply = send(
        addr,
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(reply.json()["error"], "throttled");
    assert!(
        reply
            .head
            .to_ascii_lowercase()
            .contains("\r\nretry-after: 1"),
        "{}",
        reply.head
    );
    let reply = send(
        addr,
        "GET",
        "/v1/accounts/h/balance",
        "application/json",
        b"",
    )
    .await;
    assert_eq!(reply.status, 404, "nothing was written");

    // A bulk file over two accounts, one of them throttled until cleared.
    *store.faults.only.lock().unwrap() = Some("h".into());
    let csv = "txn_id,account,kind,amount,occurred_at,reverses\n\
               g1,g,deposit,300,2026-11-01T10:00:00Z,\n\
               h1,h,deposit,100,2026-11-01T10:00:00Z,\n";
    let reply = send(addr, "POST", "/v1/transactions", "text/csv", csv.as_bytes()).await;
    assert_eq!(reply.status, 503, "{}", reply.body);
    assert_eq!(balance(&store.inner, "g").await, (1, 300), "g stays booked");
    // The 503 does not hide what was booked: the body says row 2 was accepted and row 3
    // has no outcome yet.
    let summary = &reply.json()["summary"];
    assert_eq!(
        (
            summary["rows"].as_u64(),
            summary["accepted"].as_u64(),
            summary["unprocessed"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{}",
        reply.body
    );
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("stopped at line 3"),
        "{}",
        reply.body
    );
    store.faults.clear();
    let reply = send(addr, "POST", "/v1/transactions", "text/csv", csv.as_bytes()).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        (
            reply.json()["accepted"].as_u64(),
            reply.json()["duplicates"].as_u64()
        ),
        (Some(1), Some(1))
    );
    let reply = send(
        addr,
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(
        reply.status, 200,
        "h1 was booked by the bulk file: {}",
        reply.body
    );
}
