//! The defects of issue 8 as a new user found them, kept as tests over real sockets and the
//! real CLI: concurrent bulk requests on the same accounts, an undecodable line deep in a bulk
//! body, and `verify` seeing (not repairing) a lagging snapshot.

use std::sync::Arc;

use serde_json::Value;
use tally::adapters::embedded::EmbeddedStore;
use tally::app::{Embedded, Settings};
use tally::domain::{AccountId, Command, Money, Policy, Timestamp, TxnId};
use tally::ports::{EventPublisher, OutRecord, StoreError};
use tally::service::command::{AccountChunk, CommandService};

use crate::http::send;

async fn serve(app: &Arc<Embedded>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    addr
}

fn csv(rows: impl Iterator<Item = String>) -> String {
    let mut body = String::from("txn_id,account,kind,amount,occurred_at,reverses\n");
    for r in rows {
        body.push_str(&r);
        body.push('\n');
    }
    body
}

/// Bulk bodies posted at the same moment, on the same 60 accounts: 33 deposits of 100 (two
/// pages per account) and 32 deposits of 1, twice each. Before the fix, an account whose first page
/// lost the race still committed its second page on top of the winner's events: 31 of 60
/// accounts ended with a broken chain, a phantom "duplicate", and a 503 balance forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_bulk_requests_on_the_same_accounts_book_everything_once() {
    let app = Arc::new(Embedded::start(None, Settings::default()).await.unwrap());
    let addr = serve(&app).await;
    let accounts: Vec<String> = (0..60).map(|i| format!("race{i}")).collect();
    let body = |prefix: &str, n: usize, amount: i64| {
        csv(accounts.iter().flat_map(|a| {
            (0..n).map(move |i| {
                format!("{prefix}-{a}-{i},{a},deposit,{amount},2026-11-01T09:00:00Z,")
            })
        }))
    };
    // Rounds of four requests at once: two with two pages per account, two with one.
    let rounds = 6;
    for round in 0..rounds {
        let bodies = [
            body(&format!("a{round}"), 33, 100),
            body(&format!("b{round}"), 32, 1),
            body(&format!("c{round}"), 33, 100),
            body(&format!("d{round}"), 32, 1),
        ];
        let replies = futures_util::future::join_all(
            bodies
                .iter()
                .map(|b| send(addr, "POST", "/v1/transactions", "text/csv", b.as_bytes())),
        )
        .await;
        for (r, rows) in replies.iter().zip([60 * 33, 60 * 32, 60 * 33, 60 * 32]) {
            assert_eq!(r.status, 200, "{}", r.body);
            let v = r.json();
            assert_eq!(
                (v["accepted"].as_u64(), v["duplicates"].as_u64()),
                (Some(rows), Some(0)),
                "round {round}: {}",
                r.body
            );
        }
    }
    app.drain().await;
    for a in &accounts {
        let r = send(
            addr,
            "GET",
            &format!("/v1/accounts/{a}/balance"),
            "application/json",
            b"",
        )
        .await;
        assert_eq!(r.status, 200, "{a}: {}", r.body);
        let v: Value = r.json();
        assert_eq!(
            (v["version"].as_u64(), v["balance"].as_i64()),
            (Some(rounds * 130), Some(rounds as i64 * 6664)),
            "{a}"
        );
    }
    let report = tally::service::audit::verify(&app.store, &app.store)
        .await
        .unwrap();
    assert!(report.is_clean(), "{report:?}");
}

/// 70,000 valid NDJSON rows, then a line that is not UTF-8, then one more row. Before the fix
/// the answer was a 422 "nothing happened" while the first window's rows had been booked. Now
/// the bad line is an invalid row like any other and the rest goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_body_with_an_undecodable_line_reports_it_as_a_row_and_books_the_rest() {
    let app = Arc::new(Embedded::start(None, Settings::default()).await.unwrap());
    let addr = serve(&app).await;
    let mut body = Vec::new();
    let row = |i: usize| {
        format!(
            "{{\"txn_id\":\"n{i}\",\"account\":\"nd{}\",\"kind\":\"deposit\",\"amount\":1,\"occurred_at\":\"2026-11-01T09:00:00Z\"}}\n",
            i % 100
        )
    };
    for i in 0..70_000 {
        body.extend_from_slice(row(i).as_bytes());
    }
    body.extend_from_slice(b"{\"txn_id\":\"bad\xff\xfe\"}\n");
    body.extend_from_slice(row(70_000).as_bytes());
    let r = send(
        addr,
        "POST",
        "/v1/transactions",
        "application/x-ndjson",
        &body,
    )
    .await;
    assert_eq!(r.status, 200, "{}", &r.body[..r.body.len().min(500)]);
    let v = r.json();
    assert_eq!(
        (
            v["rows"].as_u64(),
            v["accepted"].as_u64(),
            v["invalid"].as_u64(),
            v["unprocessed"].as_u64()
        ),
        (Some(70_002), Some(70_001), Some(1), Some(0))
    );
    assert_eq!(v["rejects"][0]["line"].as_u64(), Some(70_001));
    assert!(
        v["rejects"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("UTF-8"),
        "{}",
        v["rejects"][0]
    );
    app.drain().await;
    let r = send(
        addr,
        "GET",
        "/v1/accounts/nd0/balance",
        "application/json",
        b"",
    )
    .await;
    assert_eq!(r.json()["balance"].as_i64(), Some(701));
}

