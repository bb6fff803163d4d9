//! `tally ingest FILE` on either backend: streams the file (constant memory, whatever its
//! size) through the command service, writes the rejects file, shows a progress bar on a
//! terminal, and prints the summary and the file's first balances. A first Ctrl-C stops
//! between two windows (every row read has its outcome; the message names the line to
//! resume at, and rerunning the whole file is safe); a second one aborts.
//!
//! On AWS the projection happens elsewhere (the projector Lambda, or `tally serve --backend
//! aws` locally); `--wait-projected` waits until the Balances table holds every event the
//! file booked. Balances printed are always current: the query side completes a lagging
//! snapshot from the event store.

use std::collections::{BTreeSet, HashMap};
use std::io::{IsTerminal, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::codec::rows::{Format, RowReader};
use crate::domain::AccountId;
use crate::ports::{EventPublisher, EventStore, SnapshotStore};
use crate::service::command::CommandService;
use crate::service::ingest::{
    IngestError, IngestSummary, ReadAhead, Rejects, StopCause, ingest_with,
};
use crate::service::query::QueryService;

/// Balances printed after an ingest: the file's first accounts in account order.
pub const SHOWN_MAX: usize = 20;

/// Accounts whose snapshots one `get_many` checks while waiting for the projector.
const WAIT_CHUNK: usize = 100;

/// Pause between two checks of the Balances table while waiting.
const WAIT_POLL: Duration = Duration::from_millis(100);

/// What the user asked for.
#[derive(Debug, Clone)]
pub struct IngestArgs {
    pub file: PathBuf,
    pub rejects: PathBuf,
    /// `csv` or `ndjson`; else from the extension, else from the content.
    pub format: Option<String>,
    /// Wait at most this long, after booking, until every booked event is projected.
    pub wait_projected: Option<Duration>,
    /// Rows per window (see `service::ingest::INGEST_WINDOW_ROWS`).
    pub window_rows: usize,
}

/// Counts the bytes the row reader has consumed, for the progress bar.
struct Counted<R> {
    inner: R,
    bytes: Arc<AtomicU64>,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn format_of(file: &Path, given: Option<&str>) -> Result<Format, String> {
    Ok(match given {
        Some("ndjson") => Format::Ndjson,
        Some("csv") => Format::Csv,
        Some(other) => return Err(format!("--format {other:?}: csv or ndjson")),
        None => match Format::from_path(file) {
            Some(f) => f,
            None => {
                let mut head = [0u8; 64];
                let n = std::fs::File::open(file)
                    .and_then(|mut f| f.read(&mut head))
                    .map_err(|e| format!("{}: {e}", file.display()))?;
                Format::sniff(&head[..n])
            }
        },
    })
}

/// A byte progress bar on a terminal (stderr), nothing otherwise.
fn progress_bar(file: &Path, size: u64) -> Option<indicatif::ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} {bar:30} {bytes}/{total_bytes} {elapsed} {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{}", file.display()));
    bar.enable_steady_tick(Duration::from_millis(200));
    Some(bar)
}

/// First Ctrl-C: ask the ingest to stop after its window. Second: abort.
fn on_interrupt(stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_err() {
            return;
        }
        stop.store(true, Ordering::Release);
        eprintln!(
            "\ninterrupted: finishing the rows already sent, then stopping (Ctrl-C again aborts; \
             rerunning the file is safe either way)"
        );
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    })
}

/// Runs the ingest; `settle` runs after the last window and before the balances are printed
/// (the embedded backend drains its stream there). `query` reads the balances shown.
pub async fn run<E, P, S>(
    args: &IngestArgs,
    commands: &CommandService<E, P>,
    query: &QueryService<E, S>,
    settle: impl AsyncFnOnce(),
) -> Result<ExitCode, String>
where
    E: EventStore,
    P: EventPublisher,
    S: SnapshotStore + Clone,
{
    let file = &args.file;
    let input = std::fs::File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let size = input.metadata().map(|m| m.len()).unwrap_or(0);
    let format = format_of(file, args.format.as_deref())?;
    let bytes = Arc::new(AtomicU64::new(0));
    let counted = Counted {
        inner: input,
        bytes: bytes.clone(),
    };
    let rows = RowReader::new(std::io::BufReader::with_capacity(1 << 20, counted), format)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let sink = std::fs::File::create(&args.rejects)
        .map_err(|e| format!("{}: {e}", args.rejects.display()))?;
    let mut rejects = Rejects::new(std::io::BufWriter::new(sink))
        .map_err(|e| format!("{}: {e}", args.rejects.display()))?;
    let bar = progress_bar(file, size);
    let stop = Arc::new(AtomicBool::new(false));
    let interrupt = on_interrupt(stop.clone());
    let mut shown: BTreeSet<AccountId> = BTreeSet::new();
    let mut booked: HashMap<AccountId, u64> = HashMap::new();
    let follow = args.wait_projected.is_some();
    let result = ingest_with(
        ReadAhead::Thread,
        args.window_rows,
        rows,
        commands,
        &mut rejects,
        |p| {
            for (account, version) in p.accounts {
                remember(&mut shown, account);
                if follow && *version > 0 {
                    let v = booked.entry(account.clone()).or_default();
                    *v = (*v).max(*version);
                }
            }
            if let Some(bar) = &bar {
                bar.set_position(bytes.load(Ordering::Relaxed));
                bar.set_message(format!(
                    "{} rows, {} accepted",
                    p.summary.rows, p.summary.accepted
                ));
            }
        },
        || stop.load(Ordering::Acquire),
    )
    .await;
    interrupt.abort();
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    let flushed = std::io::Write::flush(&mut rejects.into_inner())
        .map_err(|e| format!("{}: {e}", args.rejects.display()));
    let summary = match result {
        Ok(summary) => summary,
        Err(IngestError::Input(e)) => return Err(format!("{}: {e}", file.display())),
        Err(IngestError::Stopped {
            summary,
            line,
            cause,
        }) => {
            let what = match cause {
                StopCause::Interrupted => format!("interrupted before line {line}"),
                cause => format!("stopped at line {line}: {cause}"),
            };
            // Say what was booked before saying why it stopped; the summary itself says it
            // is partial, for whoever reads only stdout.
            print_summary(file, &summary, &args.rejects, Some(&what));
            settle().await;
            return Err(format!(
                "{}: {what}; {} rows read have no outcome yet (rows booked stay booked; running \
                 the same file again is safe)",
                file.display(),
                summary.unprocessed
            ));
        }
    };
    print_summary(file, &summary, &args.rejects, None);
    flushed?;
    settle().await;
    if let Some(timeout) = args.wait_projected {
        wait_projected(query, booked, timeout).await?;
    }
    print_balances(query, &shown).await?;
    Ok(ExitCode::SUCCESS)
}

