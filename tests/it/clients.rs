//! Concurrent black-box clients over real sockets against a real `tally serve` process, on
//! the embedded backend and on DynamoDB Local + kinesalite: overlapping bulk bodies with
//! multi-page runs per account, the same files sent by different clients, single commands,
//! the same txn ids from different clients. Afterwards every account's stored history goes
//! through the reference model and every stored snapshot (on AWS: the Balances items, read
//! directly) must equal the fold of its events — the simulator's checker, on the stores a
//! real process left behind.

use std::net::SocketAddr;
use std::process::Child;
use std::time::Duration;

use serde_json::json;
use tally::domain::{AccountId, Command, Money, Policy, Timestamp, TxnId};
use tally::sim::check::check_stores;
use tally::sim::history::{Attempt, Outcome};
use tally::sim::read_stores;
use tally::workload::Rng;

use crate::crash::serve_with;
use crate::http::send;

const CLIENTS: usize = 8;
const ACCOUNTS: usize = 5;

/// One request a client sends, with the commands it carries.
#[derive(Clone)]
enum Request {
    Bulk(String, Vec<(AccountId, Command)>),
    Single(String, serde_json::Value, AccountId, Command),
}

fn at(day: i64) -> Timestamp {
    Timestamp::from_millis(1_788_220_800_000 + day * 86_400_000).unwrap()
}

fn rfc3339(t: Timestamp) -> String {
    t.to_string()
}

fn csv_row(account: &AccountId, c: &Command) -> String {
    match c {
        Command::Deposit {
            txn_id,
            amount,
            occurred_at,
        } => {
            format!(
                "{txn_id},{account},deposit,{amount},{},\n",
                rfc3339(*occurred_at)
            )
        }
        Command::Withdraw {
            txn_id,
            amount,
            occurred_at,
        } => {
            format!(
                "{txn_id},{account},withdrawal,{amount},{},\n",
                rfc3339(*occurred_at)
            )
        }
        Command::Reverse {
            txn_id,
            reverses,
            occurred_at,
        } => {
            format!(
                "{txn_id},{account},reversal,,{},{reverses}\n",
                rfc3339(*occurred_at)
            )
        }
    }
}

/// Client `c`'s requests: two bulk bodies of page-crossing runs (33, 40 or 65 rows per
/// account; shared ids with the same content in every client), the previous client's
/// first body again, and single commands including shared ids and reversals.
fn requests(run: &str, c: usize) -> Vec<Request> {
    let mut rng = Rng::new(c as u64 + 1);
    let account = |i: usize| AccountId::new(format!("{run}-{i}")).unwrap();
    let txn = |s: String| TxnId::new(s).unwrap();
    let body = |c: usize, b: usize, rng: &mut Rng| {
        let mut rows = Vec::new();
        for a in 0..3 {
            let acct = account((c + a + b) % ACCOUNTS);
            let n = [33, 40, 65][rng.below(3) as usize];
            for i in 0..n {
                let cmd = match rng.below(10) {
                    0 => Command::Deposit {
                        txn_id: txn(format!("s-{i}")),
                        amount: Money(7),
                        occurred_at: at(1),
                    },
                    1 | 2 => Command::Withdraw {
                        txn_id: txn(format!("w-{c}-{b}-{a}-{i}")),
                        amount: Money(150),
                        occurred_at: at(i as i64 % 40),
                    },
                    _ => Command::Deposit {
                        txn_id: txn(format!("d-{c}-{b}-{a}-{i}")),
                        amount: Money(100),
                        occurred_at: at(i as i64 % 40),
                    },
                };
                rows.push((acct.clone(), cmd));
            }
        }
        let mut csv = String::from("txn_id,account,kind,amount,occurred_at,reverses\n");
        for (a, cmd) in &rows {
            csv.push_str(&csv_row(a, cmd));
        }
        Request::Bulk(csv, rows)
    };
    let mut out = vec![body(c, 0, &mut rng), body(c, 1, &mut rng)];
    out.push(body(
        (c + CLIENTS - 1) % CLIENTS,
        0,
        &mut Rng::new(((c + CLIENTS - 1) % CLIENTS) as u64 + 1),
    ));
    for i in 0..12 {
        // Reversals go to the account of this client's first run, whose deposits they name.
        let acct = account(if i % 4 == 2 {
            c % ACCOUNTS
        } else {
            rng.below(ACCOUNTS as u64) as usize
        });
        let (kind, cmd) = match i % 4 {
            0 => (
                "deposits",
                Command::Deposit {
                    txn_id: txn(format!("s-{i}")),
                    amount: Money(7),
                    occurred_at: at(1),
                },
            ),
            1 => (
                "withdrawals",
                Command::Withdraw {
                    txn_id: txn(format!("sw-{c}-{i}")),
                    amount: Money(90),
                    occurred_at: at(2),
                },
            ),
            2 => (
                "reversals",
                Command::Reverse {
                    txn_id: txn(format!("r-{c}-{i}")),
                    reverses: txn(format!("d-{c}-0-0-{i}")),
                    occurred_at: at(3),
                },
            ),
            _ => (
                "deposits",
                Command::Deposit {
                    txn_id: txn(format!("sd-{c}-{i}")),
                    amount: Money(55),
                    occurred_at: at(4),
                },
            ),
        };
        let body = match &cmd {
            Command::Reverse {
                txn_id,
                reverses,
                occurred_at,
            } => {
                json!({"txn_id": txn_id.as_str(), "reverses": reverses.as_str(), "occurred_at": rfc3339(*occurred_at)})
            }
            Command::Deposit {
                txn_id,
                amount,
                occurred_at,
            }
            | Command::Withdraw {
                txn_id,
                amount,
                occurred_at,
            } => {
                json!({"txn_id": txn_id.as_str(), "amount": amount.minor(), "occurred_at": rfc3339(*occurred_at)})
            }
        };
        out.push(Request::Single(
            format!("/v1/accounts/{acct}/{kind}"),
            body,
            acct,
            cmd,
        ));
    }
    out
}

