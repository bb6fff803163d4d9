//! The AWS backstop against the emulators: the whole system as `tally serve --backend aws`
//! runs it (Kinesis poller → projector, Events table stream → backstop), with the three
//! ways an acknowledged event can miss the projector. Each Balances item must reach the
//! account's newest version within a bounded time, with the delay set to one second.
//! Skipped, saying so, without the emulators.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use tally::adapters::aws::dynamodb::DynamoStore;
use tally::adapters::aws::kinesis::KinesisPublisher;
use tally::adapters::aws::poller::spawn_poller;
use tally::adapters::aws::streams::spawn_stream_backstop;
use tally::adapters::embedded::stream::Mapping;
use tally::domain::{AccountId, Command, Money, Policy, Timestamp, TxnId};
use tally::ports::{
    EventPublisher, OutRecord, SnapshotError, SnapshotPut, SnapshotStore, StoreError,
};
use tally::service::backstop::Backstop;
use tally::service::command::{CommandOutcome, CommandService};
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;

use crate::aws::{dynamodb_client, kinesis, store};

const DELAY: Duration = Duration::from_secs(1);
/// The bound the tests hold the backstop to with a one-second delay (polling rounds,
/// DynamoDB Local's stream latency and a loaded CI machine included).
const BOUND: Duration = Duration::from_secs(30);

fn at() -> Timestamp {
    Timestamp::from_millis(1_793_523_600_000).unwrap()
}

fn streams_client() -> aws_sdk_dynamodbstreams::Client {
    let endpoint = std::env::var("TALLY_TEST_DYNAMODB_ENDPOINT").unwrap();
    let conf = aws_sdk_dynamodbstreams::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "tests"))
        .build();
    aws_sdk_dynamodbstreams::Client::from_conf(conf)
}

/// A process that died between append and publish: the publish never happens.
struct Crashed;

impl EventPublisher for Crashed {
    async fn publish(&self, _: Vec<OutRecord>) -> Result<(), StoreError> {
        Ok(())
    }
}

/// The projector's snapshot store, refusing every write of accounts named `doomed-*`: the
/// mapping retries their records and gives up on them.
#[derive(Clone)]
struct RefusesDoomed(DynamoStore);

impl SnapshotStore for RefusesDoomed {
    async fn get_many(
        &self,
        accounts: Vec<String>,
    ) -> Result<Vec<Option<tally::domain::Snapshot>>, StoreError> {
        self.0.get_many(accounts).await
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        let doomed: Vec<bool> = puts
            .iter()
            .map(|p| p.account.starts_with("doomed-"))
            .collect();
        let mut results = self
            .0
            .put_many(
                puts.into_iter()
                    .filter(|p| !p.account.starts_with("doomed-"))
                    .collect(),
            )
            .await
            .into_iter();
        doomed
            .into_iter()
            .map(|d| {
                if d {
                    Err(SnapshotError::Store(StoreError::Corrupt(
                        "refused by the test".into(),
                    )))
                } else {
                    results.next().expect("one result per put")
                }
            })
            .collect()
    }
}

/// The system: a Kinesis poller feeding a projector over `snapshots`, and the stream
/// backstop over the real store. Returns the backstop's metrics and a stopper.
async fn system<S: SnapshotStore>(
    store: &DynamoStore,
    kinesis: aws_sdk_kinesis::Client,
    stream: String,
    snapshots: S,
) -> (Arc<Metrics>, impl AsyncFnOnce()) {
    let projector = Arc::new(Projector::new(
        store.clone(),
        snapshots,
        store.clone(),
        1_000,
        Arc::new(Metrics::default()),
    ));
    let mapping = Mapping {
        retries_max: 1,
        ..Mapping::default()
    };
    let poller = spawn_poller(kinesis, stream, projector, mapping);
    let metrics = Arc::new(Metrics::default());
    let checker = Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1,
        metrics.clone(),
    );
    let backstop = Arc::new(Backstop::new(
        Arc::new(checker),
        store.clone(),
        metrics.clone(),
        DELAY,
    ));
    let endpoint = std::env::var("TALLY_TEST_DYNAMODB_ENDPOINT").unwrap();
    let reader = spawn_stream_backstop(
        dynamodb_client(endpoint),
        streams_client(),
        store.config().events_table.clone(),
        backstop,
    );
    (metrics, async move || {
        reader.stop().await;
        poller.stop().await;
    })
}

async fn deposit<P: EventPublisher>(
    commands: &CommandService<DynamoStore, P>,
    account: &str,
    txn: &str,
    amount: i64,
) {
    let cmd = Command::Deposit {
        txn_id: TxnId::new(txn).unwrap(),
        amount: Money(amount),
        occurred_at: at(),
    };
    let outcome = commands
        .submit(AccountId::new(account).unwrap(), cmd)
        .await
        .unwrap();
    assert!(
        matches!(outcome, CommandOutcome::Booked(_)),
        "{txn}: {outcome:?}"
    );
}

