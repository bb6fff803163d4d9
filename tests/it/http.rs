//! The HTTP API over real sockets: a server on 127.0.0.1:0 backed by an in-memory embedded
//! ledger, a minimal HTTP/1.1 client, every route and every error.

use std::net::SocketAddr;
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use tally::app::{Embedded, Settings};
use tally::http::{BODY_BYTES_MAX, ROUTES};

struct Server {
    addr: SocketAddr,
    app: Arc<Embedded>,
}

async fn spawn_server() -> Server {
    let app = Arc::new(Embedded::start(None, Settings::default()).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let router = app.router();
    tokio::spawn(async move { axum::serve(listener, router).await });
    Server { addr, app }
}

pub(crate) struct Reply {
    pub(crate) status: u16,
    /// Status line and headers.
    pub(crate) head: String,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

pub(crate) async fn send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: &str,
    body: &[u8],
) -> Reply {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) and close before reading everything: ignore write errors.
    let _ = s.write_all(body).await;
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {text:?}"));
    let status = head.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap();
    Reply {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

async fn post(addr: SocketAddr, path: &str, body: Value) -> Reply {
    send(
        addr,
        "POST",
        path,
        "application/json",
        body.to_string().as_bytes(),
    )
    .await
}

async fn get(addr: SocketAddr, path: &str) -> Reply {
    send(addr, "GET", path, "application/json", b"").await
}

fn error_of(r: &Reply) -> (u16, String, Option<String>) {
    let v = r.json();
    (
        r.status,
        v["error"].as_str().unwrap().to_owned(),
        v["field"].as_str().map(str::to_owned),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_book_replay_and_refuse_with_the_documented_statuses() {
    let Server { addr, app } = spawn_server().await;
    let dep = json!({"txn_id": "t-1", "amount": 10000, "occurred_at": "2026-11-01T09:00:00Z"});
    let first = post(addr, "/v1/accounts/acct-1/deposits", dep.clone()).await;
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(
        (
            first.json()["version"].as_u64(),
            first.json()["balance"].as_i64()
        ),
        (Some(1), Some(10000))
    );
    assert_eq!(first.json()["replayed"], false);
    let again = post(addr, "/v1/accounts/acct-1/deposits", dep).await;
    let mut original = first.json();
    original["replayed"] = json!(true);
    assert_eq!(
        (again.status, again.json()),
        (200, original),
        "idempotent replay returns the original, marked"
    );
    assert!(
        again
            .head
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true"),
        "{}",
        again.head
    );
    // The same id for a different request is refused, naming the first difference.
    let reused = post(
        addr,
        "/v1/accounts/acct-1/deposits",
        json!({"txn_id": "t-1", "amount": 10001, "occurred_at": "2026-11-01T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&reused),
        (409, "txn_id_reused".into(), Some("amount".into()))
    );
    assert!(reused.json()["message"].as_str().unwrap().contains("10000"));
    let as_withdrawal = post(
        addr,
        "/v1/accounts/acct-1/withdrawals",
        json!({"txn_id": "t-1", "amount": 10000, "occurred_at": "2026-11-01T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&as_withdrawal),
        (409, "txn_id_reused".into(), Some("kind".into()))
    );

    let over = post(
        addr,
        "/v1/accounts/acct-1/withdrawals",
        json!({"txn_id": "t-2", "amount": 20000, "occurred_at": "2026-11-02T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&over),
        (409, "insufficient_funds".into(), Some("amount".into()))
    );
    assert_eq!(over.json()["replayed"], false);
    // A refusal is the id's outcome: the same request gets the same refusal, marked, even
    // once funds are there; a different request under that id is a reuse.
    let funded = post(
        addr,
        "/v1/accounts/acct-1/deposits",
        json!({"txn_id": "t-1b", "amount": 50000, "occurred_at": "2026-11-01T10:00:00Z"}),
    )
    .await;
    assert_eq!(funded.status, 201);
    let over_again = post(
        addr,
        "/v1/accounts/acct-1/withdrawals",
        json!({"txn_id": "t-2", "amount": 20000, "occurred_at": "2026-11-02T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&over_again),
        (409, "insufficient_funds".into(), Some("amount".into()))
    );
    assert_eq!(over_again.json()["replayed"], true);
    assert_eq!(over_again.json()["message"], over.json()["message"]);
    assert!(
        over_again
            .head
            .to_ascii_lowercase()
            .contains("idempotent-replayed: true")
    );
    let reused_refusal = post(
        addr,
        "/v1/accounts/acct-1/withdrawals",
        json!({"txn_id": "t-2", "amount": 2500, "occurred_at": "2026-11-02T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&reused_refusal),
        (409, "txn_id_reused".into(), Some("amount".into()))
    );
    let ok = post(
        addr,
        "/v1/accounts/acct-1/withdrawals",
        json!({"txn_id": "t-2b", "amount": 52500, "occurred_at": "2026-11-02T09:00:00Z"}),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);

    let rev = post(
        addr,
        "/v1/accounts/acct-1/reversals",
        json!({"txn_id": "t-3", "reverses": "t-2b", "occurred_at": "2026-11-03T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        (rev.status, rev.json()["balance"].as_i64()),
        (201, Some(60000))
    );
    let twice = post(
        addr,
        "/v1/accounts/acct-1/reversals",
        json!({"txn_id": "t-4", "reverses": "t-2b", "occurred_at": "2026-11-03T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&twice),
        (409, "already_reversed".into(), Some("reverses".into()))
    );
    let ghost = post(
        addr,
        "/v1/accounts/acct-1/reversals",
        json!({"txn_id": "t-5", "reverses": "nope", "occurred_at": "2026-11-03T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&ghost),
        (
            409,
            "unknown_reversal_target".into(),
            Some("reverses".into())
        )
    );
    // A refused transaction was never booked: nothing to reverse.
    let of_refused = post(
        addr,
        "/v1/accounts/acct-1/reversals",
        json!({"txn_id": "t-5b", "reverses": "t-2", "occurred_at": "2026-11-03T09:00:00Z"}),
    )
    .await;
    assert_eq!(error_of(&of_refused).1, "unknown_reversal_target");
    let of_rev = post(
        addr,
        "/v1/accounts/acct-1/reversals",
        json!({"txn_id": "t-6", "reverses": "t-3", "occurred_at": "2026-11-03T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&of_rev),
        (409, "reversal_of_reversal".into(), Some("reverses".into()))
    );
    let zero = post(
        addr,
        "/v1/accounts/acct-1/deposits",
        json!({"txn_id": "t-7", "amount": 0, "occurred_at": "2026-11-03T09:00:00Z"}),
    )
    .await;
    assert_eq!(
        error_of(&zero),
        (422, "amount_out_of_range".into(), Some("amount".into()))
    );
    assert!(zero.json().get("replayed").is_none(), "not an outcome");
    // Invalid input is not recorded: the id stays free.
    let fixed = post(
        addr,
        "/v1/accounts/acct-1/deposits",
        json!({"txn_id": "t-7", "amount": 1, "occurred_at": "2026-11-03T09:00:00Z"}),
    )
    .await;
    assert_eq!(fixed.status, 201, "{}", fixed.body);

    app.drain().await;
    let bal = get(addr, "/v1/accounts/acct-1/balance").await;
    assert_eq!(bal.status, 200);
    let b = bal.json();
    assert_eq!(
        (
            b["version"].as_u64(),
            b["balance"].as_i64(),
            b["month"].as_str(),
            b["month_balance"].as_i64()
        ),
        (Some(5), Some(60001), Some("2026-11"), Some(60001))
    );
    let at = get(addr, "/v1/accounts/acct-1/balance?at=2026-11-02T12:00:00Z").await;
    assert_eq!(
        (
            at.status,
            at.json()["balance"].as_i64(),
            at.json()["events"].as_u64()
        ),
        (200, Some(7500), Some(3))
    );
    let events = get(addr, "/v1/accounts/acct-1/events?limit=2").await;
    assert_eq!(events.json()["events"].as_array().map(Vec::len), Some(2));
    let metrics = get(addr, "/metrics").await;
    assert!(
        metrics.body.contains("tally_events_appended_total 5"),
        "{}",
        metrics.body
    );
    assert_eq!(get(addr, "/health").await.json()["status"], "ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_name_the_field_and_write_nothing() {
    let Server { addr, app } = spawn_server().await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/v1/accounts/a%20b/deposits",
            json!({"txn_id": "x", "amount": 1, "occurred_at": "2026-11-01T09:00:00Z"}),
            "account",
        ),
        (
            "/v1/accounts/v/deposits",
            json!({"amount": 1, "occurred_at": "2026-11-01T09:00:00Z"}),
            "txn_id",
        ),
        (
            "/v1/accounts/v/deposits",
            json!({"txn_id": "x", "amount": "5", "occurred_at": "2026-11-01T09:00:00Z"}),
            "amount",
        ),
        (
            "/v1/accounts/v/deposits",
            json!({"txn_id": "x", "amount": 1.5, "occurred_at": "2026-11-01T09:00:00Z"}),
            "amount",
        ),
        (
            "/v1/accounts/v/deposits",
            json!({"txn_id": "x", "amount": 1, "occurred_at": "yesterday"}),
            "occurred_at",
        ),
        (
            "/v1/accounts/v/deposits",
            json!({"txn_id": "x y", "amount": 1, "occurred_at": "2026-11-01T09:00:00Z"}),
            "txn_id",
        ),
        (
            "/v1/accounts/v/deposits",
            json!({"txn_id": "x", "amount": 1, "occurred_at": "2026-11-01T09:00:00Z", "reverses": "a"}),
            "reverses",
        ),
        (
            "/v1/accounts/v/reversals",
            json!({"txn_id": "x", "amount": 1, "reverses": "a", "occurred_at": "2026-11-01T09:00:00Z"}),
            "amount",
        ),
    ];
    for (path, body, field) in cases {
        let r = post(addr, path, body.clone()).await;
        let (status, _, got) = error_of(&r);
        assert_eq!(
            (status, got.as_deref()),
            (422, Some(field)),
            "{path} {body}: {}",
            r.body
        );
    }
    let unknown = post(
        addr,
        "/v1/accounts/v/deposits",
        json!({"txn_id": "x", "amount": 1, "occurred_at": "2026-11-01T09:00:00Z", "colour": "red"}),
    )
    .await;
    assert_eq!(unknown.status, 422);
    assert!(
        unknown.json()["message"]
            .as_str()
            .unwrap()
            .contains("colour")
    );
    let broken = send(
        addr,
        "POST",
        "/v1/accounts/v/deposits",
        "application/json",
        b"{not json",
    )
    .await;
    assert_eq!(broken.status, 422);
    let huge = vec![b' '; BODY_BYTES_MAX + 1];
    let too_big = send(addr, "POST", "/v1/transactions", "text/csv", &huge).await;
    assert_eq!(error_of(&too_big).0, 413);
    assert_eq!(
        error_of(&get(addr, "/v1/accounts/v/balance").await),
        (404, "unknown_account".into(), Some("account".into()))
    );
    assert_eq!(
        error_of(&get(addr, "/v1/accounts/v/balance?at=soon").await).0,
        422
    );
    assert_eq!(
        error_of(&get(addr, "/no/such/route").await),
        (404, "not_found".into(), None)
    );
    app.drain().await;
    use tally::ports::EventStore;
    assert!(
        app.store.accounts(None, 10).await.unwrap().is_empty(),
        "a refused request wrote something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_csv_and_ndjson_report_per_row_outcomes() {
    let Server { addr, app } = spawn_server().await;
    let csv = include_str!("../../examples/transactions.csv");
    let r = send(addr, "POST", "/v1/transactions", "text/csv", csv.as_bytes()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        (
            v["rows"].as_u64(),
            v["accepted"].as_u64(),
            v["duplicates"].as_u64(),
            v["refused"].as_u64()
        ),
        (Some(15), Some(13), Some(1), Some(1))
    );
    assert_eq!(v["rejects"][0]["line"].as_u64(), Some(6));
    assert_eq!(v["rejects"][0]["outcome"], "refused");
    // The same file again changes nothing: duplicates and the replayed refusal.
    let r = send(addr, "POST", "/v1/transactions", "text/csv", csv.as_bytes()).await;
    let v = r.json();
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["duplicates"].as_u64(),
            v["refused"].as_u64(),
            v["replayed_refusals"].as_u64()
        ),
        (Some(0), Some(14), Some(0), Some(1))
    );
    assert_eq!(v["rejects"][0]["outcome"], "replayed_refusal");
    let nd = "{\"txn_id\":\"n-1\",\"account\":\"erin\",\"kind\":\"deposit\",\"amount\":5,\"occurred_at\":\"2026-11-01T09:00:00Z\"}\n{\"txn_id\":\"n-2\",\"account\":\"erin\",\"kind\":\"deposit\",\"amount\":\"x\",\"occurred_at\":\"2026-11-01T09:00:00Z\"}\n";
    let r = send(
        addr,
        "POST",
        "/v1/transactions",
        "application/x-ndjson",
        nd.as_bytes(),
    )
    .await;
    let v = r.json();
    assert_eq!(
        (
            v["accepted"].as_u64(),
            v["invalid"].as_u64(),
            v["rejects"][0]["field"].as_str()
        ),
        (Some(1), Some(1), Some("amount"))
    );
    let bad_header = send(
        addr,
        "POST",
        "/v1/transactions",
        "text/csv",
        b"txn,who\n1,2\n",
    )
    .await;
    assert_eq!(bad_header.status, 422);
    app.drain().await;
    assert!(
        tally::service::audit::verify(&app.store, &app.store)
            .await
            .unwrap()
            .is_clean()
    );
}

/// Paths and methods of `openapi.yaml` (two-space indented path keys, four-space methods).
fn openapi_routes() -> Vec<(String, String)> {
    let spec = include_str!("../../openapi.yaml");
    let mut out = Vec::new();
    let mut path: Option<String> = None;
    let mut in_paths = false;
    for line in spec.lines() {
        if !line.starts_with(' ') {
            in_paths = line.starts_with("paths:");
            continue;
        }
        if !in_paths {
            continue;
        }
        if let Some(p) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
            path = Some(format!("/{p}"));
        } else if let (Some(p), Some(m)) = (
            &path,
            line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
        ) && ["get", "post", "put", "delete", "patch"].contains(&m)
        {
            out.push((m.to_owned(), p.clone()));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_describes_exactly_the_routes_the_router_serves() {
    let mut documented = openapi_routes();
    let mut declared: Vec<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    documented.sort();
    declared.sort();
    assert_eq!(documented, declared);
    let Server { addr, .. } = spawn_server().await;
    for (method, path) in &declared {
        let concrete = path.replace("{account}", "probe");
        let r = send(
            addr,
            &method.to_uppercase(),
            &concrete,
            "application/json",
            b"{}",
        )
        .await;
        let routed = r.status != 405 && !(r.status == 404 && r.body.contains("\"not_found\""));
        assert!(
            routed,
            "{method} {path} is documented but not served: {} {}",
            r.status, r.body
        );
    }
}