/// Sends a request until it is answered (a 503 or a `contended` 409 is retried);
/// returns the final status and body.
async fn deliver(addr: SocketAddr, r: &Request) -> (u16, String) {
    for attempt in 0..8u32 {
        let reply = match r {
            Request::Bulk(csv, _) => {
                send(addr, "POST", "/v1/transactions", "text/csv", csv.as_bytes()).await
            }
            Request::Single(path, body, ..) => {
                send(
                    addr,
                    "POST",
                    path,
                    "application/json",
                    body.to_string().as_bytes(),
                )
                .await
            }
        };
        let retry = reply.status == 503 || reply.body.contains("\"contended\"");
        if !retry || attempt == 7 {
            return (reply.status, reply.body);
        }
        tokio::time::sleep(Duration::from_millis(20 << attempt)).await;
    }
    unreachable!("the loop returns on its last attempt")
}

/// Every client at once; returns what was sent and the single commands' answers
/// (account, version, txn id) that claim a booked event.
async fn hammer(addr: SocketAddr, run: &str) -> (Vec<Attempt>, Vec<(AccountId, u64, String)>) {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let reqs = requests(run, c);
            tokio::spawn(async move {
                let mut answers = Vec::new();
                for r in &reqs {
                    answers.push(deliver(addr, r).await);
                }
                (reqs, answers)
            })
        })
        .collect();
    let (mut sent, mut claimed) = (Vec::new(), Vec::new());
    for (c, t) in tasks.into_iter().enumerate() {
        let (reqs, answers) = t.await.unwrap();
        for (k, (r, (status, body))) in reqs.iter().zip(answers).enumerate() {
            assert!(status < 500, "client {c} request {k}: {status} {body}");
            let commands = match r {
                Request::Bulk(_, rows) => {
                    assert_eq!(status, 200, "client {c} body {k}: {body}");
                    rows.clone()
                }
                Request::Single(_, _, account, cmd) => {
                    if status == 200 || status == 201 {
                        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                        claimed.push((
                            account.clone(),
                            v["version"].as_u64().unwrap(),
                            v["txn_id"].as_str().unwrap().to_owned(),
                        ));
                    }
                    vec![(account.clone(), cmd.clone())]
                }
            };
            for (index, (account, command)) in commands.into_iter().enumerate() {
                sent.push(Attempt {
                    client: c,
                    call: k as u64,
                    index,
                    account,
                    command,
                    outcome: Outcome::Unknown("black box".into()),
                });
            }
        }
    }
    (sent, claimed)
}

