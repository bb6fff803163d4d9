//! The `tally` command-line interface over the embedded backend. Errors name the input
//! and exit non-zero; `--json` prints exactly what the HTTP API returns.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tally::adapters::embedded::EmbeddedStore;
use tally::app::{Embedded, Settings};
use tally::codec::json::{BalanceView, EventView, PointInTimeView};
use tally::codec::rows::{Format, RowReader};
use tally::codec::time::parse_rfc3339;
use tally::domain::AccountId;
use tally::service::audit;
use tally::service::ingest::{IngestError, IngestSummary, Rejects, ingest};
use tally::service::query::QueryService;
use tally::workload::{GenSpec, generate};

/// `println!` that treats a closed stdout (`tally … | head`) as "the reader has seen
/// enough": exit quietly instead of panicking. Work done before printing is already durable.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Event-sourced ledger: ingest transactions, fold them into balances, verify them.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {
    /// Directory of the embedded database.
    #[arg(
        long,
        global = true,
        default_value = "tally-data",
        env = "TALLY_DATA_DIR"
    )]
    data_dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Serve the HTTP API (and project in the background) until Ctrl-C.
    Serve {
        #[arg(long, default_value = "127.0.0.1:3000", env = "TALLY_ADDR")]
        addr: String,
        /// `embedded` (local redb file) or `aws` (DynamoDB + Kinesis named by TALLY_* variables;
        /// AWS_ENDPOINT_URL_DYNAMODB / _KINESIS point at emulators).
        #[arg(long, default_value = "embedded", value_parser = ["embedded", "aws"])]
        backend: String,
        /// With `--backend aws`: create the tables and the stream if missing (emulators).
        #[arg(long)]
        create_resources: bool,
    },
    /// Book every row of a CSV or NDJSON file; print a summary and the resulting balances.
    Ingest {
        file: PathBuf,
        /// Where to write refused rows (CSV: line,txn_id,account,field,reason).
        #[arg(long, default_value = "rejects.csv")]
        rejects: PathBuf,
        /// Input format; by default from the extension, else from the content.
        #[arg(long, value_parser = ["csv", "ndjson"])]
        format: Option<String>,
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
    Replay,
    /// Re-fold every account and compare with its snapshot; exit 1 on any difference.
    Verify,
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
    let cli = Cli::parse();
    // The simulator's injected faults would make every service log; it reports by itself.
    let quiet = if matches!(cli.command, Cmd::Sim(_)) {
        "off"
    } else {
        "warn"
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("TALLY_LOG")
                .unwrap_or_else(|_| quiet.into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Cmd::Sim(args) = &cli.command {
        return tally::sim::main(args); // runs its own runtimes, one per seed
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start the runtime: {e}")),
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(message) => fail(message),
    }
}

fn fail(message: String) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::FAILURE
}

fn account(s: &str) -> Result<AccountId, String> {
    AccountId::new(s).map_err(|e| format!("account {s:?}: {e}"))
}

/// The data dir's store alone: for commands that only read (no catch-up, no stream).
fn open_store(dir: &Path) -> Result<EmbeddedStore, String> {
    EmbeddedStore::open(dir).map_err(|e| format!("data dir {}: {e}", dir.display()))
}

fn query(store: &EmbeddedStore) -> QueryService<EmbeddedStore, EmbeddedStore> {
    QueryService::new(store.clone(), store.clone())
}

fn print_verify(report: &audit::VerifyReport) {
    for d in &report.differences.first {
        say!(
            "DIFFERENT {}: stored {:?}, folded {:?}",
            d.account,
            d.stored,
            d.folded
        );
    }
    for l in &report.lagging.first {
        say!(
            "LAGGING {}: snapshot at version {}, events up to {}",
            l.account,
            l.snapshot_version,
            l.newest_version
        );
    }
    for b in &report.broken.first {
        say!("BROKEN {}: {}", b.account, b.reason);
    }
    say!(
        "verified {} accounts, {} events: {} differences, {} lagging snapshots, {} broken \
         event chains{}",
        report.accounts,
        report.events,
        report.differences.count,
        report.lagging.count,
        report.broken.count,
        if report.lagging.count > 0 {
            " (`tally replay` rebuilds snapshots from the events)"
        } else {
            ""
        }
    );
}

async fn start(dir: &Path) -> Result<Embedded, String> {
    Embedded::start(Some(dir), Settings::default())
        .await
        .map_err(|e| format!("data dir {}: {e}", dir.display()))
}

async fn run(cli: Cli) -> Result<ExitCode, String> {
    match cli.command {
        Cmd::Serve {
            addr,
            backend,
            create_resources,
        } => match backend.as_str() {
            "aws" => serve_aws(&addr, create_resources).await,
            _ => serve(&cli.data_dir, &addr).await,
        },
        Cmd::Ingest {
            file,
            rejects,
            format,
        } => run_ingest(&cli.data_dir, &file, &rejects, format.as_deref()).await,
        Cmd::Balance {
            account: name,
            at,
            json,
        } => {
            let id = account(&name)?;
            let store = open_store(&cli.data_dir)?;
            let query = query(&store);
            let out = match at {
                None => {
                    let s = query
                        .balance(&id)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or(format!("account {name} has no events"))?;
                    let v = BalanceView::new(&name, &s);
                    if json {
                        to_json(&v)?
                    } else {
                        format!(
                            "{name}: balance {} (version {}, {} {})",
                            v.balance,
                            v.version,
                            v.month.unwrap_or_default(),
                            v.month_balance
                        )
                    }
                }
                Some(at) => {
                    let t = parse_rfc3339(&at).map_err(|e| format!("--at: {e}"))?;
                    let p = query
                        .balance_at(&id, t)
                        .await
                        .map_err(|e| e.to_string())?
                        .ok_or(format!("account {name} has no events"))?;
                    let v = PointInTimeView::new(&name, p.at, p.balance, p.events);
                    if json {
                        to_json(&v)?
                    } else {
                        format!(
                            "{name}: balance {} at {} ({} events)",
                            v.balance, v.at, v.events
                        )
                    }
                }
            };
            say!("{out}");
            Ok(ExitCode::SUCCESS)
        }
        Cmd::History {
            account: name,
            from,
            limit,
            json,
        } => {
            let id = account(&name)?;
            let store = open_store(&cli.data_dir)?;
            let events = query(&store)
                .history(&id, from, limit)
                .await
                .map_err(|e| e.to_string())?;
            let views: Vec<EventView> = events.iter().map(EventView::new).collect();
            if json {
                say!("{}", to_json(&views)?);
            } else {
                for v in &views {
                    say!(
                        "{:>6} {} {:<10} {:>12} balance {:>12}  {}{}",
                        v.version,
                        v.occurred_at,
                        v.kind,
                        v.amount,
                        v.balance,
                        v.txn_id,
                        v.reverses
                            .as_ref()
                            .map(|r| format!(" (reverses {r})"))
                            .unwrap_or_default()
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Replay => {
            let app = start(&cli.data_dir).await?;
            let n = audit::replay(&app.store, &app.store)
                .await
                .map_err(|e| e.to_string())?;
            say!("replayed {n} accounts");
            app.shutdown().await;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Verify => {
            // Reads only: no catch-up first, or it would repair what it should report.
            let store = open_store(&cli.data_dir)?;
            let report = audit::verify(&store, &store)
                .await
                .map_err(|e| e.to_string())?;
            print_verify(&report);
            Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Cmd::Sim(_) => unreachable!("handled before the runtime starts"),
        Cmd::Gen {
            accounts,
            transactions,
            zipf,
            seed,
            out,
        } => {
            if accounts == 0 {
                return Err("--accounts must be at least 1".into());
            }
            let spec = GenSpec {
                accounts,
                transactions,
                zipf,
                seed,
            };
            let result = match &out {
                Some(path) => std::fs::File::create(path)
                    .and_then(|f| generate(spec, f))
                    .map_err(|e| format!("{}: {e}", path.display())),
                None => generate(spec, std::io::stdout().lock()).map_err(|e| e.to_string()),
            };
            result.map(|()| ExitCode::SUCCESS)
        }
    }
}

async fn serve(data_dir: &Path, addr: &str) -> Result<ExitCode, String> {
    let app = start(data_dir).await?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--addr {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "tally serving http://{local} (data dir {}); Ctrl-C stops",
        data_dir.display()
    );
    axum::serve(listener, app.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    app.shutdown().await;
    eprintln!("tally stopped");
    Ok(ExitCode::SUCCESS)
}

async fn serve_aws(addr: &str, create_resources: bool) -> Result<ExitCode, String> {
    use std::sync::Arc;
    use tally::adapters::aws::create_stream;
    use tally::adapters::aws::poller::spawn_poller;
    use tally::adapters::embedded::stream::Mapping;

    // The same wiring the Lambda functions use, plus a poller playing the event source mapping.
    let app = tally::lambda::AwsApp::from_env().await?;
    if create_resources {
        app.store
            .create_tables()
            .await
            .map_err(|e| format!("creating tables: {e}"))?;
        create_stream(&app.kinesis, &app.stream, 2).await?;
    }
    let poller = spawn_poller(
        app.kinesis.clone(),
        app.stream.clone(),
        Arc::new(app.projector()),
        Mapping::default(),
    );
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("--addr {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    eprintln!(
        "tally serving http://{local} (backend aws, stream {}); Ctrl-C stops",
        app.stream
    );
    axum::serve(listener, app.router())
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await
        .map_err(|e| e.to_string())?;
    poller.stop().await;
    eprintln!("tally stopped");
    Ok(ExitCode::SUCCESS)
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

async fn run_ingest(
    data_dir: &Path,
    file: &Path,
    rejects_path: &Path,
    format: Option<&str>,
) -> Result<ExitCode, String> {
    let input = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let format = match format {
        Some("ndjson") => Format::Ndjson,
        Some(_) => Format::Csv,
        None => match Format::from_path(file) {
            Some(f) => f,
            None => {
                let mut head = [0u8; 64];
                let n = std::io::Read::read(
                    &mut std::fs::File::open(file).map_err(|e| e.to_string())?,
                    &mut head,
                )
                .unwrap_or(0);
                Format::sniff(&head[..n])
            }
        },
    };
    let rows = RowReader::new(std::io::BufReader::with_capacity(1 << 20, input), format)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let sink = std::fs::File::create(rejects_path)
        .map_err(|e| format!("{}: {e}", rejects_path.display()))?;
    let mut rejects = Rejects::new(std::io::BufWriter::new(sink))
        .map_err(|e| format!("{}: {e}", rejects_path.display()))?;
    let app = start(data_dir).await?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_message(format!("ingesting {} ({size} bytes)", file.display()));
        bar
    });
    let result = ingest(rows, &app.commands, &mut rejects, |rows| {
        if let Some(bar) = &bar {
            bar.set_position(rows);
            bar.tick();
        }
    })
    .await;
    app.drain().await;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let flushed = std::io::Write::flush(&mut rejects.into_inner())
        .map_err(|e| format!("{}: {e}", rejects_path.display()));
    let summary = match result {
        Ok(summary) => summary,
        Err(IngestError::Input(e)) => return Err(format!("{}: {e}", file.display())),
        Err(IngestError::Stopped {
            summary,
            line,
            cause,
        }) => {
            // Say what was booked before saying why it stopped.
            print_summary(file, &summary, rejects_path);
            app.shutdown().await;
            return Err(format!(
                "{}: stopped at line {line}: {cause}; {} rows read have no outcome yet \
                 (rows booked stay booked; running the same file again is safe)",
                file.display(),
                summary.unprocessed
            ));
        }
    };
    print_summary(file, &summary, rejects_path);
    flushed?;
    print_balances(&app).await?;
    app.shutdown().await;
    Ok(ExitCode::SUCCESS)
}

fn print_summary(file: &Path, s: &IngestSummary, rejects_path: &Path) {
    say!(
        "{}: {} rows, {} accepted, {} duplicates, {} refused, {} replayed refusals, {} reused \
         ids, {} invalid in {:.2}s ({:.0} rows/s)",
        file.display(),
        s.rows,
        s.accepted,
        s.duplicates,
        s.refused,
        s.replayed_refusals,
        s.reused,
        s.invalid,
        s.elapsed.as_secs_f64(),
        s.rows_per_second()
    );
    if s.refused + s.replayed_refusals + s.reused + s.invalid > 0 {
        say!("rows not booked: {}", rejects_path.display());
    }
}

/// The first balances (account order), so a small file shows its whole result.
async fn print_balances(app: &Embedded) -> Result<(), String> {
    use tally::ports::EventStore;
    const SHOWN_MAX: usize = 20;
    let accounts = app
        .store
        .accounts(None, SHOWN_MAX + 1)
        .await
        .map_err(|e| e.to_string())?;
    say!(
        "{:<24} {:>14} {:>8} {:>14}",
        "account",
        "balance",
        "month",
        "month balance"
    );
    for (id, _) in accounts.iter().take(SHOWN_MAX) {
        if let Some(s) = app.query.balance(id).await.map_err(|e| e.to_string())? {
            let month = s.month.map(|m| m.to_string()).unwrap_or_default();
            say!(
                "{:<24} {:>14} {:>8} {:>14}",
                id.as_str(),
                s.balance.minor(),
                month,
                s.month_balance
            );
        }
    }
    if accounts.len() > SHOWN_MAX {
        say!("… more accounts: `tally balance ACCOUNT`");
    }
    Ok(())
}
