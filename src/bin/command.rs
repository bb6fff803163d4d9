//! The `command` Lambda: the HTTP API router served through lambda_http (API Gateway HTTP API).
//! API Gateway routes the POST routes here; IAM gives this function only what they need.

/// mimalloc, as in the `tally` binary: an invocation allocates and frees megabytes of
/// buffers, which glibc's allocator gives back to the kernel and faults in again each time.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let app = tally::lambda::AwsApp::from_env().await?;
    lambda_http::run(app.router()).await
}
