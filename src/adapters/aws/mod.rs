//! AWS adapters: DynamoDB for the event store, snapshots and quarantine (and, next, Kinesis
//! for the stream). SDK types and errors stay inside this module; services see ports.
//!
//! Tested against DynamoDB Local (AWS's own emulator) started by `scripts/emulators up`.

pub mod dynamodb;
pub mod kinesis;
pub mod poller;

use aws_config::BehaviorVersion;

/// Where the AWS resources are and what they are called. From `TALLY_*` variables; the
/// SDK honours `AWS_ENDPOINT_URL`, `AWS_REGION` and the usual credential chain itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsConfig {
    pub events_table: String,
    pub balances_table: String,
    pub quarantine_table: String,
    /// Seconds txn outcome markers live (DynamoDB TTL), an operator's opt-in: after that an
    /// id may be decided again. `None` (the default) keeps them forever.
    pub marker_ttl_secs: Option<u64>,
}

impl AwsConfig {
    /// Reads `TALLY_EVENTS_TABLE`, `TALLY_BALANCES_TABLE`, `TALLY_QUARANTINE_TABLE` and
    /// `TALLY_MARKER_TTL_SECS`, failing fast with the variable's name.
    pub fn from_env() -> Result<AwsConfig, String> {
        let var = |name: &str| std::env::var(name).map_err(|_| format!("{name} is not set"));
        // Unset or 0: outcomes never expire.
        let ttl = match std::env::var("TALLY_MARKER_TTL_SECS") {
            Ok(v) => match v.parse::<u64>() {
                Ok(0) => None,
                Ok(secs) => Some(secs),
                Err(_) => {
                    return Err(format!(
                        "TALLY_MARKER_TTL_SECS: {v:?} is not a number of seconds"
                    ));
                }
            },
            Err(_) => None,
        };
        Ok(AwsConfig {
            events_table: var("TALLY_EVENTS_TABLE")?,
            balances_table: var("TALLY_BALANCES_TABLE")?,
            quarantine_table: var("TALLY_QUARANTINE_TABLE")?,
            marker_ttl_secs: ttl,
        })
    }
}

/// The shared SDK configuration, loaded once per process.
pub async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
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
