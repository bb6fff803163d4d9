//! The `command` Lambda: the HTTP API router served through lambda_http (API Gateway HTTP API).
//! API Gateway routes the POST routes here; IAM gives this function only what they need.

#[tokio::main]
async fn main() -> Result<(), lambda_http::Error> {
    let app = tally::lambda::AwsApp::from_env().await?;
    lambda_http::run(app.router()).await
}
