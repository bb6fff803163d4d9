//! What the Lambda entry points (and the CLI's AWS backend) share: JSON logs, the one
//! configuration ([`crate::config`], failing fast naming the variable), SDK clients built
//! once per process, the wiring of the services over the AWS adapters, and the projector's
//! invocation handler ([`KinesisHandler`]: the payload's JSON bytes in, the partial-batch
//! response out), which is exactly what the `projector` binary calls and what
//! `benches/projector_batch.rs` measures. `src/bin/*.rs` stay a few lines. Reads no
//! environment variable itself.

use std::sync::Arc;

use crate::adapters::aws::clients;
use crate::adapters::aws::dynamodb::DynamoStore;
use crate::adapters::aws::kinesis::KinesisPublisher;
use crate::codec::batch::RecordBatch;
use crate::codec::kinesis::{BatchResponse, EventError, read_event};
use crate::config::{AwsSettings, Config};
use crate::domain::Policy;
use crate::http::{Api, router};
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::backstop::Backstop;
use crate::service::command::{CommandService, system_clock};
use crate::service::metrics::Metrics;
use crate::service::projector::Projector;
use crate::service::query::QueryService;

/// JSON logs for CloudWatch; `filter` from the configuration's `TALLY_LOG` (default `info`).
pub fn init_tracing(filter: Option<&str>) {
    tracing_subscriber::fmt()
        .json()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter.unwrap_or("info")))
        .with_current_span(false)
        .without_time() // CloudWatch stamps every line
        .init();
}

/// Accounts per slice of a bulk call on AWS (see `CommandService::with_accounts_per_call`):
/// a few transactions' worth, so the first slices are published (and projected) while the
/// rest are appended.
pub const ACCOUNTS_PER_CALL: usize = 256;

/// The AWS-backed services of one process (a Lambda instance, or the CLI on AWS).
pub struct AwsApp {
    pub store: DynamoStore,
    pub publisher: KinesisPublisher,
    pub kinesis: aws_sdk_kinesis::Client,
    pub stream: String,
    pub metrics: Arc<Metrics>,
    pub policy: Policy,
    pub buckets: u32,
    pub cache_entries: usize,
    pub tip_cache_entries: usize,
    pub backstop_delay: std::time::Duration,
}

impl AwsApp {
    /// A Lambda's cold start: the configuration from `TALLY_*` variables, JSON logs, clients.
    pub async fn from_env() -> Result<AwsApp, String> {
        let config = Config::from_env().map_err(|e| e.to_string())?;
        init_tracing(config.log.as_deref());
        let aws = config
            .aws()
            .expect("a Lambda's configuration is always for the aws backend");
        Ok(AwsApp::connect(&config, aws).await)
    }

    /// The services over the resources `aws` names, with `config`'s policy and sizes.
    pub async fn connect(config: &Config, aws: &AwsSettings) -> AwsApp {
        let (dynamodb, kinesis) = clients(aws).await;
        let metrics = Arc::new(Metrics::default());
        AwsApp {
            store: DynamoStore::new(dynamodb, aws.tables.clone())
                .with_metrics(metrics.clone())
                .with_concurrency(aws.concurrency),
            publisher: KinesisPublisher::new(kinesis.clone(), aws.stream.clone()),
            kinesis,
            stream: aws.stream.clone(),
            metrics,
            policy: config.policy,
            buckets: config.buckets,
            cache_entries: config.cache_entries,
            tip_cache_entries: config.tip_cache_entries,
            backstop_delay: aws.backstop_delay,
        }
    }

    /// The command service over DynamoDB and Kinesis.
    pub fn commands(&self) -> CommandService<DynamoStore, KinesisPublisher> {
        CommandService::new(
            self.store.clone(),
            self.publisher.clone(),
            self.policy,
            self.buckets,
            system_clock(),
        )
        .with_metrics(self.metrics.clone())
        .with_tip_cache(self.tip_cache_entries)
        .with_accounts_per_call(ACCOUNTS_PER_CALL)
    }

    /// The query service over DynamoDB.
    pub fn query(&self) -> QueryService<DynamoStore, DynamoStore> {
        QueryService::new(self.store.clone(), self.store.clone())
    }

    /// The HTTP API (commands and queries) over DynamoDB and Kinesis.
    pub fn router(&self) -> axum::Router {
        router(Arc::new(Api {
            commands: self.commands(),
            query: self.query(),
            metrics: self.metrics.clone(),
        }))
    }

    /// The projector; keep it for the life of the process so its cache spans invocations.
    pub fn projector(&self) -> Projector<DynamoStore, DynamoStore, DynamoStore> {
        Projector::new(
            self.store.clone(),
            self.store.clone(),
            self.store.clone(),
            self.cache_entries,
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

impl AwsApp {
    /// The backstop over DynamoDB: its own projector (only its one-account catch-up is
    /// used) and the configured delay.
    pub fn backstop(&self) -> Backstop<DynamoStore, DynamoStore, DynamoStore> {
        Backstop::new(
            Arc::new(self.projector()),
            self.store.clone(),
            self.metrics.clone(),
            self.backstop_delay,
        )
    }
}

/// Wall-clock milliseconds, for EMF timestamps.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
