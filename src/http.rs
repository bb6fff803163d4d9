//! The HTTP API: one axum `Router`, served by `tally serve` and (later) by the Lambda
//! functions through lambda_http. JSON in and out; every error is
//! `{"error": code, "message": text, "field": name?}` with a fitting status.
//!
//! Must never: panic on any input, or write anything for a request it rejects.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};

use crate::codec::json::{BalanceView, EventView, PointInTimeView};
use crate::codec::rows::{Format, RowError, RowReader};
use crate::codec::time::parse_rfc3339;
use crate::domain::{AccountId, Command, Money, Rejection, TxnId, describe_reuse};
use crate::ports::{EventPublisher, EventStore, SnapshotStore, StoreError};
use crate::service::command::{CommandError, CommandOutcome, CommandService};
use crate::service::ingest::{IngestError, IngestSummary, Rejects, StopCause, ingest};
use crate::service::metrics::Metrics;
use crate::service::query::QueryService;

/// Largest request body (a bulk file): bigger ones get 413. Split larger files.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

/// Every route, for the OpenAPI check and the docs. Keep in step with [`router`].
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/accounts/{account}/deposits"),
    ("post", "/v1/accounts/{account}/withdrawals"),
    ("post", "/v1/accounts/{account}/reversals"),
    ("post", "/v1/transactions"),
    ("get", "/v1/accounts/{account}/balance"),
    ("get", "/v1/accounts/{account}/events"),
    ("get", "/health"),
    ("get", "/metrics"),
];

/// What the handlers share.
pub struct Api<E, P, S> {
    pub commands: CommandService<E, P>,
    pub query: QueryService<E, S>,
    pub metrics: Arc<Metrics>,
}

/// The API error body.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    error: &'static str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'static str>,
    /// Set on answers about a txn id's recorded outcome: `true` when this request repeated an
    /// id that already had it (also the `Idempotent-Replayed: true` header).
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<bool>,
    /// A bulk request that stopped part-way: what the rows read so far came to.
    #[serde(skip_serializing_if = "Option::is_none")]
    summary: Option<Box<BulkSummary>>,
}

impl ApiError {
    fn new(
        status: StatusCode,
        error: &'static str,
        message: impl Into<String>,
        field: Option<&'static str>,
    ) -> ApiError {
        ApiError {
            status,
            error,
            message: message.into(),
            field,
            replayed: None,
            summary: None,
        }
    }

    fn invalid(field: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_field",
            message,
            Some(field),
        )
    }
}

/// Seconds a client should wait before retrying a 503 (throttled or unavailable backend).
pub const RETRY_AFTER_SECS: u32 = 1;

/// The header that marks a replayed outcome (as Stripe's API does).
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, axum::Json(&self)).into_response();
        if self.replayed == Some(true) {
            response.headers_mut().insert(
                REPLAYED_HEADER,
                axum::http::HeaderValue::from_static("true"),
            );
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                axum::http::HeaderValue::from(RETRY_AFTER_SECS),
            );
        }
        response
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        tracing::error!(error = %e, "store error");
        match e {
            StoreError::Throttled => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "throttled",
                "the backend is throttling requests; retry after a second (resubmitting the \
                 same transaction ids is safe)",
                None,
            ),
            StoreError::Unavailable(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "the ledger is unavailable; try again",
                None,
            ),
            // Retrying cannot help: an operator must look (the account is parked, or
            // `tally verify` names it).
            StoreError::Corrupt(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "corrupt",
                "this account's stored events do not fold; an operator must repair it \
                 (`tally parked list`, `tally verify`); retrying will not help",
                None,
            ),
            StoreError::Incompatible(_) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "incompatible",
                "the ledger's data was stored by another version of tally; retrying will not help",
                None,
            ),
        }
    }
}

impl From<CommandError> for ApiError {
    fn from(e: CommandError) -> ApiError {
        match e {
            CommandError::Store(s) => s.into(),
            CommandError::Contended(_) => {
                ApiError::new(StatusCode::CONFLICT, "contended", e.to_string(), None)
            }
        }
    }
}

/// A refusal by the rules is a conflict with the ledger's state (409) and is the txn id's
/// recorded outcome; an amount outside the policy is invalid input (422), not recorded.
fn rejection(r: &Rejection, replayed: bool) -> ApiError {
    let status = if r.is_recorded() {
        StatusCode::CONFLICT
    } else {
        StatusCode::UNPROCESSABLE_ENTITY
    };
    let mut e = ApiError::new(status, r.code(), r.to_string(), r.field());
    e.replayed = r.is_recorded().then_some(replayed);
    e
}

