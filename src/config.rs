//! The one typed configuration of a tally process, built once at start from command-line
//! flags and `TALLY_*` environment variables (a flag wins over its variable) and passed
//! down: to both backends, the CLI, the local servers and the Lambda functions. Every
//! setting fails fast with a message naming its flag and its variable.
//!
//! This is the only module that reads the environment (through clap's `env` support).
//! Beneath it the AWS SDK keeps its own chain for what tally does not name here:
//! credentials, and the region and endpoints when neither flag nor variable sets them
//! (`AWS_REGION`, `AWS_ENDPOINT_URL_DYNAMODB`, …). Must never: hold a secret, or be read
//! again after start.

use std::path::PathBuf;
use std::time::Duration;

use crate::adapters::aws::AwsConfig;
use crate::adapters::embedded::stream::Mapping;
use crate::domain::Policy;
use crate::domain::limits::{AMOUNT_MAX_DEFAULT, BATCH_RECORDS_MAX, BUCKETS_DEFAULT};
use crate::service::projector::CACHE_ENTRIES_DEFAULT;

/// Shards of the embedded stream, and of a stream `--create-resources` makes.
pub const SHARDS_DEFAULT: u32 = 4;
/// Upper bound of `--shards` and `--buckets`: more would only waste memory locally.
pub const SHARDS_MAX: u32 = 1_024;
/// Tips the command service remembers by default.
pub const TIP_CACHE_ENTRIES_DEFAULT: usize = 100_000;
pub const BUCKETS_MAX: u32 = 1 << 16;

/// Every setting as given (flag or variable), before checking. Flattened into the CLI
/// (global flags) and parsed from the environment alone in a Lambda.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Configuration (each flag also reads its TALLY_* variable)")]
pub struct ConfigArgs {
    /// `embedded` (a local redb data dir) or `aws` (DynamoDB tables and a Kinesis stream).
    #[arg(
        long,
        global = true,
        env = "TALLY_BACKEND",
        value_name = "embedded|aws"
    )]
    pub backend: Option<String>,
    /// Directory of the embedded database [default: tally-data].
    #[arg(long, global = true, env = "TALLY_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// DynamoDB table of events and txn outcomes (the source of truth).
    #[arg(long, global = true, env = "TALLY_EVENTS_TABLE")]
    pub events_table: Option<String>,
    /// DynamoDB table of balance snapshots.
    #[arg(long, global = true, env = "TALLY_BALANCES_TABLE")]
    pub balances_table: Option<String>,
    /// DynamoDB table of quarantined stream records.
    #[arg(long, global = true, env = "TALLY_QUARANTINE_TABLE")]
    pub quarantine_table: Option<String>,
    /// Kinesis stream of events.
    #[arg(long, global = true, env = "TALLY_STREAM")]
    pub stream: Option<String>,
    /// Seconds txn outcomes live (an operator's opt-in; 0 or unset: forever).
    #[arg(long, global = true, env = "TALLY_MARKER_TTL_SECS")]
    pub marker_ttl_secs: Option<String>,
    /// DynamoDB requests one store call keeps in flight [default: 16].
    #[arg(long, global = true, env = "TALLY_CONCURRENCY")]
    pub concurrency: Option<String>,
    /// AWS region [default: the SDK's own chain, e.g. AWS_REGION].
    #[arg(long, global = true, env = "TALLY_REGION")]
    pub region: Option<String>,
    /// DynamoDB endpoint URL, for emulators [default: the SDK's, e.g. AWS_ENDPOINT_URL_DYNAMODB].
    #[arg(long, global = true, env = "TALLY_DYNAMODB_ENDPOINT")]
    pub dynamodb_endpoint: Option<String>,
    /// Kinesis endpoint URL, for emulators [default: the SDK's, e.g. AWS_ENDPOINT_URL_KINESIS].
    #[arg(long, global = true, env = "TALLY_KINESIS_ENDPOINT")]
    pub kinesis_endpoint: Option<String>,
    /// Largest amount of one deposit or withdrawal, minor units [default: 10^12].
    #[arg(long, global = true, env = "TALLY_AMOUNT_MAX")]
    pub amount_max: Option<String>,
    /// How far below zero a withdrawal may take a balance, minor units [default: 0].
    #[arg(long, global = true, env = "TALLY_OVERDRAFT_LIMIT")]
    pub overdraft_limit: Option<String>,
    /// Partition-key buckets; fixed for the life of a stream [default: 1024].
    #[arg(long, global = true, env = "TALLY_BUCKETS")]
    pub buckets: Option<String>,
    /// Shards of the embedded stream, or of a stream `--create-resources` makes [default: 4].
    #[arg(long, global = true, env = "TALLY_SHARDS")]
    pub shards: Option<String>,
    /// Snapshots the projector keeps in memory [default: 100000].
    #[arg(long, global = true, env = "TALLY_CACHE_ENTRIES")]
    pub cache_entries: Option<String>,
    /// Accounts whose tips the command service remembers from its own appends (0: off)
    /// [default: 100000].
    #[arg(long, global = true, env = "TALLY_TIP_CACHE_ENTRIES")]
    pub tip_cache_entries: Option<String>,
    /// Most records per projector batch, locally played event source mapping [default: 1000].
    #[arg(long, global = true, env = "TALLY_BATCH_SIZE")]
    pub batch_size: Option<String>,
    /// Milliseconds the local event source mapping waits for a fuller batch [default: 5].
    #[arg(long, global = true, env = "TALLY_BATCH_WINDOW_MS")]
    pub batch_window_ms: Option<String>,
    /// Retries of a failing record before the local mapping gives up on it [default: 8].
    #[arg(long, global = true, env = "TALLY_RETRIES_MAX")]
    pub retries_max: Option<String>,
    /// Seconds after its append that the AWS backstop checks a page's account [default: 60].
    #[arg(long, global = true, env = "TALLY_BACKSTOP_DELAY_SECS")]
    pub backstop_delay_secs: Option<String>,
    /// Log filter (tracing `EnvFilter` syntax) [default: warn for the CLI, info in Lambda].
    #[arg(long, global = true, env = "TALLY_LOG")]
    pub log: Option<String>,
}

