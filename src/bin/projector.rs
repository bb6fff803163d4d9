//! The `projector` Lambda: Kinesis batches in (`KinesisEvent`), partial batch failures out
//! (`KinesisEventResponse`). The projector, and so its snapshot cache, lives across
//! invocations of a warm instance. Each invocation prints one EMF line of metrics.

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    let app = tally::lambda::AwsApp::from_env().await?;
    let (projector, metrics) = (Arc::new(app.projector()), app.metrics.clone());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let (projector, metrics) = (projector.clone(), metrics.clone());
        async move {
            let before = metrics.counters();
            let response = projector.handle(event.payload).await;
            // CloudWatch Embedded Metric Format: one stdout line becomes the metrics.
            println!(
                "{}",
                metrics.emf("projector", &before, tally::lambda::now_ms())
            );
            Ok::<_, Error>(response)
        }
    }))
    .await
}
