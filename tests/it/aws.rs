//! The DynamoDB adapters against DynamoDB Local (`scripts/test` starts it; plain
//! `cargo test` without it prints that these were skipped and why). Each test uses its own
//! tables, named like the AWS resources, so tests run in parallel.

use std::sync::Arc;

use aws_sdk_dynamodb::config::{BehaviorVersion, Credentials, Region};
use tally::adapters::aws::AwsConfig;
use tally::adapters::aws::dynamodb::DynamoStore;
use tally::adapters::embedded::stream::{EmbeddedStream, Mapping, spawn_consumers};
use tally::codec::rows::{Format, RowReader};
use tally::domain::{AccountId, Command, Event, EventKind, Money, Policy, Timestamp, TxnId};
use tally::ports::{
    Append, AppendError, EventStore, PageWrite, SnapshotError, SnapshotPut, SnapshotStore,
};
use tally::service::audit;
use tally::service::command::{CommandOutcome, CommandService};
use tally::service::ingest::{Rejects, ingest};
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;

use crate::harness::txn;
use crate::store_contract;

/// The store on fresh tables, or `None` (and a note on stderr) without DynamoDB Local.
pub(crate) async fn store(test: &str) -> Option<DynamoStore> {
    store_with_ttl(test, None).await
}

/// The same, with markers kept for `ttl_secs` (an operator's opt-in).
pub(crate) async fn store_with_ttl(test: &str, ttl_secs: Option<u64>) -> Option<DynamoStore> {
    let Ok(endpoint) = std::env::var("TALLY_TEST_DYNAMODB_ENDPOINT") else {
        // Written past libtest's capture on purpose, so a plain `cargo test` shows it.
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED aws::{test}: TALLY_TEST_DYNAMODB_ENDPOINT is not set; \
             scripts/test starts DynamoDB Local and runs everything"
        );
        return None;
    };
    let client = dynamodb_client(endpoint);
    let suffix = format!(
        "{test}-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let config = AwsConfig {
        events_table: format!("tally-events-{suffix}"),
        balances_table: format!("tally-balances-{suffix}"),
        quarantine_table: format!("tally-quarantine-{suffix}"),
        marker_ttl_secs: ttl_secs,
    };
    let store = DynamoStore::new(client, config);
    store
        .create_tables()
        .await
        .expect("tables can be created in DynamoDB Local");
    Some(store)
}

pub(crate) fn dynamodb_client(endpoint: String) -> aws_sdk_dynamodb::Client {
    let conf = aws_sdk_dynamodb::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("eu-west-1"))
        .credentials_provider(Credentials::new("local", "local", None, None, "tests"))
        .build();
    aws_sdk_dynamodb::Client::from_conf(conf)
}

/// `scripts/emulators up` creates the tables from template.yaml; the adapter's own
/// `create_tables` (tests, `--create-resources`) must make the same keys, billing and
/// streams (the Events table's, for the backstop), and the template's TTL must be on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tables_made_from_the_template_match_what_the_adapter_creates() {
    let Some(ours) = store("shape").await else {
        return;
    };
    let client = dynamodb_client(std::env::var("TALLY_TEST_DYNAMODB_ENDPOINT").unwrap());
    let shape = |name: String| {
        let client = client.clone();
        async move {
            let t = client
                .describe_table()
                .table_name(&name)
                .send()
                .await
                .unwrap_or_else(|e| panic!("{name} (scripts/emulators up creates it): {e:?}"))
                .table
                .unwrap();
            let mut attributes: Vec<String> = t
                .attribute_definitions()
                .iter()
                .map(|a| format!("{}:{}", a.attribute_name(), a.attribute_type().as_str()))
                .collect();
            attributes.sort();
            let keys: Vec<String> = t
                .key_schema()
                .iter()
                .map(|k| format!("{}:{}", k.attribute_name(), k.key_type().as_str()))
                .collect();
            let billing = t
                .billing_mode_summary()
                .and_then(|b| b.billing_mode())
                .map(|b| b.as_str().to_owned());
            let stream = t
                .stream_specification()
                .filter(|s| s.stream_enabled())
                .and_then(|s| s.stream_view_type())
                .map(|v| v.as_str().to_owned());
            (attributes, keys, billing, stream)
        }
    };
    let ours_config = ours.config();
    for (template, adapter) in [
        ("tally-events", &ours_config.events_table),
        ("tally-balances", &ours_config.balances_table),
        ("tally-quarantine", &ours_config.quarantine_table),
    ] {
        let (a, b) = (
            shape(template.to_owned()).await,
            shape(adapter.clone()).await,
        );
        assert_eq!(a, b, "{template} vs {adapter}");
        assert_eq!(a.2.as_deref(), Some("PAY_PER_REQUEST"));
        // The backstop reads the Events table's stream; no other table has one.
        let stream = (template == "tally-events").then_some("NEW_IMAGE");
        assert_eq!(a.3.as_deref(), stream, "{template}'s stream");
    }
    let ttl = client
        .describe_time_to_live()
        .table_name("tally-events")
        .send()
        .await
        .unwrap();
    let ttl = ttl.time_to_live_description().unwrap();
    assert_eq!(ttl.attribute_name(), Some("expires_at"));
}

