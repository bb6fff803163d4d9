//! What the Lambda entry points share: JSON logs, configuration from the environment
//! (failing fast naming the variable), SDK clients built once per process, the wiring
//! of the services over the AWS adapters, and the projector's invocation handler
//! ([`KinesisHandler`]: the payload's JSON bytes in, the partial-batch response out), which
//! is exactly what the `projector` binary calls and what `benches/projector_batch.rs`
//! measures. `src/bin/*.rs` stay a few lines.

use std::sync::Arc;

use crate::adapters::aws::dynamodb::DynamoStore;
use crate::adapters::aws::kinesis::KinesisPublisher;
use crate::adapters::aws::{AwsConfig, sdk_config};
use crate::codec::batch::RecordBatch;
use crate::codec::kinesis::{BatchResponse, EventError, read_event};
use crate::domain::Policy;
use crate::domain::limits::BUCKETS_DEFAULT;
use crate::http::{Api, router};
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::command::{CommandService, system_clock};
use crate::service::metrics::Metrics;
use crate::service::projector::{CACHE_ENTRIES_DEFAULT, Projector};
use crate::service::query::QueryService;

/// JSON logs for CloudWatch, level from `TALLY_LOG` (default `info`).
pub fn init_tracing() {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_current_span(false)
        .without_time() // CloudWatch stamps every line
        .init();
}

/// The AWS-backed services of one Lambda process.
pub struct AwsApp {
    pub store: DynamoStore,
    pub publisher: KinesisPublisher,
    pub kinesis: aws_sdk_kinesis::Client,
    pub stream: String,
    pub metrics: Arc<Metrics>,
}

impl AwsApp {
    /// Reads `TALLY_*` (tables, stream) and the SDK's own variables once, at cold start.
    pub async fn from_env() -> Result<AwsApp, String> {
        let config = AwsConfig::from_env()?;
        let stream =
            std::env::var("TALLY_STREAM").map_err(|_| "TALLY_STREAM is not set".to_string())?;
        let sdk = sdk_config().await;
        let kinesis = aws_sdk_kinesis::Client::new(&sdk);
        let metrics = Arc::new(Metrics::default());
        Ok(AwsApp {
            store: DynamoStore::new(aws_sdk_dynamodb::Client::new(&sdk), config)
                .with_metrics(metrics.clone()),
            publisher: KinesisPublisher::new(kinesis.clone(), stream.clone()),
            kinesis,
            stream,
            metrics,
        })
    }

    /// The HTTP API (commands and queries) over DynamoDB and Kinesis.
    pub fn router(&self) -> axum::Router {
        let commands = CommandService::new(
            self.store.clone(),
            self.publisher.clone(),
            Policy::default(),
            BUCKETS_DEFAULT,
            system_clock(),
        )
        .with_metrics(self.metrics.clone());
        let query = QueryService::new(self.store.clone(), self.store.clone());
        router(Arc::new(Api {
            commands,
            query,
            metrics: self.metrics.clone(),
        }))
    }

    /// The projector; keep it for the life of the process so its cache spans invocations.
    pub fn projector(&self) -> Projector<DynamoStore, DynamoStore, DynamoStore> {
        Projector::new(
            self.store.clone(),
            self.store.clone(),
            self.store.clone(),
            CACHE_ENTRIES_DEFAULT,
            self.metrics.clone(),
        )
    }

    /// The projector Lambda's handler over this process's projector.
    pub fn kinesis_handler(&self) -> KinesisHandler<DynamoStore, DynamoStore, DynamoStore> {
        KinesisHandler::new(self.projector())
    }
}

/// The projector Lambda's handler: one per process, so the projector's snapshot cache and
/// the record buffer live across invocations of a warm instance.
pub struct KinesisHandler<E, S, Q> {
    pub projector: Projector<E, S, Q>,
    /// The last invocation's buffers, reused (a concurrent invocation makes its own).
    spare: std::sync::Mutex<Option<RecordBatch>>,
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> KinesisHandler<E, S, Q> {
    pub fn new(projector: Projector<E, S, Q>) -> Self {
        KinesisHandler {
            projector,
            spare: std::sync::Mutex::new(None),
        }
    }

    fn spare(&self) -> std::sync::MutexGuard<'_, Option<RecordBatch>> {
        self.spare
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// One invocation: Lambda's Kinesis event JSON (the raw payload) in, the records to
    /// retry out. A payload that is not a Kinesis event fails the invocation (Lambda retries
    /// it); a record that does not decode is quarantined, never failing its shard.
    pub async fn handle(&self, payload: &[u8]) -> Result<BatchResponse, EventError> {
        let mut batch = self.spare().take().unwrap_or_default();
        let read = read_event(payload, &mut batch);
        let response = match read {
            Ok(()) => {
                let projection = self.projector.project(&batch).await;
                Ok(BatchResponse::failures(&batch, &projection.failed))
            }
            Err(e) => Err(e),
        };
        *self.spare() = Some(batch);
        response
    }
}

/// Wall-clock milliseconds, for EMF timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
