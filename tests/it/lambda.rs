//! The Lambda handlers fed the event shapes `sam local generate-event` produces (saved in
//! `tests/fixtures/`): the projector's Kinesis batch and the HTTP API's API Gateway v2 proxy
//! event, on the embedded backend so they run without emulators.

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use tower::ServiceExt;

use tally::adapters::embedded::EmbeddedStore;
use tally::app::{Embedded, Settings};
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;

const KINESIS: &str = include_str!("../fixtures/kinesis-get-records.json");
const HTTP_API: &str = include_str!("../fixtures/http-api-proxy.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sam_kinesis_event_is_handled_like_lambda_and_its_foreign_record_quarantined() {
    let store = EmbeddedStore::in_memory().unwrap();
    let projector = Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        16,
        Arc::new(Metrics::default()),
    );
    let event: KinesisEvent = serde_json::from_str(KINESIS).unwrap();
    let n = event.records.len();
    let response = projector.handle(event).await;
    assert!(
        response.batch_item_failures.is_empty(),
        "a poison record never blocks its shard"
    );
    let q = store.quarantined().unwrap();
    assert_eq!(q.len(), n);
    assert_eq!(q[0].shard, "shardId-000000000000");
    assert_eq!(q[0].data, b"Hello, this is a test 123.");
    // The lean JSON path gives the same answer on the same bytes.
    let again = projector.handle_json(KINESIS.as_bytes()).await.unwrap();
    assert_eq!(again, response);
}

async fn call(router: axum::Router, event: serde_json::Value) -> (u16, serde_json::Value) {
    let request: lambda_http::request::LambdaRequest = serde_json::from_value(event).unwrap();
    let request: http::Request<lambda_http::Body> = request.into();
    let (parts, body) = request.into_parts();
    let request = http::Request::from_parts(parts, axum::body::Body::from(body.to_vec()));
    let response = router.oneshot(request).await.unwrap();
    let status = response.status().as_u16();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&bytes).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sam_http_api_event_reaches_the_router_through_lambda_http() {
    let app = Embedded::start(None, Settings::default()).await.unwrap();
    // As generated: an unknown path answers the API's JSON 404.
    let event: serde_json::Value = serde_json::from_str(HTTP_API).unwrap();
    let (status, body) = call(app.router(), event.clone()).await;
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
    // The same event aimed at a real route with a real body books a deposit.
    let mut deposit = event;
    deposit["rawPath"] = "/v1/accounts/acct-1/deposits".into();
    deposit["requestContext"]["http"]["path"] = "/v1/accounts/acct-1/deposits".into();
    deposit["rawQueryString"] = "".into();
    deposit["queryStringParameters"] = serde_json::Value::Null;
    deposit["isBase64Encoded"] = false.into();
    deposit["body"] =
        r#"{"txn_id":"l-1","amount":700,"occurred_at":"2026-11-01T09:00:00Z"}"#.into();
    let (status, body) = call(app.router(), deposit).await;
    assert_eq!(
        (status, body["balance"].as_i64()),
        (201, Some(700)),
        "{body}"
    );
    app.shutdown().await;
}