/// A setting that cannot be used, naming its flag and its variable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{flag} (or {var}): {message}")]
pub struct ConfigError {
    pub flag: &'static str,
    pub var: &'static str,
    pub message: String,
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    Embedded { data_dir: PathBuf },
    Aws(AwsSettings),
}

/// The AWS resources and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AwsSettings {
    /// Table names and the marker TTL, as the DynamoDB adapter takes them.
    pub tables: AwsConfig,
    pub stream: String,
    /// DynamoDB requests in flight per store call.
    pub concurrency: usize,
    /// `None`: the SDK's own chain decides.
    pub region: Option<String>,
    pub dynamodb_endpoint: Option<String>,
    pub kinesis_endpoint: Option<String>,
    /// How long after its append the backstop checks a page (`service::backstop`).
    pub backstop_delay: Duration,
}

/// The checked configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub backend: Backend,
    pub policy: Policy,
    pub buckets: u32,
    pub shards: u32,
    pub cache_entries: usize,
    /// Tips the command service remembers (see `CommandService::with_tip_cache`).
    pub tip_cache_entries: usize,
    pub mapping: Mapping,
    /// Log filter; `None`: the process's default.
    pub log: Option<String>,
}

/// Whom a configuration is for: the CLI may run either backend, a Lambda only AWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Cli,
    Lambda,
}

/// Names one setting for error messages.
struct Name {
    flag: &'static str,
    var: &'static str,
}

impl Name {
    fn error(&self, message: impl Into<String>) -> ConfigError {
        ConfigError {
            flag: self.flag,
            var: self.var,
            message: message.into(),
        }
    }

    fn required<'a>(&self, v: &'a Option<String>, why: &str) -> Result<&'a str, ConfigError> {
        match v.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Ok(s),
            _ => Err(self.error(format!("not set (required {why})"))),
        }
    }

    /// An integer in `min..=max`, or `default` if not given.
    fn number<T>(&self, v: &Option<String>, default: T, min: T, max: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + std::fmt::Display + Copy,
    {
        let Some(raw) = v.as_deref() else {
            return Ok(default);
        };
        let n: T = raw.trim().replace('_', "").parse().map_err(|_| {
            self.error(format!(
                "{raw:?} is not a whole number between {min} and {max}"
            ))
        })?;
        if n < min || n > max {
            return Err(self.error(format!("{n} is not between {min} and {max}")));
        }
        Ok(n)
    }
}

