//! Quarantine of any size, listing and redrive, on both backends (DynamoDB Local skipped,
//! saying so, without the emulators): a 1 MiB poison record (Kinesis's limit, 2.6× a
//! DynamoDB item) is kept byte for byte and never blocks its shard; a quarantined record
//! that decodes (after a fix) is projected by a redrive and only then removed.

use std::sync::{Arc, Mutex};

use tally::adapters::embedded::EmbeddedStore;
use tally::codec::batch::RecordBatch;
use tally::domain::{AccountId, Command, Money, Policy, Timestamp, TxnId};
use tally::ports::{
    EventPublisher, EventStore, OutRecord, Quarantine, QuarantineAdmin, Quarantined, SnapshotStore,
    StoreError,
};
use tally::service::command::CommandService;
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;
use tally::service::quarantine::{list, redrive};

use crate::aws::store;

fn at() -> Timestamp {
    Timestamp::from_millis(1_793_523_600_000).unwrap()
}

/// Keeps what would have been published.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<OutRecord>>>);

impl EventPublisher for Capture {
    async fn publish(&self, records: Vec<OutRecord>) -> Result<(), StoreError> {
        self.0.lock().unwrap().extend(records);
        Ok(())
    }
}

fn projector<S>(store: &S) -> Projector<S, S, S>
where
    S: EventStore + SnapshotStore + Quarantine + Clone,
{
    Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        1_000,
        Arc::new(Metrics::default()),
    )
}

fn batch(shard: &str, seq: &str, data: &[u8]) -> RecordBatch {
    let mut b = RecordBatch::new();
    b.push(shard, seq, data);
    b
}

/// 1 MiB that is not a tally record (no magic), different in every chunk.
fn poison() -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..1024 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn a_poison_record_of_one_mib_is_quarantined_whole_and_stays_after_a_redrive<S>(store: S)
where
    S: EventStore + SnapshotStore + QuarantineAdmin + Clone,
{
    let p = projector(&store);
    let data = poison();
    let seq = "49590338271490256608559692538361571095921575989136588898";
    let response = p.project(&batch("shardId-000000000001", seq, &data)).await;
    assert!(
        response.failed.is_empty(),
        "a poison record never blocks its shard: {response:?}"
    );
    let q = list(&store).await.unwrap();
    assert_eq!(q.len(), 1);
    assert_eq!(
        (q[0].shard.as_str(), q[0].sequence_number.as_str()),
        ("shardId-000000000001", seq)
    );
    assert_eq!(q[0].data.len(), data.len());
    assert!(q[0].data == data, "every byte kept, in order");
    assert!(q[0].error.contains("magic"), "{}", q[0].error);
    let done = redrive(&p, &store).await.unwrap();
    assert_eq!(done.projected, 0);
    assert_eq!(done.left.len(), 1);
    assert!(
        done.left[0].2.starts_with("still undecodable"),
        "{:?}",
        done.left
    );
    assert!(list(&store).await.unwrap()[0].data == data);
}

async fn a_quarantined_record_that_decodes_is_projected_by_a_redrive_then_removed<S>(store: S)
where
    S: EventStore + SnapshotStore + QuarantineAdmin + Clone,
{
    let capture = Capture::default();
    let commands = CommandService::new(
        store.clone(),
        capture.clone(),
        Policy::default(),
        64,
        Arc::new(at),
    );
    let cmd = Command::Deposit {
        txn_id: TxnId::new("q-1").unwrap(),
        amount: Money(4_200),
        occurred_at: at(),
    };
    commands
        .submit(AccountId::new("q-acct").unwrap(), cmd)
        .await
        .unwrap();
    let records = capture.0.lock().unwrap().clone();
    assert_eq!(records.len(), 1);
    // As an older reader would have left it.
    store
        .put(Quarantined {
            shard: "shardId-000000000000".into(),
            sequence_number: "7".into(),
            data: records[0].data.clone(),
            error: "unsupported record format version (a reader since fixed)".into(),
        })
        .await
        .unwrap();
    assert_eq!(store.get("q-acct").await.unwrap(), None);
    let done = redrive(&projector(&store), &store).await.unwrap();
    assert_eq!((done.projected, done.left.len()), (1, 0));
    let s = store.get("q-acct").await.unwrap().unwrap();
    assert_eq!((s.version, s.balance), (1, Money(4_200)));
    assert!(list(&store).await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_poison_record_of_one_mib_is_quarantined_whole_and_stays_after_a_redrive() {
    if let Some(s) = store("quarantine-mib").await {
        a_poison_record_of_one_mib_is_quarantined_whole_and_stays_after_a_redrive(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_poison_record_of_one_mib_is_quarantined_whole_and_stays_after_a_redrive() {
    a_poison_record_of_one_mib_is_quarantined_whole_and_stays_after_a_redrive(
        EmbeddedStore::in_memory().unwrap(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_quarantined_record_that_decodes_is_projected_by_a_redrive_then_removed() {
    if let Some(s) = store("quarantine-redrive").await {
        a_quarantined_record_that_decodes_is_projected_by_a_redrive_then_removed(s).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_a_quarantined_record_that_decodes_is_projected_by_a_redrive_then_removed() {
    a_quarantined_record_that_decodes_is_projected_by_a_redrive_then_removed(
        EmbeddedStore::in_memory().unwrap(),
    )
    .await;
}

/// What an operator runs when the `RecordsQuarantined` alarm fires, on DynamoDB Local:
/// the list names the record and dumps its bytes whole; a redrive leaves it (exit 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tally_quarantine_list_dumps_every_byte_and_redrive_says_what_it_left() {
    let Some(store) = store("quarantine-cli").await else {
        return;
    };
    let data = poison();
    store
        .put(Quarantined {
            shard: "shardId-000000000003".into(),
            sequence_number: "4242".into(),
            data: data.clone(),
            error: "not a tally record (bad magic)".into(),
        })
        .await
        .unwrap();
    let flags = crate::aws_cli::aws_flags(&store, "unused");
    let dir = std::env::temp_dir().join(format!("tally-qdump-{}", std::process::id()));
    let dump = dir.to_string_lossy().into_owned();
    let (code, out, err) = crate::aws_cli::run(&flags, &["quarantine", "list", "--dump", &dump]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("shardId-000000000003\t4242\t1048576 bytes\tnot a tally record (bad magic)"),
        "{out}"
    );
    assert!(out.contains("1 quarantined records"), "{out}");
    let dumped = std::fs::read(dir.join("shardId-000000000003_4242.bin")).unwrap();
    assert!(dumped == data);
    let (code, out, _) = crate::aws_cli::run(&flags, &["quarantine", "redrive"]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("redrove 0 records; 1 left in quarantine"),
        "{out}"
    );
    let _ = std::fs::remove_dir_all(dir);
}