/// Builds the router over any backend.
pub fn router<E, P, S>(api: Arc<Api<E, P, S>>) -> Router
where
    E: EventStore + Clone,
    P: EventPublisher,
    S: SnapshotStore,
{
    Router::new()
        .route("/v1/accounts/{account}/deposits", post(deposit::<E, P, S>))
        .route(
            "/v1/accounts/{account}/withdrawals",
            post(withdraw::<E, P, S>),
        )
        .route("/v1/accounts/{account}/reversals", post(reverse::<E, P, S>))
        .route("/v1/transactions", post(bulk::<E, P, S>))
        .route("/v1/accounts/{account}/balance", get(balance::<E, P, S>))
        .route("/v1/accounts/{account}/events", get(events::<E, P, S>))
        .route(
            "/health",
            get(|| async { axum::Json(serde_json::json!({"status": "ok"})) }),
        )
        .route("/metrics", get(metrics::<E, P, S>))
        .fallback(|| async {
            ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route", None)
        })
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .with_state(api)
}

fn account(raw: &str) -> Result<AccountId, ApiError> {
    AccountId::new(raw).map_err(|e| ApiError::invalid("account", format!("account: {e}")))
}

fn body(b: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    b.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body exceeds {BODY_BYTES_MAX} bytes"),
                None,
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_body", e.body_text(), None)
        }
    })
}

/// Body of a deposit, withdrawal or reversal; each field is checked by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TxnBody {
    txn_id: Option<serde_json::Value>,
    amount: Option<serde_json::Value>,
    reverses: Option<serde_json::Value>,
    occurred_at: Option<serde_json::Value>,
}

fn parse_body(bytes: &[u8]) -> Result<TxnBody, ApiError> {
    serde_json::from_slice(bytes).map_err(|e| {
        let text = e.to_string();
        let field = ["txn_id", "amount", "reverses", "occurred_at"]
            .into_iter()
            .find(|f| text.contains(&format!("`{f}`")));
        let field = if text.starts_with("unknown field") {
            None
        } else {
            field
        };
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            format!("invalid JSON body: {text}"),
            field,
        )
    })
}

fn text_field<'a>(
    name: &'static str,
    v: &'a Option<serde_json::Value>,
) -> Result<&'a str, ApiError> {
    match v {
        Some(serde_json::Value::String(s)) if !s.is_empty() => Ok(s),
        None | Some(serde_json::Value::Null) => {
            Err(ApiError::invalid(name, format!("{name} is required")))
        }
        Some(other) => Err(ApiError::invalid(
            name,
            format!("{name} must be a non-empty string, got {other}"),
        )),
    }
}

fn txn_id(name: &'static str, v: &Option<serde_json::Value>) -> Result<TxnId, ApiError> {
    TxnId::new(text_field(name, v)?).map_err(|e| ApiError::invalid(name, format!("{name}: {e}")))
}

fn amount(v: &Option<serde_json::Value>) -> Result<Money, ApiError> {
    match v {
        Some(serde_json::Value::Number(n)) => n.as_i64().map(Money).ok_or_else(|| {
            ApiError::invalid(
                "amount",
                format!("amount must be an integer number of minor units, got {n}"),
            )
        }),
        None | Some(serde_json::Value::Null) => {
            Err(ApiError::invalid("amount", "amount is required"))
        }
        Some(other) => Err(ApiError::invalid(
            "amount",
            format!("amount must be an integer, got {other}"),
        )),
    }
}

fn occurred_at(v: &Option<serde_json::Value>) -> Result<crate::domain::Timestamp, ApiError> {
    parse_rfc3339(text_field("occurred_at", v)?).map_err(|e| ApiError::invalid("occurred_at", e))
}

fn no_field(name: &'static str, v: &Option<serde_json::Value>) -> Result<(), ApiError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(()),
        Some(_) => Err(ApiError::invalid(
            name,
            format!("{name} is not allowed here"),
        )),
    }
}

/// A command's answer: the event, and whether this request repeated a booked txn id.
#[derive(Serialize)]
struct CommandView {
    #[serde(flatten)]
    event: EventView,
    replayed: bool,
}

