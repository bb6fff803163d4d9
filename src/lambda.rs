//! What the Lambda entry points share: JSON logs, configuration from the environment
//! (failing fast naming the variable), SDK clients built once per process, and the wiring
//! of the services over the AWS adapters. `src/bin/*.rs` stay a few lines.

use std::sync::Arc;

use crate::adapters::aws::dynamodb::DynamoStore;
use crate::adapters::aws::kinesis::KinesisPublisher;
use crate::adapters::aws::{AwsConfig, sdk_config};
use crate::domain::Policy;
use crate::domain::limits::BUCKETS_DEFAULT;
use crate::http::{Api, router};
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
}

/// Wall-clock milliseconds, for EMF timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
