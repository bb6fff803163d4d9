//! A real process, killed with SIGKILL while it works, restarted on the same data dir:
//! every acknowledged event is there and projected, and `tally verify` is clean.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::json;

use crate::http::send;

fn tally() -> Command {
    crate::harness::tally_bin()
}

/// Starts `tally serve` on an ephemeral loopback port; returns it and its address.
fn serve(dir: &std::path::Path) -> (Child, SocketAddr) {
    let dir = dir.to_str().unwrap();
    serve_with(&["--data-dir", dir, "serve", "--addr", "127.0.0.1:0"], &[])
}

/// Starts `tally` with `args` (a `serve` command on port 0) and `envs`; returns the process
/// and the address it announced.
pub(crate) fn serve_with(args: &[&str], envs: &[(&str, String)]) -> (Child, SocketAddr) {
    let mut child = tally()
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("server exited before listening")
            .unwrap();
        if let Some(rest) = line.strip_prefix("tally serving http://") {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    // Keep draining stderr so the server never blocks on a full pipe.
    std::thread::spawn(move || {
        let mut log =
            std::env::var_os("TALLY_TEST_SERVER_LOG").and_then(|p| std::fs::File::create(p).ok());
        for line in lines.map_while(Result::ok) {
            if let Some(f) = log.as_mut() {
                use std::io::Write;
                let _ = writeln!(f, "{line}");
            }
        }
    });
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_server_loses_no_acknowledged_event() {
    let dir = std::env::temp_dir().join(format!("tally-crash-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (mut child, addr) = serve(&dir);
    let mut acknowledged = 0i64;
    for i in 0..60 {
        let body = json!({"txn_id": format!("k{i}"), "amount": 100 + i, "occurred_at": "2026-11-01T09:00:00Z"});
        let r = send(
            addr,
            "POST",
            "/v1/accounts/crash/deposits",
            "application/json",
            body.to_string().as_bytes(),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.body);
        acknowledged += 100 + i;
    }
    child.kill().unwrap(); // SIGKILL: no drain, no clean shutdown
    child.wait().unwrap();
    // Every acknowledged event is in the event store; snapshots may lag (they are rebuilt
    // at the next start), and `verify` says so rather than repairing them.
    let (ok, text) = verify(&dir);
    assert!(
        text.contains("1 accounts, 60 events: 0 differences") && text.contains("0 broken"),
        "{text}"
    );
    assert_eq!(ok, !text.contains("LAGGING"), "{text}");

    let (mut child, addr) = serve(&dir);
    let r = send(
        addr,
        "GET",
        "/v1/accounts/crash/balance",
        "application/json",
        b"",
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        (r.json()["version"].as_u64(), r.json()["balance"].as_i64()),
        (Some(60), Some(acknowledged))
    );
    // A retry of an acknowledged request after the crash books nothing.
    let again = json!({"txn_id": "k0", "amount": 100, "occurred_at": "2026-11-01T09:00:00Z"});
    let r = send(
        addr,
        "POST",
        "/v1/accounts/crash/deposits",
        "application/json",
        again.to_string().as_bytes(),
    )
    .await;
    assert_eq!(r.status, 200);
    // A clean stop (SIGINT) drains the stream and leaves every snapshot durable.
    let stopped = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    assert!(child.wait().unwrap().success());
    let (ok, text) = verify(&dir);
    assert!(ok, "verify failed: {text}");
    assert!(
        text.contains("1 accounts, 60 events: 0 differences, 0 lagging snapshots"),
        "{text}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `tally verify` on `dir`: whether it exited 0, and what it printed.
fn verify(dir: &std::path::Path) -> (bool, String) {
    let out = tally()
        .args(["--data-dir", dir.to_str().unwrap(), "verify"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `tally ingest FILE | head -1`: the reader goes away after the first line, and the ingest
/// still finishes its work: the stream drained, every snapshot written, exit status 0.
/// Before the fix the first failed write to stdout exited the process before the drain, and
/// `verify` found snapshots lagging behind their events.
#[test]
fn an_ingest_whose_reader_went_away_still_projects_everything() {
    let dir = std::env::temp_dir().join(format!("tally-closed-stdout-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("rows.csv");
    let made = tally()
        .args(["gen", "--accounts", "5000", "--transactions", "60000"])
        .arg("--out")
        .arg(&file)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let db = dir.join("db");
    let mut child = tally()
        .arg("--data-dir")
        .arg(&db)
        .arg("ingest")
        .arg(&file)
        .arg("--rejects")
        .arg(dir.join("rejects.csv"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader is gone before the first line
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (ok, text) = verify(&db);
    assert!(ok, "{text}");
    // Some generated withdrawals are refused, so fewer than 60,000 events are booked.
    assert!(
        text.contains("events: 0 differences, 0 lagging snapshots, 0 broken"),
        "{text}"
    );
    assert!(!text.contains("verified 0 accounts"), "{text}");
    let _ = std::fs::remove_dir_all(&dir);
}