fn assert_clean(
    stored: &tally::sim::check::Stored,
    sent: Vec<Attempt>,
    claimed: &[(AccountId, u64, String)],
    stopped: Option<String>,
) {
    let accounts = stored.events.len();
    assert_eq!(accounts, ACCOUNTS, "every account got events");
    for (account, version, txn) in claimed {
        let e = &stored.events[account][*version as usize - 1];
        assert_eq!(
            e.txn_id.as_str(),
            txn,
            "{account} v{version} was answered as {txn}"
        );
    }
    let found = check_stores(Policy::default(), sent, stored);
    let mut shown: Vec<String> = stopped.into_iter().collect();
    shown.extend(found.iter().take(10).map(ToString::to_string));
    assert!(
        found.is_empty(),
        "{} violations:\n{}",
        found.len(),
        shown.join("\n")
    );
}

/// Stops the server as Ctrl-C does (it drains the stream first); a server still draining
/// after 60 s is killed and that is reported.
fn interrupt(child: &mut Child) -> Option<String> {
    let _ = std::process::Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status();
    for _ in 0..1_200 {
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let _ = child.wait();
    Some("the server was still draining its stream 60 s after SIGINT".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_the_embedded_backend_leave_every_account_folding_to_its_snapshot() {
    let dir = std::env::temp_dir().join(format!("tally-clients-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = dir.to_str().unwrap();
    let (mut child, addr) = serve_with(&["--data-dir", d, "serve", "--addr", "127.0.0.1:0"], &[]);
    let (sent, claimed) = hammer(addr, "bb").await;
    let stopped = interrupt(&mut child); // drains the stream before it exits
    let store = tally::adapters::embedded::EmbeddedStore::open(&dir).unwrap();
    let quarantined = store.quarantined().unwrap();
    let drained = tally::sim::snapshots_of(&store, &store, 0).await;
    let (stored, notes) = read_stores(&store, &store, quarantined, drained, 0).await;
    assert!(notes.is_empty(), "{notes:?}");
    let _ = std::fs::remove_dir_all(&dir);
    assert_clean(&stored, sent, &claimed, stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_clients_on_dynamodb_and_kinesis_leave_every_balances_item_equal_to_the_fold() {
    let Some(store) = crate::aws::store("clients").await else {
        return;
    };
    let Ok(kinesis) = std::env::var("TALLY_TEST_KINESIS_ENDPOINT") else {
        return;
    };
    let dynamodb = std::env::var("TALLY_TEST_DYNAMODB_ENDPOINT").unwrap();
    let c = store.config().clone();
    let stream = format!("tally-clients-{}", std::process::id());
    let envs = [
        ("AWS_ENDPOINT_URL_DYNAMODB", dynamodb),
        ("AWS_ENDPOINT_URL_KINESIS", kinesis),
        ("AWS_REGION", "eu-west-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "local".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "local".to_owned()),
        ("TALLY_EVENTS_TABLE", c.events_table.clone()),
        ("TALLY_BALANCES_TABLE", c.balances_table.clone()),
        ("TALLY_QUARANTINE_TABLE", c.quarantine_table.clone()),
        ("TALLY_STREAM", stream),
    ];
    let args = [
        "serve",
        "--backend",
        "aws",
        "--create-resources",
        "--addr",
        "127.0.0.1:0",
    ];
    let (mut child, addr) = serve_with(&args, &envs);
    let (sent, claimed) = hammer(addr, "bbaws").await;
    // The projector runs in the server: wait until every Balances item is at its tip.
    let mut stored = None;
    for _ in 0..300 {
        let drained = tally::sim::snapshots_of(&store, &store, 0).await;
        let (s, notes) = read_stores(&store, &store, Vec::new(), drained, 0).await;
        assert!(notes.is_empty(), "{notes:?}");
        let caught_up = s
            .events
            .iter()
            .all(|(a, e)| s.snapshots.get(a.as_str()).map(|x| x.version) == Some(e.len() as u64));
        stored = Some(s);
        if caught_up {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let stopped = interrupt(&mut child);
    // `store` reads the tables themselves: the snapshots are the Balances items.
    assert_clean(&stored.unwrap(), sent, &claimed, stopped);
}
