//! AWS adapters: DynamoDB for the event store, snapshots and quarantine (and, next, Kinesis
//! for the stream). SDK types and errors stay inside this module; services see ports.
//!
//! Tested against DynamoDB Local (AWS's own emulator) started by `scripts/emulators up`.

pub mod dynamodb;
pub mod kinesis;
pub mod poller;
pub mod streams;

use aws_config::BehaviorVersion;

/// What the DynamoDB tables are called, and the marker TTL: the adapter's part of
/// [`crate::config::AwsSettings`], built by [`crate::config`] (never from the environment
/// here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub events_table: String,
    pub balances_table: String,
    pub quarantine_table: String,
    /// Seconds txn outcome markers live (DynamoDB TTL), an operator's opt-in: after that an
    /// id may be decided again. `None` (the default) keeps them forever.
    pub marker_ttl_secs: Option<u64>,
}

/// The SDK clients of one process, built once from the configuration: its region and
/// endpoints where it names them, the SDK's own chain (credentials, `AWS_REGION`,
/// `AWS_ENDPOINT_URL_*`) for the rest.
pub async fn clients(
    settings: &crate::config::AwsSettings,
) -> (aws_sdk_dynamodb::Client, aws_sdk_kinesis::Client) {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk);
    if let Some(url) = &settings.dynamodb_endpoint {
        dynamodb = dynamodb.endpoint_url(url);
    }
    let mut kinesis = aws_sdk_kinesis::config::Builder::from(&sdk);
    if let Some(url) = &settings.kinesis_endpoint {
        kinesis = kinesis.endpoint_url(url);
    }
    (
        aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
        aws_sdk_kinesis::Client::from_conf(kinesis.build()),
    )
}

/// The DynamoDB Streams client (the backstop's reader), at the DynamoDB endpoint when the
/// configuration names one (DynamoDB Local serves both APIs on one port).
pub async fn streams_client(
    settings: &crate::config::AwsSettings,
) -> aws_sdk_dynamodbstreams::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let mut streams = aws_sdk_dynamodbstreams::config::Builder::from(&sdk);
    if let Some(url) = &settings.dynamodb_endpoint {
        streams = streams.endpoint_url(url);
    }
    aws_sdk_dynamodbstreams::Client::from_conf(streams.build())
}

/// Creates the stream if it does not exist and waits until it is ACTIVE: for emulators;
/// in AWS the SAM template owns it.
pub async fn create_stream(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    shards: i32,
) -> Result<(), String> {
    use aws_sdk_kinesis::error::ProvideErrorMetadata;
    match client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
    {
        Ok(_) => {}
        Err(e)
            if e.as_service_error().and_then(ProvideErrorMetadata::code)
                == Some("ResourceInUseException") => {}
        Err(e) => return Err(format!("CreateStream {name}: {e:?}")),
    }
    for _ in 0..300 {
        let d = client
            .describe_stream_summary()
            .stream_name(name)
            .send()
            .await
            .map_err(|e| format!("{e:?}"))?;
        if d.stream_description_summary()
            .map(|s| s.stream_status().as_str())
            == Some("ACTIVE")
        {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(format!("stream {name} did not become ACTIVE"))
}
