//! The `tally` command-line interface: parses flags, builds the one configuration
//! ([`tally::config`]), opens the backend it names (`--backend embedded|aws`) and runs the
//! command ([`tally::cli`] holds the data commands, written once for both backends). Errors
//! name the input and exit non-zero; `--json` prints exactly what the HTTP API returns.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use tally::adapters::embedded::EmbeddedStore;
use tally::app::{Embedded, Settings};
use tally::cli::ingest::IngestArgs;
use tally::config::{AwsSettings, Backend, Config, ConfigArgs, Role};
use tally::lambda::AwsApp;
use tally::service::audit;
use tally::service::query::QueryService;
use tally::workload::{GenSpec, generate};

/// Event-sourced ledger: ingest transactions, fold them into balances, verify them.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Cmd,
}

/// Segments of the parallel scan `verify` and `replay` run on AWS.
const SCAN_SEGMENTS_DEFAULT: u32 = 8;

#[derive(Debug, Subcommand)]
enum QuarantineCmd {
    /// One line per record: shard, sequence number, size, error.
    List {
        /// Also write each record's bytes to DIR/<shard>_<sequence number>.bin.
        #[arg(long, value_name = "DIR")]
        dump: Option<PathBuf>,
    },
    /// Feed every record that now decodes through the projector and remove it once
    /// projected; exit 1 if any stays.
    Redrive,
}