fn tally() -> std::process::Command {
    crate::harness::tally_bin()
}

/// `tally ingest FILE` into `dir/db`, which must succeed: its stdout, and its rejects file.
fn ingest_file(dir: &std::path::Path, file: &std::path::Path) -> (String, String) {
    let rejects = dir.join("rejects.csv");
    let out = tally()
        .args(["--data-dir", dir.join("db").to_str().unwrap(), "ingest"])
        .arg(file)
        .arg("--rejects")
        .arg(&rejects)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, std::fs::read_to_string(&rejects).unwrap())
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tally-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The CLI does the same with a file: the undecodable line is reported by number in the
/// rejects file, every other row is booked, and the exit status is 0.
#[test]
fn the_cli_reports_an_undecodable_line_and_books_the_rest() {
    let dir = temp_dir("utf8");
    let file = dir.join("rows.ndjson");
    let mut body = Vec::new();
    body.extend_from_slice(b"{\"txn_id\":\"c1\",\"account\":\"cli\",\"kind\":\"deposit\",\"amount\":5,\"occurred_at\":\"2026-11-01T09:00:00Z\"}\n");
    body.extend_from_slice(b"\xc3\x28 not utf-8\n");
    body.extend_from_slice(b"{\"txn_id\":\"c2\",\"account\":\"cli\",\"kind\":\"deposit\",\"amount\":7,\"occurred_at\":\"2026-11-01T09:00:00Z\"}\n");
    std::fs::write(&file, body).unwrap();
    let (stdout, rejected) = ingest_file(&dir, &file);
    assert!(stdout.contains("3 rows, 2 accepted"), "{stdout}");
    assert!(stdout.contains("1 invalid"), "{stdout}");
    assert!(
        rejected.lines().nth(1).unwrap().starts_with("2,,,invalid,"),
        "{rejected}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An invalid row is still named in the rejects file by the txn_id and account it was
/// written with (as written, even when that is what is wrong with it).
#[test]
fn the_cli_names_invalid_rows_by_their_txn_id_and_account() {
    let dir = temp_dir("invalid-names");
    let file = dir.join("rows.csv");
    let long = "x".repeat(65);
    let body = format!(
        "txn_id,account,kind,amount,occurred_at,reverses\n\
         t1,alice,deposit,12.5x,2026-11-01T09:00:00Z,\n\
         t2,alice,refund,5,2026-11-01T09:00:00Z,\n\
         t3,,deposit,5,2026-11-01T09:00:00Z,\n\
         {long},bob,deposit,5,2026-11-01T09:00:00Z,\n\
         t5,bob,deposit,5,2026-11-01T09:00:00Z,\n"
    );
    std::fs::write(&file, body).unwrap();
    let (stdout, rejected) = ingest_file(&dir, &file);
    assert!(stdout.contains("5 rows, 1 accepted"), "{stdout}");
    let mut lines: Vec<&str> = rejected.lines().skip(1).collect();
    lines.sort_unstable();
    let starts = [
        "2,t1,alice,invalid,amount,".to_owned(),
        "3,t2,alice,invalid,kind,".to_owned(),
        "4,t3,,invalid,account,".to_owned(),
        format!("5,{long},bob,invalid,txn_id,"),
    ];
    assert_eq!(lines.len(), starts.len(), "{rejected}");
    for (line, start) in lines.iter().zip(&starts) {
        assert!(
            line.starts_with(start.as_str()),
            "{line} vs {start}\n{rejected}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The rejects file is in line order, although a window's outcomes come back account by
/// account and its invalid rows are known first.
#[test]
fn the_cli_writes_rejects_in_line_order() {
    let dir = temp_dir("rejects-order");
    let file = dir.join("rows.csv");
    let body = "txn_id,account,kind,amount,occurred_at,reverses\n\
                d1,a,deposit,5,2026-11-01T09:00:00Z,\n\
                w1,b,withdrawal,7,2026-11-01T09:00:00Z,\n\
                w2,a,withdrawal,9,2026-11-01T09:00:00Z,\n\
                x1,c,deposit,oops,2026-11-01T09:00:00Z,\n\
                w3,b,withdrawal,8,2026-11-01T09:00:00Z,\n";
    std::fs::write(&file, body).unwrap();
    let (_, rejected) = ingest_file(&dir, &file);
    let lines: Vec<&str> = rejected
        .lines()
        .skip(1)
        .map(|l| l.split(',').next().unwrap())
        .collect();
    assert_eq!(lines, ["3", "4", "5", "6"], "{rejected}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A publisher that loses everything: events reach the store, never the snapshots.
struct Lost;

impl EventPublisher for Lost {
    async fn publish(&self, _records: Vec<OutRecord>) -> Result<(), StoreError> {
        Err(StoreError::Unavailable("lost".into()))
    }
}

/// A command service on `store` whose events never reach a stream, at a fixed ledger time.
fn unpublished(store: &EmbeddedStore) -> CommandService<EmbeddedStore, Lost> {
    CommandService::new(
        store.clone(),
        Lost,
        Policy::default(),
        64,
        Arc::new(|| Timestamp::from_millis(1_795_000_000_000).unwrap()),
    )
}

/// `verify` reads and reports: a snapshot behind its events is listed (with counts) and the
/// exit status is 1, however often it runs; `replay` repairs, and then `verify` is clean.
/// Before the fix `verify` ran catch-up first and so reported nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_lagging_snapshot_without_repairing_it() {
    let dir = temp_dir("lag");
    {
        let store = EmbeddedStore::open(&dir).unwrap();
        let service = unpublished(&store);
        let chunks = (0..3)
            .map(|a| AccountChunk {
                account: AccountId::new(format!("lag{a}")).unwrap(),
                commands: (0..2)
                    .map(|i| Command::Deposit {
                        txn_id: TxnId::new(format!("l{i}")).unwrap(),
                        amount: Money(10),
                        occurred_at: Timestamp::from_millis(1_793_523_600_000).unwrap(),
                    })
                    .collect(),
            })
            .collect();
        service.submit_chunks(chunks).await.into_result().unwrap();
    }
    let run = |cmd: &str| {
        let out = tally()
            .args(["--data-dir", dir.to_str().unwrap(), cmd])
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    for _ in 0..2 {
        let (code, text) = run("verify");
        assert_eq!(code, Some(1), "{text}");
        assert!(text.contains("3 lagging snapshots"), "{text}");
        assert!(
            text.contains("LAGGING lag0: snapshot at version 0, events up to 2"),
            "{text}"
        );
    }
    let (code, text) = run("replay");
    assert_eq!(code, Some(0), "{text}");
    let (code, text) = run("verify");
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("3 accounts, 6 events: 0 differences, 0 lagging"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// Group commit: 200 commands sent at once to a store on disk share durable commits, and
/// each gets exactly the outcome it would alone (here: booked, with its own event).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_durable_commits_and_keep_their_outcomes() {
    use tally::service::command::CommandOutcome;
    let dir = temp_dir("group");
    let store = EmbeddedStore::open(&dir).unwrap();
    let service = Arc::new(CommandService::new(
        store.clone(),
        tally::adapters::embedded::stream::EmbeddedStream::new(1, Arc::default()),
        Policy::default(),
        64,
        Arc::new(|| Timestamp::from_millis(1_795_000_000_000).unwrap()),
    ));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let service = service.clone();
            tokio::spawn(async move {
                let account = AccountId::new(format!("g{}", i % 20)).unwrap();
                let command = Command::Deposit {
                    txn_id: TxnId::new(format!("g{i}")).unwrap(),
                    amount: Money(i + 1),
                    occurred_at: Timestamp::from_millis(1_793_523_600_000).unwrap(),
                };
                service.submit(account, command).await
            })
        })
        .collect();
    for (i, t) in tasks.into_iter().enumerate() {
        match t.await.unwrap().unwrap() {
            CommandOutcome::Booked(e) => assert_eq!(e.txn_id.as_str(), format!("g{i}")),
            other => panic!("g{i}: {other:?}"),
        }
    }
    let (commits, requests) = store.commit_counts();
    assert!(requests >= 200, "{requests}");
    assert!(
        commits * 2 <= requests,
        "{commits} commits for {requests} requests: no grouping"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A call spread over slices books every account in its own slice and answers each chunk
/// at its own place, whatever order the accounts came in (the slices go in account order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spread_chunks_answer_in_the_callers_order() {
    let dir = temp_dir("spread");
    let store = EmbeddedStore::open(&dir).unwrap();
    let service = unpublished(&store);
    let names = ["z9", "a1", "m5", "b2", "y8", "c3", "x7", "d4"];
    let chunk = |name: &str, n: usize| AccountChunk {
        account: AccountId::new(name).unwrap(),
        commands: (0..n)
            .map(|i| Command::Deposit {
                txn_id: TxnId::new(format!("{name}-{i}")).unwrap(),
                amount: Money(10),
                occurred_at: Timestamp::from_millis(1_793_523_600_000).unwrap(),
            })
            .collect(),
    };
    let chunks: Vec<AccountChunk> = names
        .iter()
        .enumerate()
        .map(|(i, name)| chunk(name, i + 1))
        .collect();
    let outcomes = service
        .submit_chunks_spread(chunks, 3)
        .await
        .into_result()
        .unwrap();
    assert_eq!(outcomes.len(), names.len());
    for (i, (name, got)) in names.iter().zip(&outcomes).enumerate() {
        assert_eq!(got.len(), i + 1, "{name}");
        for (k, outcome) in got.iter().enumerate() {
            let tally::service::command::CommandOutcome::Booked(e) = outcome else {
                panic!("{name}: {outcome:?}");
            };
            assert_eq!(e.txn_id.as_str(), format!("{name}-{k}"));
            assert_eq!(e.version, k as u64 + 1);
        }
    }
    drop(service);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Bulk calls that arrive together are merged into one call (one append, one commit) and
/// answered as if they ran one after the other in arrival order: an account's commands in
/// call order (a withdrawal of the second call spends a deposit of the first), an id in
/// both calls booked by the first and the second's duplicate, an id reused with another
/// amount refused in the second only, and each caller's outcomes at its own chunks' places.
#[tokio::test] // one thread: both calls are queued before the merging task takes them
async fn bulk_calls_that_arrive_together_are_merged_and_answered_in_arrival_order() {
    use tally::service::command::CommandOutcome;
    let store = EmbeddedStore::in_memory().unwrap();
    let service = unpublished(&store).with_coalescing();
    let at = Timestamp::from_millis(1_793_523_600_000).unwrap();
    let deposit = |id: &str, amount: i64| Command::Deposit {
        txn_id: TxnId::new(id).unwrap(),
        amount: Money(amount),
        occurred_at: at,
    };
    let chunk = |account: &str, commands: Vec<Command>| AccountChunk {
        account: AccountId::new(account).unwrap(),
        commands,
    };
    let first = vec![
        chunk("m1", vec![deposit("d1", 100), deposit("same", 5)]),
        chunk("m2", vec![deposit("e1", 7)]),
    ];
    let withdraw = Command::Withdraw {
        txn_id: TxnId::new("w1").unwrap(),
        amount: Money(100),
        occurred_at: at,
    };
    let second = vec![
        chunk("m3", vec![deposit("f1", 1)]),
        chunk("m1", vec![withdraw, deposit("same", 5), deposit("d1", 99)]),
    ];
    let (a, b) = tokio::join!(
        service.submit_chunks_spread(first, 1),
        service.submit_chunks_spread(second, 1)
    );
    let (a, b) = (a.into_result().unwrap(), b.into_result().unwrap());
    let booked = |o: &CommandOutcome, id: &str, version: u64| matches!(o, CommandOutcome::Booked(e) if e.txn_id.as_str() == id && e.version == version);
    assert_eq!(a.len(), 2);
    assert!(
        booked(&a[0][0], "d1", 1) && booked(&a[0][1], "same", 2),
        "{a:?}"
    );
    assert!(a[0].len() == 2 && booked(&a[1][0], "e1", 1), "{a:?}");
    assert_eq!(b.len(), 2);
    assert!(b[0].len() == 1 && booked(&b[0][0], "f1", 1), "{b:?}");
    assert_eq!(b[1].len(), 3, "{b:?}");
    assert!(
        booked(&b[1][0], "w1", 3),
        "the withdrawal came after the deposits: {b:?}"
    );
    assert!(
        matches!(&b[1][1], CommandOutcome::Duplicate(e) if e.version == 2),
        "{b:?}"
    );
    assert!(matches!(&b[1][2], CommandOutcome::Reused { .. }), "{b:?}");
    assert_eq!(store.commit_counts(), (1, 1), "one append call, one commit");
}
