//! The `projector` Lambda: Kinesis batches in (`KinesisEvent`), partial batch failures out
//! (`KinesisEventResponse`). The projector, and so its snapshot cache, lives across
//! invocations of a warm instance.

use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use lambda_runtime::{Error, LambdaEvent, service_fn};

#[tokio::main]
async fn main() -> Result<(), Error> {
    tally::lambda::init_tracing();
    let projector = Arc::new(tally::lambda::AwsApp::from_env().await?.projector());
    lambda_runtime::run(service_fn(move |event: LambdaEvent<KinesisEvent>| {
        let projector = projector.clone();
        async move { Ok::<_, Error>(projector.handle(event.payload).await) }
    }))
    .await
}