/// Waits until `account`'s Balances item is at `version` with `balance`; fails past BOUND.
async fn reaches(store: &DynamoStore, account: &str, version: u64, balance: i64) -> Duration {
    let start = Instant::now();
    loop {
        let s = store.get(account).await.unwrap();
        if let Some(s) = s
            && s.version == version
        {
            assert_eq!(s.balance, Money(balance), "{account}");
            return start.elapsed();
        }
        assert!(
            start.elapsed() < BOUND,
            "{account} stuck at {s:?}, expected version {version}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn commands<P: EventPublisher>(
    store: &DynamoStore,
    publisher: P,
) -> CommandService<DynamoStore, P> {
    CommandService::new(
        store.clone(),
        publisher,
        Policy::default(),
        64,
        Arc::new(at),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_lost_to_a_network_cut_reaches_the_balances_through_the_backstop() {
    let Some(store) = store("backstop-cut").await else {
        return;
    };
    let Some((client, stream)) = kinesis("backstop-cut", 1).await else {
        return;
    };
    let (metrics, stop) = system(&store, client.clone(), stream.clone(), store.clone()).await;
    // Kinesis unreachable: nothing listens on this port, so the publisher gives up.
    let cut = aws_sdk_kinesis::Client::from_conf(
        client
            .config()
            .to_builder()
            .endpoint_url("http://127.0.0.1:9401")
            .build(),
    );
    let during = commands(&store, KinesisPublisher::new(cut, stream.clone()));
    let appended = Instant::now();
    deposit(&during, "cut-a", "cut-1", 500).await;
    deposit(&during, "cut-a", "cut-2", 250).await;
    // Kinesis back: later commands publish again; the lost records are never re-sent.
    let after = commands(&store, KinesisPublisher::new(client, stream));
    deposit(&after, "cut-b", "cut-3", 100).await;
    reaches(&store, "cut-b", 1, 100).await;
    reaches(&store, "cut-a", 2, 750).await;
    let took = appended.elapsed();
    assert!(
        metrics
            .accounts_repaired
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    eprintln!("cut-a in Balances {took:?} after its first append (publisher gave up in between)");
    stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_append_and_publish_reaches_the_balances_through_the_backstop() {
    let Some(store) = store("backstop-crash").await else {
        return;
    };
    let Some((client, stream)) = kinesis("backstop-crash", 1).await else {
        return;
    };
    let (metrics, stop) = system(&store, client, stream, store.clone()).await;
    let crashed = commands(&store, Crashed);
    for i in 0..40 {
        deposit(
            &crashed,
            &format!("crash-{}", i % 4),
            &format!("crash-t{i}"),
            10 + i,
        )
        .await;
    }
    for a in 0..4 {
        let (n, sum) = (0..40)
            .filter(|i| i % 4 == a)
            .fold((0, 0), |(n, s), i| (n + 1, s + 10 + i));
        reaches(&store, &format!("crash-{a}"), n, sum).await;
    }
    // Every account was repaired, at least once and at most once per page (a check
    // brings an account up to the newest page it was told of).
    let repaired = metrics
        .accounts_repaired
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!((4..=40).contains(&repaired), "{repaired} repairs");
    assert_eq!(
        metrics
            .backstop_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_the_mapping_gave_up_on_reaches_the_balances_through_the_backstop() {
    let Some(store) = store("backstop-gaveup").await else {
        return;
    };
    let Some((client, stream)) = kinesis("backstop-gaveup", 1).await else {
        return;
    };
    let (metrics, stop) = system(
        &store,
        client.clone(),
        stream.clone(),
        RefusesDoomed(store.clone()),
    )
    .await;
    let live = commands(&store, KinesisPublisher::new(client, stream));
    deposit(&live, "doomed-1", "gaveup-1", 300).await;
    deposit(&live, "fine-1", "gaveup-2", 200).await;
    deposit(&live, "doomed-1", "gaveup-3", 50).await;
    reaches(&store, "fine-1", 1, 200).await;
    reaches(&store, "doomed-1", 2, 350).await;
    assert!(
        metrics
            .accounts_repaired
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    stop().await;
}

/// The Lambda's body (`Backstop::check_when_due`) on the embedded store, in paused time: it
/// waits until each page is the delay old, no less, then repairs the account.
#[tokio::test(start_paused = true)]
async fn the_lambda_body_checks_a_page_only_once_it_is_the_delay_old() {
    use tally::adapters::embedded::EmbeddedStore;
    use tally::service::backstop::PageNotice;

    let store = EmbeddedStore::in_memory().unwrap();
    let metrics = Arc::new(Metrics::default());
    let checker = Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1,
        metrics.clone(),
    );
    let delay = Duration::from_secs(60);
    let backstop = Backstop::new(Arc::new(checker), store.clone(), metrics.clone(), delay);
    let crashed = CommandService::new(store.clone(), Crashed, Policy::default(), 64, Arc::new(at));
    let cmd = Command::Deposit {
        txn_id: TxnId::new("paused-1").unwrap(),
        amount: Money(900),
        occurred_at: at(),
    };
    crashed
        .submit(AccountId::new("paused").unwrap(), cmd)
        .await
        .unwrap();
    let origin = tokio::time::Instant::now();
    let now = move || 1_000_000 + origin.elapsed().as_millis() as i64;
    let notices = [PageNotice {
        account: "paused".into(),
        last_version: 1,
        appended_at_ms: now(),
    }];
    assert_eq!(store.get("paused").await.unwrap(), None);
    let checked = backstop.check_when_due(&notices, now).await.unwrap();
    assert!(
        origin.elapsed() >= delay,
        "checked after {:?}",
        origin.elapsed()
    );
    assert!(origin.elapsed() < delay + Duration::from_secs(1));
    assert_eq!(
        (checked.accounts, checked.repaired, checked.failed),
        (1, 1, 0)
    );
    let s = store.get("paused").await.unwrap().unwrap();
    assert_eq!((s.version, s.balance), (1, Money(900)));
    // Checked again (a redelivered batch): nothing behind, nothing written.
    let again = backstop.check(&notices).await.unwrap();
    assert_eq!((again.accounts, again.repaired), (1, 0));
}