/// Keeps the [`SHOWN_MAX`] smallest account ids seen.
fn remember(shown: &mut BTreeSet<AccountId>, account: &AccountId) {
    if shown.len() < SHOWN_MAX + 1 || shown.last().is_some_and(|last| account < last) {
        shown.insert(account.clone());
        if shown.len() > SHOWN_MAX + 1 {
            shown.pop_last();
        }
    }
}

/// The summary line; `stopped` (why the file was not read to its end) ends it, so a
/// partial run never reads like a whole one.
fn print_summary(file: &Path, s: &IngestSummary, rejects_path: &Path, stopped: Option<&str>) {
    say!(
        "{}: {} rows, {} accepted, {} duplicates, {} refused, {} replayed refusals, {} reused \
         ids, {} invalid in {:.2}s ({:.0} rows/s){}",
        file.display(),
        s.rows,
        s.accepted,
        s.duplicates,
        s.refused,
        s.replayed_refusals,
        s.reused,
        s.invalid,
        s.elapsed.as_secs_f64(),
        s.rows_per_second(),
        stopped
            .map(|why| format!("; STOPPED: {why}"))
            .unwrap_or_default()
    );
    if s.refused + s.replayed_refusals + s.reused + s.invalid > 0 {
        say!("rows not booked: {}", rejects_path.display());
    }
}

/// Waits until every account's snapshot reaches the version the file booked; an error after
/// `timeout`, naming how many are still behind (the events are booked either way).
async fn wait_projected<E: EventStore, S: SnapshotStore + Clone>(
    query: &QueryService<E, S>,
    booked: HashMap<AccountId, u64>,
    timeout: Duration,
) -> Result<(), String> {
    let started = Instant::now();
    let total = booked.len();
    let mut behind: Vec<(AccountId, u64)> = booked.into_iter().collect();
    loop {
        let mut still = Vec::new();
        for chunk in behind.chunks(WAIT_CHUNK) {
            let names = chunk.iter().map(|(a, _)| a.to_string()).collect();
            let found = query
                .snapshots()
                .get_many(names)
                .await
                .map_err(|e| e.to_string())?;
            still.extend(
                chunk
                    .iter()
                    .zip(found)
                    .filter(|((_, v), s)| s.is_none_or(|s| s.version < *v))
                    .map(|(a, _)| a.clone()),
            );
        }
        behind = still;
        if behind.is_empty() {
            say!(
                "projected: every snapshot of the {total} accounts booked is current after {:.2}s",
                started.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(format!(
                "--wait-projected: {} of {total} accounts' snapshots are still behind after \
                 {:.0}s (their events are booked; is a projector running? locally: `tally \
                 serve --backend aws`)",
                behind.len(),
                timeout.as_secs_f64()
            ));
        }
        tokio::time::sleep(WAIT_POLL).await;
    }
}

/// The file's first balances (account order), so a small file shows its whole result.
async fn print_balances<E: EventStore, S: SnapshotStore>(
    query: &QueryService<E, S>,
    shown: &BTreeSet<AccountId>,
) -> Result<(), String> {
    say!(
        "{:<24} {:>14} {:>8} {:>14}",
        "account",
        "balance",
        "month",
        "month balance"
    );
    for id in shown.iter().take(SHOWN_MAX) {
        if let Some(s) = query.balance(id).await.map_err(|e| e.to_string())? {
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
    if shown.len() > SHOWN_MAX {
        say!("… more accounts: `tally balance ACCOUNT`");
    }
    Ok(())
}
