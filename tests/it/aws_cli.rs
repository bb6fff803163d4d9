//! Every data command on the AWS backend, through the real `tally` binary against DynamoDB
//! Local and kinesalite (fresh tables and stream per test, named on the command line), and
//! the command service's shortcuts on DynamoDB: tips remembered from its own appends, and
//! outcomes read for many accounts at once. Also an ingest interrupted by Ctrl-C and run
//! again. Skipped, saying so, without the emulators (see `aws::store`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;

use tally::adapters::aws::dynamodb::DynamoStore;
use tally::adapters::embedded::EmbeddedStore;
use tally::domain::{AccountId, Command as Cmd, Money, Policy, Rejection, Timestamp, TxnId};
use tally::ports::{EventPublisher, EventStore, OutRecord, StoreError};
use tally::service::command::{CommandOutcome, CommandService};

use crate::aws::{kinesis, store};

fn tally() -> Command {
    crate::harness::tally_bin()
}

/// The flags that point the binary at this test's tables and stream on the emulators.
pub(crate) fn aws_flags(store: &DynamoStore, stream: &str) -> Vec<String> {
    let c = store.config();
    let env = |k: &str| std::env::var(k).expect("set whenever the emulators are");
    [
        ("--backend", "aws".to_owned()),
        ("--events-table", c.events_table.clone()),
        ("--balances-table", c.balances_table.clone()),
        ("--quarantine-table", c.quarantine_table.clone()),
        ("--stream", stream.to_owned()),
        ("--region", "eu-west-1".to_owned()),
        ("--dynamodb-endpoint", env("TALLY_TEST_DYNAMODB_ENDPOINT")),
        ("--kinesis-endpoint", env("TALLY_TEST_KINESIS_ENDPOINT")),
    ]
    .into_iter()
    .flat_map(|(k, v)| [k.to_owned(), v])
    .collect()
}

