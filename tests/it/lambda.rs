//! The Lambda handlers fed the event shapes `sam local generate-event` produces (saved in
//! `tests/fixtures/`): the projector's Kinesis batch and the HTTP API's API Gateway v2 proxy
//! event, on the embedded backend so they run without emulators.

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use aws_lambda_events::event::streams::KinesisEventResponse;
use tower::ServiceExt;

use tally::adapters::embedded::EmbeddedStore;
use tally::app::{Embedded, Settings};
use tally::codec::batch::RecordBatch;
use tally::codec::kinesis::{BatchResponse, read_event};
use tally::lambda::KinesisHandler;
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;

use crate::harness::lambda_json;

const KINESIS: &str = include_str!("../fixtures/kinesis-get-records.json");
const HTTP_API: &str = include_str!("../fixtures/http-api-proxy.json");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sam_kinesis_event_is_handled_like_lambda_and_its_foreign_record_quarantined() {
    let store = EmbeddedStore::in_memory().unwrap();
    let handler = KinesisHandler::new(Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        16,
        Arc::new(Metrics::default()),
    ));
    let event: KinesisEvent = serde_json::from_str(KINESIS).unwrap();
    let n = event.records.len();
    let response = handler.handle(KINESIS.as_bytes()).await.unwrap();
    assert!(
        response.batch_item_failures.is_empty(),
        "a poison record never blocks its shard"
    );
    let q = store.quarantined().unwrap();
    assert_eq!(q.len(), n);
    assert_eq!(q[0].shard, "shardId-000000000000");
    assert_eq!(
        q[0].sequence_number,
        event.records[0].kinesis.sequence_number
    );
    assert_eq!(q[0].data, b"Hello, this is a test 123.");
}

#[test]
fn the_lean_reader_reads_what_aws_lambda_events_reads() {
    for json in [
        KINESIS.to_owned(),
        lambda_json(&[b"one".to_vec(), vec![0, 255, 7]]),
    ] {
        let event: KinesisEvent = serde_json::from_str(&json).unwrap();
        let mut batch = RecordBatch::new();
        read_event(json.as_bytes(), &mut batch).unwrap();
        assert_eq!(batch.len(), event.records.len());
        for (i, r) in event.records.iter().enumerate() {
            assert_eq!(batch.data(i).unwrap(), r.kinesis.data.as_slice());
            assert_eq!(batch.sequence_number(i), r.kinesis.sequence_number);
            let shard = r.event_id.as_deref().unwrap().split_once(':').unwrap().0;
            assert_eq!(batch.shard(i), shard);
        }
    }
}

#[test]
fn the_partial_batch_response_is_what_lambda_expects() {
    let mut batch = RecordBatch::new();
    batch.push(
        "s",
        "49590338271490256608559692538361571095921575989136588898",
        b"",
    );
    let ours = serde_json::to_value(BatchResponse::failures(&batch, &[0])).unwrap();
    let theirs: KinesisEventResponse = serde_json::from_value(ours.clone()).unwrap();
    assert_eq!(
        theirs.batch_item_failures[0].item_identifier.as_deref(),
        Some("49590338271490256608559692538361571095921575989136588898")
    );
    assert_eq!(serde_json::to_value(theirs).unwrap(), ours);
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
