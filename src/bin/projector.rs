//! The `projector` Lambda: a Kinesis event source mapping's batches in, partial batch
//! failures out. The payload reaches the handler as raw JSON (`RawValue`: lambda_runtime
//! only checks and borrows it) and is read by tally's own Kinesis event reader, the path
//! `benches/projector_batch.rs` measures. The handler, and so the snapshot cache, lives
//! across invocations of a warm instance. Each invocation prints one EMF line of metrics.

use std::sync::Arc;

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::value::RawValue;

/// mimalloc, as in the `tally` binary: an invocation allocates and frees megabytes of
/// buffers, which glibc's allocator gives back to the kernel and faults in again each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), Error> {
    let app = tally::lambda::AwsApp::from_env().await?;
    let (handler, metrics) = (Arc::new(app.kinesis_handler()), app.metrics.clone());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Box<RawValue>>| {
        let (handler, metrics) = (handler.clone(), metrics.clone());
        async move {
            let before = metrics.counters();
            let response = handler.handle(event.payload.get().as_bytes()).await;
            // CloudWatch Embedded Metric Format: one stdout line becomes the metrics.
            println!(
                "{}",
                metrics.emf("projector", &before, tally::lambda::now_ms())
            );
            Ok::<_, Error>(response?)
        }
    }))
    .await
}