async fn submit<E: EventStore, P: EventPublisher, S>(
    api: &Api<E, P, S>,
    account: AccountId,
    command: Command,
) -> Result<Response, ApiError> {
    let view = |e: &crate::domain::Event, replayed| {
        axum::Json(CommandView {
            event: EventView::new(e),
            replayed,
        })
    };
    match api.commands.submit(account, command.clone()).await? {
        CommandOutcome::Booked(e) => Ok((StatusCode::CREATED, view(&e, false)).into_response()),
        CommandOutcome::Duplicate(e) => {
            Ok((StatusCode::OK, [(REPLAYED_HEADER, "true")], view(&e, true)).into_response())
        }
        CommandOutcome::Refused(r) | CommandOutcome::Invalid(r) => Err(rejection(&r, false)),
        CommandOutcome::ReplayedRefusal(r) => Err(rejection(&r.rejection, true)),
        CommandOutcome::Reused { field, original } => Err(ApiError::new(
            StatusCode::CONFLICT,
            "txn_id_reused",
            describe_reuse(field, &original.command(), &command),
            Some(field),
        )),
    }
}

/// The three single-transaction routes differ only in which command the body makes.
#[derive(Clone, Copy)]
enum Kind {
    Deposit,
    Withdraw,
    Reverse,
}

fn command(kind: Kind, t: &TxnBody) -> Result<Command, ApiError> {
    let txn = txn_id("txn_id", &t.txn_id)?;
    let at = || occurred_at(&t.occurred_at);
    Ok(match kind {
        Kind::Deposit | Kind::Withdraw => {
            no_field("reverses", &t.reverses)?;
            let (amount, occurred_at) = (amount(&t.amount)?, at()?);
            match kind {
                Kind::Deposit => Command::Deposit {
                    txn_id: txn,
                    amount,
                    occurred_at,
                },
                _ => Command::Withdraw {
                    txn_id: txn,
                    amount,
                    occurred_at,
                },
            }
        }
        Kind::Reverse => {
            no_field("amount", &t.amount)?;
            Command::Reverse {
                txn_id: txn,
                reverses: txn_id("reverses", &t.reverses)?,
                occurred_at: at()?,
            }
        }
    })
}

async fn book<E: EventStore, P: EventPublisher, S>(
    api: &Api<E, P, S>,
    kind: Kind,
    raw: &str,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let account = account(raw)?;
    let t = parse_body(&body(b)?)?;
    submit(api, account, command(kind, &t)?).await
}

async fn deposit<E: EventStore + Clone, P: EventPublisher, S: SnapshotStore>(
    State(api): State<Arc<Api<E, P, S>>>,
    Path(raw): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    book(&api, Kind::Deposit, &raw, b).await
}

async fn withdraw<E: EventStore + Clone, P: EventPublisher, S: SnapshotStore>(
    State(api): State<Arc<Api<E, P, S>>>,
    Path(raw): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    book(&api, Kind::Withdraw, &raw, b).await
}

async fn reverse<E: EventStore + Clone, P: EventPublisher, S: SnapshotStore>(
    State(api): State<Arc<Api<E, P, S>>>,
    Path(raw): Path<String>,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    book(&api, Kind::Reverse, &raw, b).await
}

