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

/// The DynamoDB Streams client (the backstop's reader), at [`streams_endpoint`].
pub async fn streams_client(
    settings: &crate::config::AwsSettings,
) -> aws_sdk_dynamodbstreams::Client {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    let sdk = loader.load().await;
    let mut streams = aws_sdk_dynamodbstreams::config::Builder::from(&sdk);
    if let Some(url) = streams_endpoint(settings, &sdk) {
        streams = streams.endpoint_url(url);
    }
    aws_sdk_dynamodbstreams::Client::from_conf(streams.build())
}

/// Where DynamoDB Streams is reached when it is not the SDK's default: the configured
/// DynamoDB endpoint; else, unless the SDK names one for Streams itself
/// (`AWS_ENDPOINT_URL_DYNAMODB_STREAMS`), the DynamoDB endpoint the SDK resolved
/// (`AWS_ENDPOINT_URL_DYNAMODB`). An emulator serves both APIs on one port, and a reader
/// that went to real AWS instead would only log failures while nothing is backstopped.
fn streams_endpoint(
    settings: &crate::config::AwsSettings,
    sdk: &aws_config::SdkConfig,
) -> Option<String> {
    use aws_types::service_config::ServiceConfigKey;
    if let Some(url) = &settings.dynamodb_endpoint {
        return Some(url.clone());
    }
    let service = |id| {
        let key = ServiceConfigKey::builder()
            .service_id(id)
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build()
            .ok()?;
        sdk.service_config()?.load_config(key)
    };
    if service("DynamoDB Streams").is_some() {
        return None; // the builder already took it from the SDK
    }
    service("DynamoDB")
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_types::service_config::{LoadServiceConfig, ServiceConfigKey};

    /// Service endpoints as `AWS_ENDPOINT_URL_<SERVICE>` variables would give them.
    #[derive(Debug)]
    struct Endpoints(Vec<(&'static str, &'static str)>);

    impl LoadServiceConfig for Endpoints {
        fn load_config(&self, key: ServiceConfigKey<'_>) -> Option<String> {
            let found = self.0.iter().find(|(id, _)| *id == key.service_id());
            found.map(|(_, url)| (*url).to_owned())
        }
    }

    fn settings(dynamodb_endpoint: Option<&str>) -> crate::config::AwsSettings {
        crate::config::AwsSettings {
            tables: AwsConfig {
                events_table: "e".into(),
                balances_table: "b".into(),
                quarantine_table: "q".into(),
                marker_ttl_secs: None,
            },
            stream: "s".into(),
            concurrency: 1,
            region: None,
            dynamodb_endpoint: dynamodb_endpoint.map(str::to_owned),
            kinesis_endpoint: None,
            backstop_delay: std::time::Duration::from_secs(60),
        }
    }

    fn sdk(endpoints: Vec<(&'static str, &'static str)>) -> aws_config::SdkConfig {
        aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .service_config(Endpoints(endpoints))
            .build()
    }

    #[test]
    fn streams_follow_the_dynamodb_endpoint_the_sdk_resolved() {
        let ddb = ("DynamoDB", "http://127.0.0.1:8000");
        assert_eq!(
            streams_endpoint(&settings(None), &sdk(vec![ddb])).as_deref(),
            Some("http://127.0.0.1:8000")
        );
    }

    #[test]
    fn a_configured_endpoint_wins_and_a_streams_endpoint_of_its_own_is_kept() {
        let ddb = ("DynamoDB", "http://127.0.0.1:8000");
        let streams = ("DynamoDB Streams", "http://127.0.0.1:9000");
        let configured = settings(Some("http://127.0.0.1:7000"));
        assert_eq!(
            streams_endpoint(&configured, &sdk(vec![ddb, streams])).as_deref(),
            Some("http://127.0.0.1:7000")
        );
        // None: the client builder already took the Streams endpoint from the SDK.
        assert_eq!(
            streams_endpoint(&settings(None), &sdk(vec![ddb, streams])),
            None
        );
        assert_eq!(streams_endpoint(&settings(None), &sdk(vec![])), None);
    }
}