macro_rules! name {
    ($flag:literal, $var:literal) => {
        Name {
            flag: $flag,
            var: $var,
        }
    };
}

/// Parses nothing but the environment: what a Lambda function has.
#[derive(Debug, clap::Parser)]
struct EnvOnly {
    #[command(flatten)]
    args: ConfigArgs,
}

impl Config {
    /// The configuration of a Lambda function: `TALLY_*` variables only, AWS backend.
    pub fn from_env() -> Result<Config, ConfigError> {
        use clap::Parser;
        let parsed = EnvOnly::try_parse_from(["tally"]).map_err(|e| ConfigError {
            flag: "-",
            var: "TALLY_*",
            message: e.to_string(),
        })?;
        Config::build(&parsed.args, Role::Lambda)
    }

    /// Checks every setting; the first that cannot be used is the error.
    pub fn build(args: &ConfigArgs, role: Role) -> Result<Config, ConfigError> {
        let backend_name = name!("--backend", "TALLY_BACKEND");
        let aws = match (role, args.backend.as_deref().map(str::trim)) {
            (Role::Lambda, _) => true,
            (Role::Cli, None | Some("embedded")) => false,
            (Role::Cli, Some("aws")) => true,
            (Role::Cli, Some(other)) => {
                return Err(backend_name.error(format!("{other:?} is not embedded or aws")));
            }
        };
        let backend = if aws {
            Backend::Aws(aws_settings(args)?)
        } else {
            Backend::Embedded {
                data_dir: args
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("tally-data")),
            }
        };
        Ok(Config {
            backend,
            policy: policy(args)?,
            buckets: name!("--buckets", "TALLY_BUCKETS").number(
                &args.buckets,
                BUCKETS_DEFAULT,
                1,
                BUCKETS_MAX,
            )?,
            shards: name!("--shards", "TALLY_SHARDS").number(
                &args.shards,
                SHARDS_DEFAULT,
                1,
                SHARDS_MAX,
            )?,
            cache_entries: name!("--cache-entries", "TALLY_CACHE_ENTRIES").number(
                &args.cache_entries,
                CACHE_ENTRIES_DEFAULT,
                1,
                100_000_000,
            )?,
            tip_cache_entries: name!("--tip-cache-entries", "TALLY_TIP_CACHE_ENTRIES").number(
                &args.tip_cache_entries,
                TIP_CACHE_ENTRIES_DEFAULT,
                0,
                100_000_000,
            )?,
            mapping: mapping(args)?,
            log: args.log.clone().filter(|l| !l.trim().is_empty()),
        })
    }

    /// The AWS settings, or an error saying the command needs `--backend aws`.
    pub fn aws(&self) -> Option<&AwsSettings> {
        match &self.backend {
            Backend::Aws(aws) => Some(aws),
            Backend::Embedded { .. } => None,
        }
    }
}

fn aws_settings(args: &ConfigArgs) -> Result<AwsSettings, ConfigError> {
    const WHY: &str = "with the aws backend";
    let ttl = name!("--marker-ttl-secs", "TALLY_MARKER_TTL_SECS").number(
        &args.marker_ttl_secs,
        0u64,
        0,
        u64::from(u32::MAX),
    )?;
    let url = |n: Name, v: &Option<String>| -> Result<Option<String>, ConfigError> {
        match v.as_deref().map(str::trim) {
            None | Some("") => Ok(None),
            Some(u) if u.starts_with("http://") || u.starts_with("https://") => {
                Ok(Some(u.to_owned()))
            }
            Some(u) => Err(n.error(format!("{u:?} is not an http:// or https:// URL"))),
        }
    };
    Ok(AwsSettings {
        tables: AwsConfig {
            events_table: name!("--events-table", "TALLY_EVENTS_TABLE")
                .required(&args.events_table, WHY)?
                .to_owned(),
            balances_table: name!("--balances-table", "TALLY_BALANCES_TABLE")
                .required(&args.balances_table, WHY)?
                .to_owned(),
            quarantine_table: name!("--quarantine-table", "TALLY_QUARANTINE_TABLE")
                .required(&args.quarantine_table, WHY)?
                .to_owned(),
            marker_ttl_secs: (ttl > 0).then_some(ttl),
        },
        stream: name!("--stream", "TALLY_STREAM")
            .required(&args.stream, WHY)?
            .to_owned(),
        concurrency: name!("--concurrency", "TALLY_CONCURRENCY").number(
            &args.concurrency,
            crate::adapters::aws::dynamodb::CONCURRENCY_MAX,
            1,
            1_024,
        )?,
        region: args
            .region
            .as_deref()
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_owned),
        dynamodb_endpoint: url(
            name!("--dynamodb-endpoint", "TALLY_DYNAMODB_ENDPOINT"),
            &args.dynamodb_endpoint,
        )?,
        kinesis_endpoint: url(
            name!("--kinesis-endpoint", "TALLY_KINESIS_ENDPOINT"),
            &args.kinesis_endpoint,
        )?,
        backstop_delay: Duration::from_secs(
            name!("--backstop-delay-secs", "TALLY_BACKSTOP_DELAY_SECS").number(
                &args.backstop_delay_secs,
                crate::service::backstop::DELAY_SECS_DEFAULT,
                0,
                600,
            )?,
        ),
    })
}