/// Summary of a bulk request, with every row that was not booked.
#[derive(Debug, Serialize)]
struct BulkSummary {
    rows: u64,
    accepted: u64,
    duplicates: u64,
    refused: u64,
    replayed_refusals: u64,
    reused: u64,
    invalid: u64,
    /// Rows read that have no outcome yet (only when the request stopped part-way).
    unprocessed: u64,
    rejects: Vec<RejectedRow>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RejectedRow {
    line: u64,
    txn_id: String,
    account: String,
    outcome: String,
    field: String,
    reason: String,
}

impl BulkSummary {
    fn new(s: &IngestSummary, rejects: Rejects<Vec<u8>>) -> BulkSummary {
        BulkSummary {
            rows: s.rows,
            accepted: s.accepted,
            duplicates: s.duplicates,
            refused: s.refused,
            replayed_refusals: s.replayed_refusals,
            reused: s.reused,
            invalid: s.invalid,
            unprocessed: s.unprocessed,
            rejects: csv::Reader::from_reader(rejects.into_inner().as_slice())
                .deserialize()
                .filter_map(Result::ok)
                .collect(),
        }
    }
}

async fn bulk<E: EventStore + Clone, P: EventPublisher, S: SnapshotStore>(
    State(api): State<Arc<Api<E, P, S>>>,
    headers: HeaderMap,
    b: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let bytes = body(b)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let format = if content_type.contains("ndjson") || content_type.contains("jsonl") {
        Format::Ndjson
    } else if content_type.contains("csv") {
        Format::Csv
    } else {
        Format::sniff(&bytes)
    };
    let invalid_body = |e: RowError| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_body",
            e.to_string(),
            None,
        )
    };
    let rows = RowReader::new(std::io::Cursor::new(bytes), format).map_err(invalid_body)?;
    let mut rejects =
        Rejects::new(Vec::new()).map_err(|e| StoreError::Unavailable(e.to_string()))?;
    match ingest(rows, &api.commands, &mut rejects, |_| {}).await {
        Ok(summary) => {
            let out = BulkSummary::new(&summary, rejects);
            Ok((StatusCode::OK, axum::Json(out)).into_response())
        }
        Err(IngestError::Input(e)) => Err(invalid_body(e)),
        // Stopped part-way: the status says why (and whether to retry), the body says what
        // the rows read so far came to, so nothing booked is hidden.
        Err(IngestError::Stopped {
            summary,
            line,
            cause,
        }) => {
            let mut e = match cause {
                StopCause::Command(c) => ApiError::from(c),
                StopCause::Read(r) => invalid_body(r),
                StopCause::Rejects(io) => StoreError::Unavailable(io.to_string()).into(),
                // `ingest` is never asked to stop; should it be, the client may resubmit.
                StopCause::Interrupted => StoreError::Unavailable("interrupted".into()).into(),
            };
            e.message = format!(
                "{} (stopped at line {line}; the summary says what the rows before it came \
                 to; resubmitting the whole body is safe)",
                e.message
            );
            e.summary = Some(Box::new(BulkSummary::new(&summary, rejects)));
            Err(e)
        }
    }
}

#[derive(Deserialize)]
struct BalanceQuery {
    at: Option<String>,
}

async fn balance<E: EventStore + Clone, P: EventPublisher, S: SnapshotStore>(
    State(api): State<Arc<Api<E, P, S>>>,
    Path(raw): Path<String>,
    q: Result<Query<BalanceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = account(&raw)?;
    let Query(q) = q.map_err(|e| ApiError::invalid("at", e.body_text()))?;
    let unknown = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_account",
            format!("account {raw} has no events"),
            Some("account"),
        )
    };
    match q.at {
        None => {
            let s = api.query.balance(&id).await?.ok_or_else(unknown)?;
            Ok(axum::Json(BalanceView::new(&raw, &s)).into_response())
        }
        Some(at) => {
            let t = parse_rfc3339(&at).map_err(|e| ApiError::invalid("at", e))?;
            let p = api.query.balance_at(&id, t).await?.ok_or_else(unknown)?;
            Ok(axum::Json(PointInTimeView::new(&raw, p.at, p.balance, p.events)).into_response())
        }
    }
}

#[derive(Deserialize)]
struct EventsQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn events<E: EventStore + Clone, P: EventPublisher, S: SnapshotStore>(
    State(api): State<Arc<Api<E, P, S>>>,
    Path(raw): Path<String>,
    q: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let id = account(&raw)?;
    let Query(q) = q.map_err(|e| ApiError::invalid("limit", e.body_text()))?;
    let list = api
        .query
        .history(&id, q.from.unwrap_or(1), q.limit.unwrap_or(100))
        .await?;
    if list.is_empty() && q.from.unwrap_or(1) <= 1 {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_account",
            format!("account {raw} has no events"),
            Some("account"),
        ));
    }
    let views: Vec<EventView> = list.iter().map(EventView::new).collect();
    Ok(axum::Json(serde_json::json!({ "account": raw, "events": views })).into_response())
}

async fn metrics<E, P, S>(State(api): State<Arc<Api<E, P, S>>>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        api.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Data that does not fold is no outage: a 500 naming it, never a 503 with
    /// `Retry-After` that clients would retry forever.
    #[test]
    fn corrupt_data_is_a_500_without_retry_after_and_an_outage_a_503_with_it() {
        let corrupt =
            ApiError::from(StoreError::Corrupt("events of x do not fold".into())).into_response();
        assert_eq!(corrupt.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(
            corrupt
                .headers()
                .get(axum::http::header::RETRY_AFTER)
                .is_none()
        );
        let down = ApiError::from(StoreError::Unavailable("down".into())).into_response();
        assert_eq!(down.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            down.headers()
                .get(axum::http::header::RETRY_AFTER)
                .is_some()
        );
    }
}
