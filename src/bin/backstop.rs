//! The `backstop` Lambda: page inserts from the Events table's DynamoDB stream in (the
//! mapping's filter drops everything else), each checked once it is the configured delay
//! old; an account whose snapshot is behind is projected from the event store. Records
//! from the first one a failed check left unchecked are reported failed, so the mapping
//! delivers them again. Each invocation prints one EMF line (`AccountsRepaired` is alarmed).

use aws_lambda_events::event::streams::{DynamoDbBatchItemFailure, DynamoDbEventResponse};
use lambda_runtime::{Error, LambdaEvent, service_fn};
use tally::codec::ddb_stream::StreamBatch;
use tally::lambda::now_ms;

/// mimalloc, as in the `tally` binary: an invocation allocates and frees megabytes of
/// buffers, which glibc's allocator gives back to the kernel and faults in again each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let app = tally::lambda::AwsApp::from_env().await?;
    let (backstop, metrics) = (std::sync::Arc::new(app.backstop()), app.metrics.clone());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<StreamBatch>| {
        let (backstop, metrics) = (backstop.clone(), metrics.clone());
        async move {
            let before = metrics.counters();
            let (index, notices): (Vec<usize>, Vec<_>) =
                event.payload.notices(now_ms()).into_iter().unzip();
            let mut response = DynamoDbEventResponse::default();
            if let Err((at, e)) = backstop.check_when_due(&notices, now_ms).await {
                tracing::error!(error = %e, "backstop check failed; the mapping retries");
                let mut failure = DynamoDbBatchItemFailure::default();
                failure.item_identifier = Some(
                    event.payload.records[index[at]]
                        .dynamodb
                        .sequence_number
                        .clone(),
                );
                response.batch_item_failures.push(failure);
            }
            println!("{}", metrics.emf("backstop", &before, now_ms()));
            Ok::<_, Error>(response)
        }
    }))
    .await
}