fn policy(args: &ConfigArgs) -> Result<Policy, ConfigError> {
    let amount_max = name!("--amount-max", "TALLY_AMOUNT_MAX").number(
        &args.amount_max,
        AMOUNT_MAX_DEFAULT,
        1,
        i64::MAX,
    )?;
    let overdraft = name!("--overdraft-limit", "TALLY_OVERDRAFT_LIMIT").number(
        &args.overdraft_limit,
        0,
        0,
        i64::MAX,
    )?;
    // Both bounds are checked above; `Policy::new` agrees.
    Policy::new(amount_max, overdraft)
        .map_err(|e| name!("--amount-max", "TALLY_AMOUNT_MAX").error(e.to_string()))
}

fn mapping(args: &ConfigArgs) -> Result<Mapping, ConfigError> {
    let default = Mapping::default();
    Ok(Mapping {
        batch_size: name!("--batch-size", "TALLY_BATCH_SIZE").number(
            &args.batch_size,
            default.batch_size,
            1,
            BATCH_RECORDS_MAX,
        )?,
        window: Duration::from_millis(name!("--batch-window-ms", "TALLY_BATCH_WINDOW_MS").number(
            &args.batch_window_ms,
            u64::try_from(default.window.as_millis()).unwrap_or(u64::MAX),
            0,
            300_000,
        )?),
        retries_max: name!("--retries-max", "TALLY_RETRIES_MAX").number(
            &args.retries_max,
            default.retries_max,
            0,
            10_000,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn aws_args() -> ConfigArgs {
        ConfigArgs {
            backend: Some("aws".into()),
            events_table: Some("ev".into()),
            balances_table: Some("ba".into()),
            quarantine_table: Some("qu".into()),
            stream: Some("st".into()),
            ..ConfigArgs::default()
        }
    }

    #[test]
    fn nothing_given_is_the_embedded_backend_with_every_default() {
        let c = Config::build(&ConfigArgs::default(), Role::Cli).unwrap();
        assert_eq!(
            c.backend,
            Backend::Embedded {
                data_dir: "tally-data".into()
            }
        );
        assert_eq!(c.policy, Policy::default());
        assert_eq!(
            (c.buckets, c.shards, c.cache_entries),
            (BUCKETS_DEFAULT, SHARDS_DEFAULT, CACHE_ENTRIES_DEFAULT)
        );
        let d = Mapping::default();
        assert_eq!(
            (
                c.mapping.batch_size,
                c.mapping.window,
                c.mapping.retries_max
            ),
            (d.batch_size, d.window, d.retries_max)
        );
    }

    #[test]
    fn the_aws_backend_names_the_first_missing_resource() {
        let mut args = aws_args();
        args.balances_table = None;
        let e = Config::build(&args, Role::Cli).unwrap_err();
        assert_eq!(
            (e.flag, e.var),
            ("--balances-table", "TALLY_BALANCES_TABLE")
        );
        assert!(
            e.to_string()
                .contains("not set (required with the aws backend)"),
            "{e}"
        );
        args.balances_table = Some("  ".into());
        assert_eq!(
            Config::build(&args, Role::Cli).unwrap_err().var,
            "TALLY_BALANCES_TABLE"
        );
    }

    #[test]
    fn a_lambda_is_always_on_aws_whatever_the_backend_variable_says() {
        let mut args = aws_args();
        args.backend = Some("embedded".into());
        let c = Config::build(&args, Role::Lambda).unwrap();
        let aws = c.aws().unwrap();
        assert_eq!(aws.tables.events_table, "ev");
        assert_eq!(aws.stream, "st");
        assert_eq!(aws.tables.marker_ttl_secs, None);
    }

    #[test]
    fn policy_settings_reach_the_policy_and_bad_ones_name_their_variable() {
        let mut args = ConfigArgs {
            amount_max: Some("5_000".into()),
            overdraft_limit: Some("250".into()),
            ..ConfigArgs::default()
        };
        let c = Config::build(&args, Role::Cli).unwrap();
        assert_eq!(c.policy, Policy::new(5_000, 250).unwrap());
        for (bad, var) in [
            (("0", "1"), "TALLY_AMOUNT_MAX"),
            (("ten", "1"), "TALLY_AMOUNT_MAX"),
            (("10", "-1"), "TALLY_OVERDRAFT_LIMIT"),
            (("10", "99999999999999999999"), "TALLY_OVERDRAFT_LIMIT"),
        ] {
            args.amount_max = Some(bad.0.into());
            args.overdraft_limit = Some(bad.1.into());
            let e = Config::build(&args, Role::Cli).unwrap_err();
            assert_eq!(e.var, var, "{bad:?}: {e}");
        }
    }

    #[test]
    fn every_numeric_setting_is_bounded_and_named() {
        type Set = fn(&mut ConfigArgs, Option<String>);
        let settings: [(Set, &str); 9] = [
            (|a, v| a.concurrency = v, "TALLY_CONCURRENCY"),
            (|a, v| a.tip_cache_entries = v, "TALLY_TIP_CACHE_ENTRIES"),
            (|a, v| a.buckets = v, "TALLY_BUCKETS"),
            (|a, v| a.shards = v, "TALLY_SHARDS"),
            (|a, v| a.cache_entries = v, "TALLY_CACHE_ENTRIES"),
            (|a, v| a.batch_size = v, "TALLY_BATCH_SIZE"),
            (|a, v| a.batch_window_ms = v, "TALLY_BATCH_WINDOW_MS"),
            (|a, v| a.retries_max = v, "TALLY_RETRIES_MAX"),
            (|a, v| a.marker_ttl_secs = v, "TALLY_MARKER_TTL_SECS"),
        ];
        for (set, var) in settings {
            for bad in ["x", "-3", "1e3", "999999999999999999999"] {
                let mut args = aws_args();
                set(&mut args, Some(bad.into()));
                let e = Config::build(&args, Role::Cli).unwrap_err();
                assert_eq!(e.var, var, "{bad}: {e}");
            }
        }
        let mut args = aws_args();
        args.buckets = Some("0".into());
        assert_eq!(
            Config::build(&args, Role::Cli).unwrap_err().var,
            "TALLY_BUCKETS"
        );
        args.buckets = Some("64".into());
        args.batch_size = Some("10000".into());
        args.batch_window_ms = Some("1000".into());
        args.marker_ttl_secs = Some("86400".into());
        let c = Config::build(&args, Role::Cli).unwrap();
        assert_eq!(c.buckets, 64);
        assert_eq!(c.mapping.batch_size, 10_000);
        assert_eq!(c.mapping.window, Duration::from_secs(1));
        assert_eq!(c.aws().unwrap().tables.marker_ttl_secs, Some(86_400));
    }

    #[test]
    fn an_unknown_backend_or_a_bad_endpoint_is_refused_by_name() {
        let mut args = aws_args();
        args.backend = Some("dynamo".into());
        assert_eq!(
            Config::build(&args, Role::Cli).unwrap_err().var,
            "TALLY_BACKEND"
        );
        args.backend = Some("aws".into());
        args.dynamodb_endpoint = Some("127.0.0.1:8000".into());
        assert_eq!(
            Config::build(&args, Role::Cli).unwrap_err().var,
            "TALLY_DYNAMODB_ENDPOINT"
        );
        args.dynamodb_endpoint = Some("http://127.0.0.1:8000".into());
        assert_eq!(
            Config::build(&args, Role::Cli)
                .unwrap()
                .aws()
                .unwrap()
                .dynamodb_endpoint
                .as_deref(),
            Some("http://127.0.0.1:8000")
        );
    }
}