pub(crate) fn run(flags: &[String], args: &[&str]) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = tally()
        .args(flags)
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .output()
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// `tally serve --backend aws` on port 0: the poller playing the projector Lambda.
fn serve(flags: &[String]) -> Child {
    let mut child = tally()
        .args(flags)
        .args(["serve", "--addr", "127.0.0.1:0", "--batch-window-ms", "50"])
        .env("AWS_ACCESS_KEY_ID", "local")
        .env("AWS_SECRET_ACCESS_KEY", "local")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    loop {
        let line = lines
            .next()
            .expect("serve exited before listening")
            .unwrap();
        if line.starts_with("tally serving http://") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    child
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-awscli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The README's AWS walk-through, command by command: ingest (twice: nothing changes),
/// balance, history, verify (reports the lagging snapshots, repairs nothing), replay, verify
/// clean; then with a projector running, ingest waits until every booked event is projected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_data_command_runs_on_aws_as_on_the_embedded_backend() {
    let Some(store) = store("cli").await else {
        return;
    };
    let Some((_, stream)) = kinesis("cli", 1).await else {
        return;
    };
    let flags = aws_flags(&store, &stream);
    let dir = temp_dir("walk");
    let rejects = dir.join("rejects.csv");
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/transactions.csv");
    let ingest = |file: &str, extra: &[&str]| {
        let mut args = vec!["ingest", file, "--rejects", rejects.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&flags, &args)
    };
    let (code, out, err) = ingest(example, &[]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("15 rows, 13 accepted, 1 duplicates, 1 refused, 0 replayed refusals"),
        "{out}"
    );
    assert!(
        out.contains("alice                            270000  2026-11          65000"),
        "{out}"
    );
    assert!(
        out.contains("dave                              75000  2026-11          75000"),
        "{out}"
    );
    let refused = std::fs::read_to_string(&rejects).unwrap();
    assert!(
        refused.contains("6,t-005,carol,refused,amount"),
        "{refused}"
    );
    let (code, out, _) = ingest(example, &[]);
    assert_eq!(code, 0);
    assert!(
        out.contains("0 accepted, 14 duplicates, 0 refused, 1 replayed refusals"),
        "{out}"
    );

    let (code, out, _) = run(&flags, &["balance", "alice"]);
    assert_eq!(
        (code, out.trim()),
        (0, "alice: balance 270000 (version 4, 2026-11 65000)")
    );
    let (code, out, _) = run(
        &flags,
        &["balance", "bob", "--at", "2026-10-31T00:00:00Z", "--json"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["balance"], 97_500, "{out}");
    let (code, out, _) = run(&flags, &["history", "bob"]);
    assert_eq!(code, 0);
    assert!(out.contains("t-008 (reverses t-006)"), "{out}");
    let (code, _, err) = run(&flags, &["balance", "nobody"]);
    assert_eq!(code, 1);
    assert!(err.contains("account nobody has no events"), "{err}");

    // Nothing projects here: verify reports every snapshot lagging, twice (it repairs nothing).
    for _ in 0..2 {
        let (code, out, _) = run(&flags, &["verify", "--segments", "3"]);
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains("LAGGING alice: snapshot at version 0, events up to 4"),
            "{out}"
        );
        assert!(
            out.contains("verified 4 accounts, 13 events: 0 differences, 4 lagging"),
            "{out}"
        );
    }
    let (code, out, _) = run(&flags, &["replay"]);
    assert_eq!((code, out.trim()), (0, "replayed 4 accounts"));
    let (code, out, _) = run(&flags, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("4 accounts, 13 events: 0 differences, 0 lagging snapshots, 0 broken"));

    // With the projector running, ingest can wait for it.
    let mut server = serve(&flags);
    let more = dir.join("more.csv");
    std::fs::write(
        &more,
        "txn_id,account,kind,amount,occurred_at,reverses\n\
         m-1,erin,deposit,700,2026-11-20T10:00:00Z,\n\
         m-2,alice,withdrawal,1000,2026-11-21T10:00:00Z,\n",
    )
    .unwrap();
    let (code, out, err) = ingest(more.to_str().unwrap(), &["--wait-projected", "60"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("projected: every snapshot of the 2 accounts booked is current"),
        "{out}"
    );
    let (code, out, _) = run(&flags, &["verify"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("verified 5 accounts, 15 events"), "{out}");
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

/// A bad setting stops every command before it does anything, naming flag and variable.
#[test]
fn a_missing_or_bad_setting_is_named_before_anything_runs() {
    let out = tally()
        .args(["--backend", "aws", "verify"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        err.contains("--events-table (or TALLY_EVENTS_TABLE): not set"),
        "{err}"
    );
    let dir = temp_dir("badsetting");
    let out = tally()
        .args(["--data-dir", dir.to_str().unwrap(), "balance", "x"])
        .env("TALLY_OVERDRAFT_LIMIT", "-5")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains("TALLY_OVERDRAFT_LIMIT"), "{err}");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing was opened"
    );
    let _ = std::fs::remove_dir_all(&dir);
    // A Lambda fails at cold start the same way.
    let out = Command::new(env!("CARGO_BIN_EXE_command"))
        .env_clear()
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TALLY_EVENTS_TABLE"), "{err}");
}

/// Policy comes from the configuration: an overdraft limit lets a withdrawal through that
/// the default refuses, and an amount above the configured maximum is invalid.
#[test]
fn the_policy_is_configured_by_flag_or_variable() {
    let dir = temp_dir("policy");
    let file = dir.join("p.csv");
    std::fs::write(
        &file,
        "txn_id,account,kind,amount,occurred_at,reverses\n\
         p-1,pat,deposit,100,2026-11-01T10:00:00Z,\n\
         p-2,pat,withdrawal,150,2026-11-02T10:00:00Z,\n\
         p-3,pat,deposit,5000,2026-11-03T10:00:00Z,\n",
    )
    .unwrap();
    let out = tally()
        .args([
            "--data-dir",
            dir.join("db").to_str().unwrap(),
            "--amount-max",
            "1000",
        ])
        .args(["ingest", file.to_str().unwrap(), "--rejects"])
        .arg(dir.join("rejects.csv"))
        .env("TALLY_OVERDRAFT_LIMIT", "50")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 rows, 2 accepted, 0 duplicates, 0 refused, 0 replayed refusals, 0 reused ids, 1 invalid"), "{text}");
    assert!(
        text.contains("pat                                 -50"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A first Ctrl-C stops the ingest between two windows: every row read has its outcome, the
/// message names the line to resume at, and running the whole file again books the rest
/// exactly once (the totals equal one uninterrupted run's).
#[test]
fn an_interrupted_ingest_says_where_it_stopped_and_a_rerun_completes_it() {
    let dir = temp_dir("interrupt");
    let file = dir.join("w.csv");
    // One whole window, then some: the interrupt lands in the first.
    let window = tally::service::ingest::INGEST_WINDOW_ROWS;
    let rows = (window + 50_000).to_string();
    let status = tally()
        .args([
            "gen",
            "--accounts",
            "2000",
            "--transactions",
            rows.as_str(),
            "--seed",
            "5",
        ])
        .arg("--out")
        .arg(&file)
        .status()
        .unwrap();
    assert!(status.success());
    let ingest = |db: &str| {
        let mut c = tally();
        c.args(["--data-dir", dir.join(db).to_str().unwrap(), "ingest"])
            .arg(&file)
            .arg("--rejects")
            .arg(dir.join(format!("{db}.rejects.csv")))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        c
    };
    let accepted = |out: &str| -> u64 {
        let s = out.split(" accepted").next().unwrap();
        s.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let child = ingest("db").spawn().unwrap();
    // The rejects file exists once the ingest has started reading.
    let rejects = dir.join("db.rejects.csv");
    while !rejects.exists() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    std::thread::sleep(std::time::Duration::from_millis(100));
    let pid = i32::try_from(child.id()).unwrap();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("interrupted before line {};", window + 2)),
        "{stderr}"
    );
    assert!(stdout.contains(&format!("{window} rows,")), "{stdout}");
    // stdout alone says the run is partial.
    assert!(
        stdout.contains(&format!(
            "; STOPPED: interrupted before line {}",
            window + 2
        )),
        "{stdout}"
    );
    let first = accepted(&stdout);
    let again = ingest("db").output().unwrap();
    let again = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(again.contains(&format!("{rows} rows,")), "{again}");
    let whole = ingest("clean").output().unwrap();
    let whole = String::from_utf8_lossy(&whole.stdout).into_owned();
    assert_eq!(
        first + accepted(&again),
        accepted(&whole),
        "{again}\n{whole}"
    );
    let verify = tally()
        .args(["--data-dir", dir.join("db").to_str().unwrap(), "verify"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn at() -> Timestamp {
    Timestamp::from_millis(1_793_523_600_000).unwrap()
}

/// Asked to stop after a full window, ingest looks at the next one: if the input ended
/// with the window just booked, the run is whole (not "stopped"); else it stopped before
/// the next row's first line, however many lines the rows before it took. Found from the
/// outside: a file of exactly one window said "interrupted before line 131074" with every
/// row booked, and a multi-line last row made the line point inside it.
#[tokio::test]
async fn a_stop_after_the_last_full_window_is_no_stop_and_names_the_next_rows_line() {
    use tally::codec::rows::{Format, RowReader};
    use tally::service::ingest::{IngestError, ReadAhead, Rejects, StopCause, ingest_with};
    let header = "txn_id,account,kind,amount,occurred_at,reverses\n";
    let row = |id: &str| format!("{id},s,deposit,1,2026-11-01T09:00:00Z,\n");
    // Three rows, the third over two lines (4 and 5).
    let window = format!(
        "{}{}{id},s,deposit,1,\"2026-11-01T09:00:00Z\n\",\n",
        row("r1"),
        row("r2"),
        id = "r3"
    );
    for read_ahead in [ReadAhead::Thread, ReadAhead::Inline] {
        let run = |text: String| async move {
            let store = EmbeddedStore::in_memory().unwrap();
            let rows =
                RowReader::new(std::io::Cursor::new(text.into_bytes()), Format::Csv).unwrap();
            let mut rejects = Rejects::new(Vec::new()).unwrap();
            ingest_with(
                read_ahead,
                3,
                rows,
                &service(store, 0),
                &mut rejects,
                |_| {},
                || true,
            )
            .await
        };
        let whole = run(format!("{header}{window}")).await;
        assert!(
            matches!(&whole, Ok(s) if s.rows == 3 && s.accepted == 3),
            "{whole:?}"
        );
        let more = run(format!("{header}{window}{}", row("r4"))).await;
        match more {
            Err(IngestError::Stopped {
                summary,
                line,
                cause: StopCause::Interrupted,
            }) => assert_eq!((summary.accepted, line), (3, 6)),
            other => panic!("{other:?}"),
        }
    }
}

/// A stop does not wait on a reader that waits for input (a pipe whose writer pauses): it
/// names the line after the last row's start, within about a second.
#[tokio::test]
async fn a_stop_does_not_wait_for_input_that_has_not_come() {
    use std::io::Read;
    use tally::codec::rows::{Format, RowReader};
    use tally::service::ingest::{IngestError, ReadAhead, Rejects, ingest_with};
    /// Its first bytes, then nothing until the sender is dropped (then the end).
    struct Paused {
        head: std::io::Cursor<Vec<u8>>,
        gate: std::sync::mpsc::Receiver<()>,
    }
    impl Read for Paused {
        fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
            let n = self.head.read(out)?;
            if n == 0 {
                let _ = self.gate.recv();
            }
            Ok(n)
        }
    }
    let text = "txn_id,account,kind,amount,occurred_at,reverses\n\
                p1,s,deposit,1,2026-11-01T09:00:00Z,\n\
                p2,s,deposit,1,2026-11-01T09:00:00Z,\n\
                p3,s,deposit,1,2026-11-01T09:00:00Z,\n";
    let (open, gate) = std::sync::mpsc::channel();
    let input = Paused {
        head: std::io::Cursor::new(text.as_bytes().to_vec()),
        gate,
    };
    let rows = RowReader::new(input, Format::Csv).unwrap();
    let commands = service(EmbeddedStore::in_memory().unwrap(), 0);
    let mut rejects = Rejects::new(Vec::new()).unwrap();
    let started = std::time::Instant::now();
    let run = ingest_with(
        ReadAhead::Thread,
        3,
        rows,
        &commands,
        &mut rejects,
        |_| {},
        || true,
    );
    let result = tokio::time::timeout(std::time::Duration::from_secs(10), run).await;
    drop(open); // the reader thread sees the end and exits
    match result {
        Ok(Err(IngestError::Stopped { summary, line, .. })) => {
            assert_eq!((summary.accepted, line), (3, 5));
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

/// A publisher that drops everything: these tests look at the store only.
#[derive(Clone)]
struct Nowhere;

impl EventPublisher for Nowhere {
    async fn publish(&self, _: Vec<OutRecord>) -> Result<(), StoreError> {
        Ok(())
    }
}

fn service<S: EventStore>(store: S, tips: usize) -> CommandService<S, Nowhere> {
    CommandService::new(store, Nowhere, Policy::default(), 64, Arc::new(at)).with_tip_cache(tips)
}

fn deposit(id: &str, amount: i64) -> Cmd {
    Cmd::Deposit {
        txn_id: TxnId::new(id).unwrap(),
        amount: Money(amount),
        occurred_at: at(),
    }
}

fn withdraw(id: &str, amount: i64) -> Cmd {
    Cmd::Withdraw {
        txn_id: TxnId::new(id).unwrap(),
        amount: Money(amount),
        occurred_at: at(),
    }
}

/// The scenarios behind the remembered tips, on any store: another writer moves an account
/// on behind the cache's back. A booking decided on the stale tip conflicts and is decided
/// again; a refusal is never recorded on a stale balance (it is written without a version
/// condition), so it is decided again on a tip read now.
async fn a_stale_remembered_tip_never_decides_an_outcome<S: EventStore + Clone>(store: S) {
    let acct = AccountId::new("tips-1").unwrap();
    let cached = service(store.clone(), 1_000);
    let other = service(store.clone(), 0);
    assert!(matches!(
        cached.submit(acct.clone(), deposit("d1", 10)).await,
        Ok(CommandOutcome::Booked(_))
    ));
    // Behind the cache's back: balance 10 → 110.
    assert!(matches!(
        other.submit(acct.clone(), deposit("d2", 100)).await,
        Ok(CommandOutcome::Booked(_))
    ));
    // The cache still says 10: a withdrawal of 50 would be refused on it. It is booked.
    match cached.submit(acct.clone(), withdraw("w1", 50)).await {
        Ok(CommandOutcome::Booked(e)) => assert_eq!((e.version, e.balance), (3, Money(60))),
        other => panic!("decided on the stale tip: {other:?}"),
    }
    // Behind its back again: 60 → 0. A withdrawal of 20 decided on the cached 60 would be
    // booked at version 4: it conflicts, is decided again, and is refused on the real 0.
    assert!(matches!(
        other.submit(acct.clone(), withdraw("w2", 60)).await,
        Ok(CommandOutcome::Booked(_))
    ));
    match cached.submit(acct.clone(), withdraw("w3", 20)).await {
        Ok(CommandOutcome::Refused(Rejection::InsufficientFunds { balance, .. })) => {
            assert_eq!(balance, Money(0));
        }
        other => panic!("{other:?}"),
    }
    let tip = store.tip(&acct).await.unwrap();
    assert_eq!((tip.version, tip.balance), (4, Money(0)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_a_stale_remembered_tip_never_decides_an_outcome() {
    if let Some(store) = store("tips").await {
        a_stale_remembered_tip_never_decides_an_outcome(store).await;
    }
}

#[tokio::test]
async fn embedded_a_stale_remembered_tip_never_decides_an_outcome() {
    a_stale_remembered_tip_never_decides_an_outcome(EmbeddedStore::in_memory().unwrap()).await;
}