fn at() -> Timestamp {
    Timestamp::from_millis(1_793_523_600_000).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_conditions_tell_conflicts_duplicates_and_reversed_targets_apart() {
    if let Some(store) = store("appends").await {
        store_contract::conditions_tell_conflicts_duplicates_and_reversed_targets_apart(store)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_an_accounts_pages_stop_at_the_first_failure() {
    if let Some(store) = store("prefix").await {
        store_contract::an_accounts_pages_stop_at_the_first_failure(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_retried_page_succeeds_again_and_writes_once() {
    if let Some(store) = store("retry").await {
        store_contract::a_retried_page_succeeds_again_and_writes_once(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_an_identical_page_from_another_attempt_is_not_a_success() {
    if let Some(store) = store("twins").await {
        store_contract::an_identical_page_from_another_attempt_is_not_a_success(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_each_of_many_accounts_in_one_call_gets_its_own_result() {
    if let Some(store) = store("many").await {
        store_contract::each_of_many_accounts_in_one_call_gets_its_own_result(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_an_account_twice_in_one_call_is_appended_in_order() {
    if let Some(store) = store("twice").await {
        store_contract::an_account_twice_in_one_call_is_appended_in_order(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_retry_is_recognised_whatever_travels_with_it() {
    if let Some(store) = store("regroup").await {
        store_contract::a_retry_is_recognised_whatever_travels_with_it(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_load_many_answers_each_account_as_load_does() {
    if let Some(store) = store("loadmany").await {
        store_contract::load_many_answers_each_account_as_load_does(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_refusals_are_outcomes_even_without_events() {
    if let Some(store) = store("refusals").await {
        store_contract::refusals_are_outcomes_even_without_events(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_page_that_does_not_continue_its_versions_is_refused() {
    if let Some(store) = store("shape").await {
        store_contract::a_page_that_does_not_continue_its_versions_is_refused(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_point_in_time_reads_agree_with_every_event() {
    if let Some(store) = store("pit").await {
        store_contract::point_in_time_reads_agree_with_every_event(store).await;
    }
}

/// With an operator's TTL, an expired marker DynamoDB has not deleted yet counts as deleted:
/// the id may be decided again, and the transaction can no longer be reversed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_an_expired_marker_counts_as_deleted_before_dynamodb_removes_it() {
    let Some(store) = store_with_ttl("ttl", Some(86_400)).await else {
        return;
    };
    // Booked "at()" (2026-11-01) with a one-day TTL: expired now, but still in the table.
    let acct = AccountId::new("ttl-1").unwrap();
    let booked = Append {
        account: acct.clone(),
        expected_version: 0,
        pages: vec![PageWrite {
            events: vec![store_contract::deposit(1, "d1", 100, 100)],
            refusals: vec![],
        }],
        attempt: store_contract::ATTEMPT,
        decided_at: at(),
    };
    assert_eq!(store.append(vec![booked]).await[0].error, None);
    assert_eq!(store.txn(&acct, &txn("d1")).await.unwrap(), None);
    let (tip, found) = store.load(&acct, &[txn("d1")]).await.unwrap();
    assert_eq!((tip.version, found), (1, vec![None]));
    // Reversing it is refused by the store's condition, as for an unknown target.
    let reversal = Event {
        version: 2,
        txn_id: txn("r1"),
        kind: EventKind::Reversed {
            reverses: txn("d1"),
            delta: Money(-100),
        },
        occurred_at: at(),
        recorded_at: Timestamp::from_millis(1_900_000_000_000).unwrap(),
        balance: Money(0),
    };
    let result = store
        .append(vec![Append {
            account: acct.clone(),
            expected_version: 1,
            pages: vec![PageWrite {
                events: vec![reversal],
                refusals: vec![],
            }],
            attempt: store_contract::ATTEMPT,
            decided_at: Timestamp::from_millis(1_900_000_000_000).unwrap(),
        }])
        .await;
    assert_eq!(
        result[0].error,
        Some(AppendError::TargetReversed(txn("d1")))
    );
    // And the id can be booked again, as a new transaction (decided now, after expiry).
    let mut rebooked = store_contract::deposit(2, "d1", 100, 200);
    rebooked.recorded_at = Timestamp::from_millis(1_900_000_000_000).unwrap();
    let again = Append {
        account: acct.clone(),
        expected_version: 1,
        pages: vec![PageWrite {
            events: vec![rebooked],
            refusals: vec![],
        }],
        attempt: store_contract::ATTEMPT,
        decided_at: Timestamp::from_millis(1_900_000_000_000).unwrap(),
    };
    assert_eq!(store.append(vec![again]).await[0].error, None);
    assert_eq!(store.tip(&acct).await.unwrap().version, 2);
}

/// With an operator's TTL, a page of refusals only that committed but whose answer was lost
/// (a timeout) is retried by the same attempt a second or more later: the retry is the same
/// request, so DynamoDB recognises its token and it succeeds. Its markers' expiry counts from
/// the call's decision time, not from the clock at each send (which made the retry a
/// different request under the same token: `IdempotentParameterMismatch`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_retried_refusal_page_under_a_ttl_is_the_same_request() {
    let Some(store) = store_with_ttl("ttl-retry", Some(86_400)).await else {
        return;
    };
    let acct = AccountId::new("ttl-retry-1").unwrap();
    let page = PageWrite {
        events: vec![],
        refusals: vec![
            store_contract::refusal("w1", 5, 0, 0),
            store_contract::refusal("w2", 6, 0, 0),
        ],
    };
    let append = Append {
        account: acct.clone(),
        expected_version: 0,
        pages: vec![page],
        attempt: store_contract::ATTEMPT,
        // Decided now, so the markers are live when read back.
        decided_at: tally::service::command::system_clock()(),
    };
    assert_eq!(store.append(vec![append.clone()]).await[0].error, None);
    // The clock moves on to another second before the retry.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    assert_eq!(store.append(vec![append]).await[0].error, None);
    assert!(matches!(
        store.txn(&acct, &txn("w2")).await.unwrap(),
        Some(tally::domain::TxnOutcome::Refused(_))
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_writes_are_conditional_and_a_conflict_returns_the_stored_item() {
    let Some(store) = store("balances").await else {
        return;
    };
    let one = tally::domain::Snapshot {
        version: 1,
        balance: Money(5),
        credit_total: 5,
        credit_count: 1,
        month: tally::domain::Month::new(2026, 11),
        month_balance: 5,
        last_occurred_at: Some(at()),
        updated_at: Some(at()),
        ..Default::default()
    };
    let put = |expected_version, snapshot| SnapshotPut {
        account: "acct-s".into(),
        expected_version,
        snapshot,
    };
    assert_eq!(store.put_many(vec![put(0, one)]).await, vec![Ok(())]);
    let lost = store.put_many(vec![put(0, one)]).await;
    assert_eq!(
        lost,
        vec![Err(SnapshotError::Conflict {
            current: Some(Box::new(one))
        })],
        "ALL_OLD comes back with the failure"
    );
    assert_eq!(
        store
            .get_many(vec!["acct-s".into(), "none".into()])
            .await
            .unwrap(),
        vec![Some(one), None]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_pipeline_on_dynamodb_books_the_example_and_verifies_clean() {
    let Some(store) = store("pipeline").await else {
        return;
    };
    let metrics = Arc::new(Metrics::default());
    let projector = Arc::new(Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1_000,
        metrics.clone(),
    ));
    let stream = EmbeddedStream::new(2, metrics.clone());
    let consumers = spawn_consumers(stream.clone(), projector, Mapping::default());
    let commands = CommandService::new(
        store.clone(),
        stream.clone(),
        Policy::default(),
        64,
        Arc::new(at),
    );
    let csv = include_str!("../../examples/transactions.csv");
    let rows = RowReader::new(csv.as_bytes(), Format::Csv).unwrap();
    let mut rejects = Rejects::new(Vec::new()).unwrap();
    let s = ingest(rows, &commands, &mut rejects, |_| {}).await.unwrap();
    assert_eq!((s.accepted, s.duplicates, s.refused), (13, 1, 1));
    // The same file again changes nothing: the bounced withdrawal's refusal is replayed, not
    // decided again against the now larger balance.
    let rows = RowReader::new(csv.as_bytes(), Format::Csv).unwrap();
    let s = ingest(rows, &commands, &mut rejects, |_| {}).await.unwrap();
    assert_eq!(
        (s.accepted, s.duplicates, s.refused, s.replayed_refusals),
        (0, 14, 0, 1)
    );
    consumers.drain().await;
    consumers.stop().await;
    let alice = store.get("alice").await.unwrap().unwrap();
    assert_eq!(
        (alice.balance, alice.month_balance),
        (Money(270_000), 65_000)
    );
    let report = audit::verify(&store, &store).await.unwrap();
    assert_eq!(
        (report.accounts, report.events, report.is_clean()),
        (4, 13, true)
    );

    // Two writers racing withdrawals on one account through DynamoDB: never an overdraft.
    let racers: Vec<_> = (0..12)
        .map(|i| {
            let commands = CommandService::new(
                store.clone(),
                stream.clone(),
                Policy::default(),
                64,
                Arc::new(at),
            );
            tokio::spawn(async move {
                let cmd = Command::Withdraw {
                    txn_id: TxnId::new(format!("race-{i}")).unwrap(),
                    amount: Money(20_000),
                    occurred_at: at(),
                };
                commands.submit(AccountId::new("dave").unwrap(), cmd).await
            })
        })
        .collect();
    let mut booked = 0;
    for r in racers {
        if let Ok(CommandOutcome::Booked(e)) = r.await.unwrap() {
            assert!(e.balance.minor() >= 0);
            booked += 1;
        }
    }
    assert_eq!(
        booked, 3,
        "75,000 covers exactly three withdrawals of 20,000"
    );
    assert_eq!(
        store
            .tip(&AccountId::new("dave").unwrap())
            .await
            .unwrap()
            .balance,
        Money(15_000)
    );
}

/// A fresh stream on kinesalite, or `None` (and a note) without it.
pub(crate) async fn kinesis(test: &str, shards: i32) -> Option<(aws_sdk_kinesis::Client, String)> {
    let Ok(endpoint) = std::env::var("TALLY_TEST_KINESIS_ENDPOINT") else {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED aws::{test}: TALLY_TEST_KINESIS_ENDPOINT is not set; scripts/test starts kinesalite"
        );
        return None;
    };
    let conf = aws_sdk_kinesis::Config::builder()
        .behavior_version(aws_sdk_kinesis::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_kinesis::config::Region::new("eu-west-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "local", "local", None, None, "tests",
        ))
        .build();
    let client = aws_sdk_kinesis::Client::from_conf(conf);
    let stream = format!("tally-events-{test}-{}", std::process::id());
    client
        .create_stream()
        .stream_name(&stream)
        .shard_count(shards)
        .send()
        .await
        .expect("stream created");
    for _ in 0..100 {
        let d = client
            .describe_stream_summary()
            .stream_name(&stream)
            .send()
            .await
            .unwrap();
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            return Some((client, stream));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("stream {stream} never became ACTIVE");
}

/// Issue 10's first repro on DynamoDB: a generated file (bounced withdrawals, reversals of
/// unknown targets, exact duplicates) ingested twice. The second run books nothing and
/// changes no event and no snapshot: every row is a duplicate, a replayed refusal, a reused
/// id or invalid, as the first run counted them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_file_ingested_twice_on_dynamodb_changes_nothing() {
    let Some(store) = store("twice").await else {
        return;
    };
    let mut csv = Vec::new();
    tally::workload::generate(
        tally::workload::GenSpec {
            accounts: 40,
            transactions: 1_500,
            zipf: Some(1.0),
            seed: 11,
        },
        &mut csv,
    )
    .unwrap();
    let metrics = Arc::new(Metrics::default());
    let projector = Arc::new(Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1_000,
        metrics.clone(),
    ));
    let stream = EmbeddedStream::new(2, metrics.clone());
    let consumers = spawn_consumers(stream.clone(), projector, Mapping::default());
    let commands = CommandService::new(store.clone(), stream, Policy::default(), 64, Arc::new(at));
    let run = || async {
        let rows = RowReader::new(std::io::Cursor::new(csv.clone()), Format::Csv).unwrap();
        let mut rejects = Rejects::new(Vec::new()).unwrap();
        let s = ingest(rows, &commands, &mut rejects, |_| {}).await.unwrap();
        consumers.drain().await;
        s
    };
    let first = run().await;
    assert!(first.refused > 0 && first.duplicates > 0, "{first:?}");
    let before = crate::pipeline::everything(&store).await;
    let second = run().await;
    assert_eq!(crate::pipeline::everything(&store).await, before);
    assert_eq!((second.accepted, second.refused), (0, 0));
    assert_eq!(second.duplicates, first.accepted + first.duplicates);
    assert_eq!(
        second.replayed_refusals,
        first.refused + first.replayed_refusals
    );
    assert!(audit::verify(&store, &store).await.unwrap().is_clean());
    consumers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_published_to_kinesis_arrive_whole_with_each_key_on_one_shard_in_order() {
    use tally::adapters::aws::kinesis::KinesisPublisher;
    use tally::ports::{EventPublisher, OutRecord};
    let Some((client, stream)) = kinesis("publish", 3).await else {
        return;
    };
    let publisher = KinesisPublisher::new(client.clone(), &stream);
    // 1,200 records: more than one PutRecords call; 4 partition keys.
    let records: Vec<OutRecord> = (0..1_200u32)
        .map(|i| OutRecord {
            partition_key: format!("b{:04x}", i % 4),
            data: i.to_be_bytes().to_vec(),
        })
        .collect();
    publisher.publish(records).await.unwrap();
    let shards = client
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap();
    let mut seen: std::collections::HashMap<String, (String, Vec<u32>)> = Default::default();
    for shard in shards.shards() {
        let mut iterator = client
            .get_shard_iterator()
            .stream_name(&stream)
            .shard_id(shard.shard_id())
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_owned);
        while let Some(it) = iterator.take() {
            let out = client
                .get_records()
                .shard_iterator(it)
                .limit(1_000)
                .send()
                .await
                .unwrap();
            for r in out.records() {
                let value = u32::from_be_bytes(r.data().as_ref().try_into().unwrap());
                let entry = seen
                    .entry(r.partition_key().to_owned())
                    .or_insert_with(|| (shard.shard_id().to_owned(), Vec::new()));
                assert_eq!(entry.0, shard.shard_id(), "a partition key spans shards");
                entry.1.push(value);
            }
            if !out.records().is_empty() {
                iterator = out.next_shard_iterator().map(str::to_owned);
            }
        }
    }
    assert_eq!(seen.len(), 4);
    for (key, (_, values)) in &seen {
        let want: Vec<u32> = (0..1_200u32)
            .filter(|i| format!("b{:04x}", i % 4) == *key)
            .collect();
        assert_eq!(values, &want, "{key}: lost, duplicated or reordered");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_to_dynamodb_to_kinesis_to_the_projector_and_back_with_a_poison_record_and_a_split_shard()
 {
    use tally::adapters::aws::kinesis::KinesisPublisher;
    use tally::adapters::aws::poller::spawn_poller;
    use tally::http::{Api, router};
    use tally::ports::{EventPublisher, OutRecord};
    use tally::service::query::QueryService;
    let Some(store) = store("flow").await else {
        return;
    };
    let Some((kinesis, stream)) = kinesis("flow", 1).await else {
        return;
    };
    let metrics = Arc::new(Metrics::default());
    let projector = Arc::new(Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1_000,
        metrics.clone(),
    ));
    let poller = spawn_poller(
        kinesis.clone(),
        stream.clone(),
        projector,
        Mapping::default(),
    );
    let publisher = KinesisPublisher::new(kinesis.clone(), &stream);
    let commands = CommandService::new(
        store.clone(),
        publisher.clone(),
        Policy::default(),
        64,
        Arc::new(at),
    )
    .with_metrics(metrics.clone());
    let api = Arc::new(Api {
        commands,
        query: QueryService::new(store.clone(), store.clone()),
        metrics: metrics.clone(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router(api)).await });
    let post = |path: &'static str, body: serde_json::Value| async move {
        crate::http::send(
            addr,
            "POST",
            path,
            "application/json",
            body.to_string().as_bytes(),
        )
        .await
    };

    // A poison record first: quarantined, and the shard goes on.
    publisher
        .publish(vec![OutRecord {
            partition_key: "b0000".into(),
            data: b"not a tally record, not at all".to_vec(),
        }])
        .await
        .unwrap();
    let r = post(
        "/v1/accounts/flo/deposits",
        serde_json::json!({"txn_id": "f1", "amount": 1000, "occurred_at": "2026-11-01T09:00:00Z"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = post(
        "/v1/accounts/flo/withdrawals",
        serde_json::json!({"txn_id": "f2", "amount": 300, "occurred_at": "2026-11-02T09:00:00Z"}),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.body);

    // Reshard while events flow: the child shards are read only after the parent is drained.
    let shard = kinesis
        .list_shards()
        .stream_name(&stream)
        .send()
        .await
        .unwrap()
        .shards()[0]
        .shard_id()
        .to_owned();
    kinesis
        .split_shard()
        .stream_name(&stream)
        .shard_to_split(&shard)
        .new_starting_hash_key((u128::MAX / 2).to_string())
        .send()
        .await
        .unwrap();
    for i in 3..=8 {
        let body = serde_json::json!({"txn_id": format!("f{i}"), "amount": 10 * i, "occurred_at": "2026-11-03T09:00:00Z"});
        assert_eq!(post("/v1/accounts/flo/deposits", body).await.status, 201);
    }
    let r = post("/v1/accounts/flo/reversals", serde_json::json!({"txn_id": "f9", "reverses": "f2", "occurred_at": "2026-11-04T09:00:00Z"})).await;
    assert_eq!(r.status, 201, "{}", r.body);
    let r = crate::http::send(
        addr,
        "POST",
        "/v1/transactions",
        "text/csv",
        include_str!("../../examples/transactions.csv").as_bytes(),
    )
    .await;
    assert_eq!(r.json()["accepted"].as_u64(), Some(13));

    poller.drain().await;
    // Projected through Kinesis (the Balances item itself is current, not completed on read).
    let flo = store.get("flo").await.unwrap().unwrap();
    assert_eq!(
        (flo.version, flo.balance),
        (
            9,
            Money(1000 - 300 + (3..=8).map(|i| 10 * i).sum::<i64>() + 300)
        )
    );
    assert_eq!(
        store.get("alice").await.unwrap().unwrap().balance,
        Money(270_000)
    );
    let q = store.quarantined().await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].data, b"not a tally record, not at all");
    assert_eq!(
        metrics
            .gaps_filled
            .load(std::sync::atomic::Ordering::Relaxed),
        0,
        "parents drained before children: no gap"
    );
    let report = audit::verify(&store, &store).await.unwrap();
    assert!(report.is_clean(), "{report:?}");
    poller.stop().await;
}

// Throttling injected at the port layer over DynamoDB Local (scenarios in `faults.rs`).

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_commands_ride_out_transient_throttling() {
    if let Some(store) = store("throttle-commands").await {
        crate::faults::commands_ride_out_transient_throttling(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_persistent_throttling_fails_cleanly_and_a_resubmission_completes() {
    if let Some(store) = store("throttle-persistent").await {
        crate::faults::persistent_throttling_fails_cleanly_and_a_resubmission_completes(store)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_projector_retries_throttled_writes_and_reports_what_still_fails() {
    if let Some(store) = store("throttle-projector").await {
        crate::faults::the_projector_retries_throttled_writes_and_reports_what_still_fails(store)
            .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_throttled_publish_loses_nothing() {
    if let Some(store) = store("throttle-publish").await {
        crate::faults::a_throttled_publish_loses_nothing(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_committed_append_whose_ack_was_lost_is_booked_and_published() {
    if let Some(store) = store("lost-ack").await {
        crate::faults::a_committed_append_whose_ack_was_lost_is_booked_and_published(store).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_permanent_failure_is_not_retried_and_the_rest_is_published() {
    if let Some(store) = store("permanent").await {
        crate::faults::a_permanent_failure_is_not_retried_and_the_rest_is_published(store).await;
    }
}