#[derive(Debug, Subcommand)]
enum ParkedCmd {
    /// One line per parked account: account, first failing version, where it was met, error.
    List,
    /// Project each parked account (every one if none is named) from the event store and
    /// unpark it; one whose events still do not fold stays parked. Exit 1 if any stays.
    Redrive {
        /// Accounts to redrive (default: every parked account).
        accounts: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the HTTP API (and project in the background) until Ctrl-C. On AWS, pollers
    /// play the projector's and the backstop's event source mappings, as the Lambdas would.
    Serve {
        #[arg(long, default_value = "127.0.0.1:3000", env = "TALLY_ADDR")]
        addr: String,
        /// With `--backend aws`: create the tables and the stream if missing (emulators).
        #[arg(long)]
        create_resources: bool,
    },
    /// Book every row of a CSV or NDJSON file; print a summary and the file's balances.
    Ingest {
        file: PathBuf,
        /// Where to write refused rows (CSV: line,txn_id,account,outcome,field,reason).
        #[arg(long, default_value = "rejects.csv")]
        rejects: PathBuf,
        /// Input format; by default from the extension, else from the content.
        #[arg(long, value_parser = ["csv", "ndjson"])]
        format: Option<String>,
        /// Then wait (at most SECS, default 120) until the projector has folded every booked
        /// event into the balances (AWS: the projector Lambda, or `tally serve --backend aws`).
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "120")]
        wait_projected: Option<u64>,
    },
    /// Print an account's balance, or its balance as of a business time.
    Balance {
        account: String,
        /// RFC 3339 business time, e.g. 2026-11-15T00:00:00Z.
        #[arg(long)]
        at: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Print an account's events.
    History {
        account: String,
        #[arg(long, default_value_t = 1)]
        from: u64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild every snapshot from the event store.
    Replay {
        /// Parallel scan segments (aws).
        #[arg(long, default_value_t = SCAN_SEGMENTS_DEFAULT)]
        segments: u32,
    },
    /// Re-fold every account and compare with its snapshot; exit 1 on any difference.
    /// Reads only: reports differences and lagging snapshots, repairs nothing.
    Verify {
        /// Parallel scan segments (aws).
        #[arg(long, default_value_t = SCAN_SEGMENTS_DEFAULT)]
        segments: u32,
    },
    /// List quarantined stream records, or redrive them through the projector.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineCmd,
    },
    /// List accounts parked because their events do not fold, or redrive them from the
    /// event store.
    Parked {
        #[command(subcommand)]
        action: ParkedCmd,
    },
    /// Run the deterministic simulator: seeded workloads, faults and interleavings against
    /// the real services, checked against the reference model (see README, "How tally is
    /// tested").
    Sim(tally::sim::SimArgs),
    /// Write a realistic workload as bulk CSV.
    Gen {
        #[arg(long)]
        accounts: usize,
        #[arg(long)]
        transactions: usize,
        /// Zipf exponent of the account mix (e.g. 1.0); uniform if absent.
        #[arg(long)]
        zipf: Option<f64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file; standard output if absent.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    tally::allocator::keep_freed_memory();
    let cli = Cli::parse();
    if let Cmd::Sim(args) = &cli.command {
        // The simulator's injected faults would make every service log; it reports by
        // itself, and needs no backend (nor a valid backend configuration).
        let log = Config::build(&cli.config, Role::Cli)
            .ok()
            .and_then(|c| c.log)
            .unwrap_or_else(|| "off".into());
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(log))
            .with_writer(std::io::stderr)
            .init();
        return tally::sim::main(args); // runs its own runtimes, one per seed
    }
    let config = match Config::build(&cli.config, Role::Cli) {
        Ok(config) => config,
        Err(e) => return fail(e.to_string()),
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            config.log.as_deref().unwrap_or("warn"),
        ))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    let result = runtime.block_on(async {
        match (&config.backend, cli.command) {
            (
                _,
                Cmd::Gen {
                    accounts,
                    transactions,
                    zipf,
                    seed,
                    out,
                },
            ) => gen_file(accounts, transactions, zipf, seed, out.as_deref()),
            (Backend::Embedded { data_dir }, command) => embedded(command, &config, data_dir).await,
            (Backend::Aws(aws), command) => on_aws(command, &config, aws).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(message) => fail(message),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn gen_file(
    accounts: usize,
    transactions: usize,
    zipf: Option<f64>,
    seed: u64,
    out: Option<&Path>,
) -> Result<ExitCode, String> {
    if accounts == 0 {
        return Err("--accounts must be at least 1".into());
    }
    let spec = GenSpec {
        accounts,
        transactions,
        zipf,
        seed,
    };
    match out {
        Some(path) => std::fs::File::create(path)
            .and_then(|f| generate(spec, f))
            .map_err(|e| format!("{}: {e}", path.display())),
        None => generate(spec, std::io::stdout().lock()).map_err(|e| e.to_string()),
    }
    .map(|()| ExitCode::SUCCESS)
}

fn ingest_args(
    file: PathBuf,
    rejects: PathBuf,
    format: Option<String>,
    wait_projected: Option<u64>,
) -> IngestArgs {
    IngestArgs {
        file,
        rejects,
        format,
        wait_projected: wait_projected.map(Duration::from_secs),
        window_rows: tally::service::ingest::INGEST_WINDOW_ROWS,
    }
}

/// The data dir's store alone: for commands that only read (no catch-up, no stream).
fn open_store(dir: &Path) -> Result<EmbeddedStore, String> {
    existing(dir)?;
    EmbeddedStore::open(dir).map_err(|e| format!("data dir {}: {e}", dir.display()))
}

/// Commands other than `ingest` and `serve` work on data that exists: a mistyped data dir
/// must be an error, not a new empty store that reports nothing wrong.
fn existing(dir: &Path) -> Result<(), String> {
    if EmbeddedStore::exists(dir) {
        return Ok(());
    }
    if dir.exists() && !dir.is_dir() {
        return Err(format!(
            "data dir {} is a file, not a directory. Check --data-dir / TALLY_DATA_DIR",
            dir.display()
        ));
    }
    Err(format!(
        "data dir {}: no tally data there (no tally.redb); `tally ingest` or `tally serve` \
         creates it. Check --data-dir / TALLY_DATA_DIR",
        dir.display()
    ))
}

/// The whole embedded app on data that must exist already (see [`existing`]).
async fn start_existing(dir: &Path, config: &Config) -> Result<Embedded, String> {
    existing(dir)?;
    start(dir, config).await
}

async fn start(dir: &Path, config: &Config) -> Result<Embedded, String> {
    Embedded::start(Some(dir), Settings::from_config(config))
        .await
        .map_err(|e| format!("data dir {}: {e}", dir.display()))
}

/// Every command on the embedded backend.
async fn embedded(cmd: Cmd, config: &Config, dir: &Path) -> Result<ExitCode, String> {
    let reader = || open_store(dir).map(|s| QueryService::new(s.clone(), s));
    match cmd {
        Cmd::Serve { addr, .. } => {
            let app = start(dir, config).await?;
            let what = format!("data dir {}", dir.display());
            let served = serve(&addr, app.router(), &what).await;
            app.shutdown().await;
            served?;
            eprintln!("tally stopped");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Ingest {
            file,
            rejects,
            format,
            wait_projected,
        } => {
            let app = start(dir, config).await?;
            let args = ingest_args(file, rejects, format, wait_projected);
            let result = tally::cli::ingest::run(&args, &app.commands, &app.query, async || {
                app.drain().await
            })
            .await;
            app.shutdown().await;
            result
        }
        Cmd::Balance { account, at, json } => {
            tally::cli::balance(&reader()?, &account, at.as_deref(), json).await
        }
        Cmd::History {
            account,
            from,
            limit,
            json,
        } => tally::cli::history(&reader()?, &account, from, limit, json).await,
        Cmd::Replay { .. } => {
            let app = start_existing(dir, config).await?;
            let n = audit::replay(&app.store, &app.store)
                .await
                .map_err(|e| e.to_string())?;
            app.shutdown().await;
            Ok(tally::cli::print_replay(&n))
        }
        Cmd::Quarantine {
            action: QuarantineCmd::List { dump },
        } => tally::cli::quarantine::list(&open_store(dir)?, dump.as_deref()).await,
        Cmd::Parked {
            action: ParkedCmd::List,
        } => tally::cli::quarantine::parked_list(&open_store(dir)?).await,
        Cmd::Parked {
            action: ParkedCmd::Redrive { accounts },
        } => {
            let app = start_existing(dir, config).await?;
            let result =
                tally::cli::quarantine::parked_redrive(&app.projector, &app.store, &accounts).await;
            app.shutdown().await;
            result
        }
        Cmd::Quarantine {
            action: QuarantineCmd::Redrive,
        } => {
            let app = start_existing(dir, config).await?;
            let result = tally::cli::quarantine::redrive(&app.projector, &app.store).await;
            app.shutdown().await;
            result
        }
        Cmd::Verify { .. } => {
            // Reads only: no catch-up first, or it would repair what it should report.
            let store = open_store(dir)?;
            let report = audit::verify(&store, &store)
                .await
                .map_err(|e| e.to_string())?;
            Ok(tally::cli::print_verify(&report))
        }
        Cmd::Sim(_) => unreachable!("handled before the runtime starts"),
        Cmd::Gen { .. } => unreachable!("gen needs no backend"),
    }
}

/// Every command on DynamoDB and Kinesis.
async fn on_aws(cmd: Cmd, config: &Config, aws: &AwsSettings) -> Result<ExitCode, String> {
    let app = AwsApp::connect(config, aws).await;
    match cmd {
        Cmd::Serve {
            addr,
            create_resources,
        } => serve_aws(&app, config, aws, &addr, create_resources).await,
        Cmd::Ingest {
            file,
            rejects,
            format,
            wait_projected,
        } => {
            let args = IngestArgs {
                // A window on AWS takes about a minute: Ctrl-C stops at the next one.
                window_rows: tally::service::ingest::AWS_INGEST_WINDOW_ROWS,
                ..ingest_args(file, rejects, format, wait_projected)
            };
            tally::cli::ingest::run(&args, &app.commands(), &app.query(), async || {}).await
        }
        Cmd::Balance { account, at, json } => {
            tally::cli::balance(&app.query(), &account, at.as_deref(), json).await
        }
        Cmd::History {
            account,
            from,
            limit,
            json,
        } => tally::cli::history(&app.query(), &account, from, limit, json).await,
        Cmd::Replay { segments } => {
            let accounts = app
                .store
                .scan_accounts(segments)
                .await
                .map_err(|e| e.to_string())?;
            let n = audit::replay_listed(&app.store, &app.store, &accounts)
                .await
                .map_err(|e| e.to_string())?;
            Ok(tally::cli::print_replay(&n))
        }
        Cmd::Quarantine {
            action: QuarantineCmd::List { dump },
        } => tally::cli::quarantine::list(&app.store, dump.as_deref()).await,
        Cmd::Quarantine {
            action: QuarantineCmd::Redrive,
        } => tally::cli::quarantine::redrive(&app.projector(), &app.store).await,
        Cmd::Parked {
            action: ParkedCmd::List,
        } => tally::cli::quarantine::parked_list(&app.store).await,
        Cmd::Parked {
            action: ParkedCmd::Redrive { accounts },
        } => tally::cli::quarantine::parked_redrive(&app.projector(), &app.store, &accounts).await,
        Cmd::Verify { segments } => {
            let accounts = app
                .store
                .scan_accounts(segments)
                .await
                .map_err(|e| e.to_string())?;
            let report = audit::verify_listed(&app.store, &app.store, &accounts)
                .await
                .map_err(|e| e.to_string())?;
            Ok(tally::cli::print_verify(&report))
        }
        Cmd::Sim(_) => unreachable!("handled before the runtime starts"),
        Cmd::Gen { .. } => unreachable!("gen needs no backend"),
    }
}

/// Serves `router` on `addr` until Ctrl-C.
async fn serve(addr: &str, router: axum::Router, what: &str) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--addr {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!("tally serving http://{local} ({what}); Ctrl-C stops");
    axum::serve(listener, router)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())
}

async fn serve_aws(
    app: &AwsApp,
    config: &Config,
    aws: &AwsSettings,
    addr: &str,
    create_resources: bool,
) -> Result<ExitCode, String> {
    use std::sync::Arc;
    use tally::adapters::aws::create_stream;
    use tally::adapters::aws::poller::spawn_poller;
    use tally::adapters::aws::streams::spawn_stream_backstop;
    use tally::adapters::aws::{clients, streams_client};

    if create_resources {
        app.store
            .create_tables()
            .await
            .map_err(|e| format!("creating tables: {e}"))?;
        let shards = i32::try_from(config.shards).unwrap_or(i32::MAX);
        create_stream(&app.kinesis, &app.stream, shards).await?;
    }
    // The same wiring the Lambda functions use, plus pollers playing their event source
    // mappings: Kinesis to the projector, the Events table's stream to the backstop.
    let poller = spawn_poller(
        app.kinesis.clone(),
        app.stream.clone(),
        Arc::new(app.projector()),
        config.mapping,
    );
    let backstop = spawn_stream_backstop(
        clients(aws).await.0,
        streams_client(aws).await,
        aws.tables.events_table.clone(),
        Arc::new(app.backstop()),
    );
    let what = format!(
        "backend aws, stream {}, backstop after {} s",
        app.stream,
        aws.backstop_delay.as_secs()
    );
    let served = serve(addr, app.router(), &what).await;
    backstop.stop().await;
    poller.stop().await;
    served?;
    eprintln!("tally stopped");
    Ok(ExitCode::SUCCESS)
}
