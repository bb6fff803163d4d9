//! The projector under cache pressure, over real sockets (issue "Correct under concurrency and
//! scale", defect 2): a bulk body over 10× more accounts than the snapshot cache holds, and a
//! cache of one entry. Every group of every batch must end in a snapshot write (or a
//! reported failure, retried by the mapping), so once the stream has drained every snapshot
//! equals the fold of its events and `/metrics` adds up.

use std::net::SocketAddr;
use std::sync::Arc;

use tally::app::{Embedded, Settings};
use tally::service::audit;

use crate::http::send;

async fn spawn(cache_entries: usize) -> (SocketAddr, Arc<Embedded>) {
    let settings = Settings {
        cache_entries,
        ..Settings::default()
    };
    let app = Arc::new(Embedded::start(None, settings).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    (addr, app)
}

/// `per_account` deposits on each of `accounts` accounts, interleaved (one per account, then
/// the next round), as one CSV body.
fn body(prefix: &str, accounts: usize, per_account: usize) -> String {
    let mut csv = String::from("txn_id,account,kind,amount,occurred_at,reverses\n");
    for round in 0..per_account {
        for a in 0..accounts {
            csv.push_str(&format!(
                "{prefix}-{a}-{round},{prefix}-{a},deposit,{},2026-11-{:02}T09:00:00Z,\n",
                1 + a + round,
                1 + round % 28
            ));
        }
    }
    csv
}

/// The value of one Prometheus sample in a `/metrics` body.
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
}

async fn bulk_then_check(cache_entries: usize, accounts: usize, per_account: usize) {
    let (addr, app) = spawn(cache_entries).await;
    let csv = body(&format!("cp{cache_entries}"), accounts, per_account);
    // Several bodies, so that batches keep arriving while the cache is full.
    for chunk in csv.lines().skip(1).collect::<Vec<_>>().chunks(2_000) {
        let body = format!(
            "txn_id,account,kind,amount,occurred_at,reverses\n{}\n",
            chunk.join("\n")
        );
        let r = send(
            addr,
            "POST",
            "/v1/transactions",
            "text/csv",
            body.as_bytes(),
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json()["accepted"].as_u64(), Some(chunk.len() as u64));
    }
    app.drain().await;
    let metrics = send(addr, "GET", "/metrics", "text/plain", b"").await.body;
    let events = (accounts * per_account) as u64;
    assert_eq!(metric(&metrics, "tally_projection_lag_records"), 0);
    assert_eq!(metric(&metrics, "tally_events_appended_total"), events);
    assert_eq!(
        metric(&metrics, "tally_events_projected_total")
            + metric(&metrics, "tally_records_quarantined_total"),
        events,
        "every appended event is projected once the lag is 0:\n{metrics}"
    );
    let report = audit::verify(&app.store, &app.store).await.unwrap();
    assert_eq!(report.accounts, accounts as u64);
    assert!(
        report.is_clean(),
        "snapshots that differ from or lag behind the fold of their events: {report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_over_ten_times_the_cache_projects_every_account() {
    bulk_then_check(200, 2_000, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cache_of_one_entry_still_projects_every_account() {
    bulk_then_check(1, 300, 3).await;
}
