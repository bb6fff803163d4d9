//! Bulk ingestion: stream rows (constant memory), validate each, group a window of rows by
//! account, and run them through the command service in per-account chunks, all accounts
//! of a window in one store call. Commands of one account keep file order. Every row that is
//! not booked — invalid, refused, a replayed refusal, a reused id — goes to the rejects sink
//! with its line number, outcome and reason.
//!
//! Must never: stop without saying which rows have outcomes. Either nothing is booked and the
//! error says why (an unreadable header), or every row read is accounted for: booked,
//! duplicate, refused, … or `unprocessed` (after a backend failure; rerunning is safe).

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::codec::rows::{Row, RowError, RowReader};
use crate::domain::{AccountId, Event, describe_reuse};
use crate::ports::{EventPublisher, EventStore};
use crate::service::command::{AccountChunk, CommandError, CommandOutcome, CommandService};

/// Rows read before a window is grouped and submitted: bounds memory, and is large enough
/// that one store transaction carries many accounts. Each slice's commit rewrites the
/// directory and tip leaves of its key range whatever its size, so fewer, larger windows
/// cost less per row: 131,072 rows ingest ~1.25x as fast as 65,536 for ~50 MB more memory.
/// 262,144 was faster still on many accounts but slower on one hot account (its rows stay
/// in one slice) and ~250 MB heavier (BENCHMARKS.md).
pub const INGEST_WINDOW_ROWS: usize = 131_072;

/// Rows reserved up front for a window (it grows past them as rows come).
const ROWS_RESERVED_MAX: usize = 8_192;

/// Rows per window of `tally ingest --backend aws`: a window there takes about a minute,
/// and an interrupted ingest stops at the end of one.
pub const AWS_INGEST_WINDOW_ROWS: usize = 65_536;

/// Account-disjoint slices a window is booked in, concurrently: one is decided while the
/// store writes another (see [`CommandService::submit_chunks_spread`]).
pub const INGEST_PARTS: usize = 4;

/// Fewest rows worth a slice of their own: a smaller window (an HTTP bulk body of 1,000
/// rows) goes in one call, which the server merges with the bodies arriving beside it.
pub const PART_ROWS_MIN: usize = 4_096;

/// The slices `rows` commands are booked in: one per [`PART_ROWS_MIN`], at most
/// [`INGEST_PARTS`].
pub fn parts_for(rows: usize) -> usize {
    (rows / PART_ROWS_MIN).clamp(1, INGEST_PARTS)
}

/// What an ingestion did, row by row.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestSummary {
    /// Rows read (valid or not).
    pub rows: u64,
    /// Newly booked.
    pub accepted: u64,
    /// Txn ids already booked with the same request (a file sent twice, overlapping files).
    pub duplicates: u64,
    /// Newly refused by the rules (insufficient funds, unknown reversal target, …).
    pub refused: u64,
    /// Txn ids refused before with the same request: the same refusal again.
    pub replayed_refusals: u64,
    /// Txn ids already used for a different request: refused, nothing booked.
    pub reused: u64,
    /// Rows that are not valid transactions (bad field, missing value, amount out of range).
    pub invalid: u64,
    /// Rows read that have no outcome because ingestion stopped early.
    pub unprocessed: u64,
    pub elapsed: Duration,
}

impl IngestSummary {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Why ingestion stopped before the end of the input.
#[derive(Debug, thiserror::Error)]
pub enum StopCause {
    #[error("{0}")]
    Read(RowError),
    #[error(transparent)]
    Command(CommandError),
    #[error("cannot write the rejects file: {0}")]
    Rejects(std::io::Error),
    /// The caller asked to stop (an operator's Ctrl-C) between two windows.
    #[error("interrupted")]
    Interrupted,
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// The input cannot be read at all (e.g. a bad header): nothing was booked.
    #[error("{0}")]
    Input(RowError),
    /// Stopped at `line`, the first row without an outcome: rows before it, and whatever
    /// `summary` counts, have their outcomes; the rest have none yet. Rerunning is safe.
    #[error("stopped at line {line}: {cause}")]
    Stopped {
        summary: IngestSummary,
        line: u64,
        cause: StopCause,
    },
}

/// Where rows that were not booked go, as CSV: `line,txn_id,account,outcome,field,reason`,
/// in line order. A window's outcomes come back account by account, so its rows are kept
/// until [`Rejects::end_window`], then written sorted by line.
pub struct Rejects<W: Write> {
    out: W,
    /// This window's rows, each quoted, with its line.
    window: Vec<(u64, Vec<u8>)>,
}

/// The `outcome` column of the rejects file.
pub const REJECT_OUTCOMES: [&str; 4] = ["invalid", "refused", "replayed_refusal", "reused"];

impl<W: Write> Rejects<W> {
    pub fn new(mut out: W) -> std::io::Result<Rejects<W>> {
        writeln!(out, "line,txn_id,account,outcome,field,reason")?;
        Ok(Rejects {
            out,
            window: Vec::new(),
        })
    }

    fn write(
        &mut self,
        line: u64,
        txn: &str,
        account: &str,
        what: [&str; 3],
    ) -> std::io::Result<()> {
        // Quoted into a buffer, kept for the window's end.
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .buffer_capacity(256)
            .from_writer(Vec::with_capacity(256));
        let number = line.to_string();
        w.write_record([number.as_str(), txn, account, what[0], what[1], what[2]])
            .map_err(std::io::Error::other)?;
        let record = w
            .into_inner()
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        self.window.push((line, record));
        Ok(())
    }

    /// Hands the window's rows to `out` in line order, without flushing it: a flush per
    /// row was a write system call per row (38,000 of them in a 1M-row ingest). The caller
    /// flushes `out` at the end (`into_inner`), where a failed write still shows.
    pub fn end_window(&mut self) -> std::io::Result<()> {
        self.window.sort_by_key(|(line, _)| *line);
        for (_, record) in self.window.drain(..) {
            self.out.write_all(&record)?;
        }
        Ok(())
    }

    /// The sink, once the last window has ended (`ingest` ends every window it starts).
    pub fn into_inner(self) -> W {
        self.out
    }
}

/// One window as the reader thread hands it over: valid rows, invalid rows (in line order),
/// and whether the input ended with an error that stops reading.
struct Window {
    rows: Vec<Row>,
    invalid: Vec<RowError>,
    fatal: Option<RowError>,
}

/// Windows read ahead while the previous one is decided and committed: bounds memory to
/// this many windows plus the one in flight.
const WINDOWS_AHEAD_MAX: usize = 1;

/// Cuts a row stream into windows; the last one carries a fatal read error, if any.
struct Windows<R: Read> {
    rows: RowReader<R>,
    window_rows: usize,
    done: bool,
}

impl<R: Read> Iterator for Windows<R> {
    type Item = Window;

    fn next(&mut self) -> Option<Window> {
        if self.done {
            return None;
        }
        let mut window = Window {
            // Grown as rows come: a small body or file reserves little.
            rows: Vec::with_capacity(self.window_rows.min(ROWS_RESERVED_MAX)),
            invalid: Vec::new(),
            fatal: None,
        };
        while window.rows.len() + window.invalid.len() < self.window_rows {
            match self.rows.next() {
                Some(Ok(row)) => window.rows.push(row),
                Some(Err(e)) if e.fatal => {
                    window.fatal = Some(e);
                    self.done = true;
                    break;
                }
                Some(Err(e)) => window.invalid.push(e),
                None => {
                    self.done = true;
                    break;
                }
            }
        }
        Some(window)
    }
}

/// Where windows come from: a reader thread (parsing overlaps deciding and committing the
/// window before), or the calling task itself (a simulation, whose every step must run on
/// its one seeded thread to replay).
enum Source<R: Read> {
    Thread {
        windows: tokio::sync::mpsc::Receiver<Window>,
        reader: std::thread::JoinHandle<()>,
    },
    Inline(Box<Windows<R>>),
}

impl<R: Read + Send + 'static> Source<R> {
    fn start(
        rows: RowReader<R>,
        read_ahead: ReadAhead,
        window_rows: usize,
    ) -> std::io::Result<Source<R>> {
        let windows = Windows {
            rows,
            window_rows: window_rows.max(1),
            done: false,
        };
        if read_ahead == ReadAhead::Inline {
            return Ok(Source::Inline(Box::new(windows)));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(WINDOWS_AHEAD_MAX);
        let reader = std::thread::Builder::new()
            .name("tally-read".into())
            .spawn(move || {
                for w in windows {
                    if tx.blocking_send(w).is_err() {
                        return; // the receiver is gone
                    }
                }
            })?;
        Ok(Source::Thread {
            windows: rx,
            reader,
        })
    }

    async fn next(&mut self) -> Option<Window> {
        match self {
            Source::Thread { windows, .. } => windows.recv().await,
            Source::Inline(windows) => windows.next(),
        }
    }

    fn finish(self) {
        if let Source::Thread { windows, reader } = self {
            drop(windows);
            let _ = reader.join(); // it has sent its last window, or stops at its next send
        }
    }
}

/// Whether ingest reads the next window on a thread of its own while the current one is
/// decided and committed (production), or in turn on the calling task (the simulator).
/// `Inline` also spreads windows of any size over [`INGEST_PARTS`] slices, so that the
/// simulator's small files take the path large files take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadAhead {
    Thread,
    Inline,
}

/// What one window came to, for progress reports and for callers that follow the events
/// (to wait until they are projected, to show the file's balances).
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    /// Rows read so far, all with outcomes.
    pub rows: u64,
    pub summary: &'a IngestSummary,
    /// Each account of the window (first-appearance order) with the newest version its
    /// rows booked or found already booked (0: none, e.g. only refusals).
    pub accounts: &'a [(AccountId, u64)],
}

/// Ingests every row of `rows`. `progress` is called after each window.
pub async fn ingest<R, S, P, W>(
    rows: RowReader<R>,
    service: &CommandService<S, P>,
    rejects: &mut Rejects<W>,
    progress: impl FnMut(&Progress),
) -> Result<IngestSummary, IngestError>
where
    R: Read + Send + 'static,
    S: EventStore,
    P: EventPublisher,
    W: Write,
{
    let window = INGEST_WINDOW_ROWS;
    ingest_with(
        ReadAhead::Thread,
        window,
        rows,
        service,
        rejects,
        progress,
        || false,
    )
    .await
}

/// [`ingest`], choosing where windows are read and how many rows each has, and stopping
/// between two windows once `stop` says so: every row read until then has its outcome, and
/// the error names the first line not read ([`StopCause::Interrupted`]).
pub async fn ingest_with<R, S, P, W>(
    read_ahead: ReadAhead,
    window_rows: usize,
    rows: RowReader<R>,
    service: &CommandService<S, P>,
    rejects: &mut Rejects<W>,
    mut progress: impl FnMut(&Progress),
    stop: impl Fn() -> bool,
) -> Result<IngestSummary, IngestError>
where
    R: Read + Send + 'static,
    S: EventStore,
    P: EventPublisher,
    W: Write,
{
    let started = Instant::now();
    let mut summary = IngestSummary::default();
    let window_rows = window_rows.max(1);
    let mut source = Source::start(rows, read_ahead, window_rows).map_err(|e| {
        IngestError::Input(RowError {
            line: 0,
            field: None,
            message: format!("cannot start the reader thread: {e}"),
            fatal: true,
            txn_id: None,
            account: None,
        })
    })?;
    let mut read_error = None;
    while let Some(window) = source.next().await {
        let read = window.rows.len() + window.invalid.len();
        summary.rows += read as u64;
        for e in &window.invalid {
            summary.invalid += 1;
            let what = ["invalid", e.field.unwrap_or(""), e.message.as_str()];
            let (txn, account) = (e.txn_id.as_deref(), e.account.as_deref());
            if let Err(io) = rejects.write(e.line, txn.unwrap_or(""), account.unwrap_or(""), what) {
                let _ = rejects.end_window(); // the rows before it still go out
                return Err(stopped(summary, started, e.line, StopCause::Rejects(io)));
            }
        }
        let first_line = window_start(&window).unwrap_or(0);
        let last_start = last_row_start(&window);
        let parts = match read_ahead {
            ReadAhead::Thread => parts_for(window.rows.len()),
            ReadAhead::Inline => INGEST_PARTS,
        };
        let submitted = submit_window(window.rows, parts, service, rejects, &mut summary).await;
        // The window's rejects, in line order, whatever came of it.
        let written = rejects.end_window();
        match submitted {
            Ok(accounts) => progress(&Progress {
                rows: summary.rows,
                summary: &summary,
                accounts: &accounts,
            }),
            Err((line, cause)) => return Err(stopped(summary, started, line, cause)),
        }
        if let Err(io) = written {
            return Err(stopped(
                summary,
                started,
                first_line,
                StopCause::Rejects(io),
            ));
        }
        if window.fatal.is_some() {
            read_error = window.fatal;
            break;
        }
        // Asked to stop after a full window (one short of full was the input's last): the
        // next window, usually read ahead already, says whether anything is left and the
        // line a rerun resumes at (its first row's, however many lines the rows before it
        // took). A reader still waiting for input (a pipe) is not waited for: then the line
        // after the last row's start is named.
        if read >= window_rows && stop() {
            match tokio::time::timeout(NEXT_WINDOW_WAIT, source.next()).await {
                Ok(next) => match next.as_ref().and_then(window_start) {
                    Some(line) => {
                        return Err(stopped(summary, started, line, StopCause::Interrupted));
                    }
                    None => break, // the input ended with this window
                },
                Err(_) => {
                    let line = last_start + 1;
                    return Err(stopped(summary, started, line, StopCause::Interrupted));
                }
            }
        }
    }
    source.finish();
    summary.elapsed = started.elapsed();
    match read_error {
        Some(e) => Err(stopped(summary, started, e.line, StopCause::Read(e))),
        None => Ok(summary),
    }
}

/// How long a stop waits for the next window to learn whether the input has more.
const NEXT_WINDOW_WAIT: Duration = Duration::from_secs(1);

/// The line a window starts at; `None` for the empty window after the input's last.
fn window_start(w: &Window) -> Option<u64> {
    let firsts = [
        w.rows.first().map(|r| r.line),
        w.invalid.first().map(|e| e.line),
    ];
    firsts
        .into_iter()
        .flatten()
        .min()
        .or(w.fatal.as_ref().map(|e| e.line))
}

/// The line a window's last row (valid or not) starts on; 0 for an empty window.
fn last_row_start(w: &Window) -> u64 {
    let lasts = [
        w.rows.last().map(|r| r.line),
        w.invalid.last().map(|e| e.line),
    ];
    lasts.into_iter().flatten().max().unwrap_or(0)
}

fn stopped(
    mut summary: IngestSummary,
    started: Instant,
    line: u64,
    cause: StopCause,
) -> IngestError {
    summary.elapsed = started.elapsed();
    IngestError::Stopped {
        summary,
        line,
        cause,
    }
}

/// Submits one window (in `parts` account-disjoint slices at once); its accounts with their
/// newest booked versions, or on failure the first line without an outcome and why.
async fn submit_window<S: EventStore, P: EventPublisher, W: Write>(
    window: Vec<Row>,
    parts: usize,
    service: &CommandService<S, P>,
    rejects: &mut Rejects<W>,
    summary: &mut IngestSummary,
) -> Result<Vec<(AccountId, u64)>, (u64, StopCause)> {
    if window.is_empty() {
        return Ok(Vec::new());
    }
    // Group by account, first-appearance order, each account's rows in file order.
    let mut index: HashMap<AccountId, usize> = HashMap::new();
    let mut queues: Vec<(AccountId, Vec<Row>)> = Vec::new();
    for row in window {
        let i = *index.entry(row.account.clone()).or_insert_with(|| {
            queues.push((row.account.clone(), Vec::new()));
            queues.len() - 1
        });
        queues[i].1.push(row);
    }
    let chunks = queues
        .iter()
        .map(|(account, rows)| AccountChunk {
            account: account.clone(),
            commands: rows.iter().map(|r| r.command.clone()).collect(),
        })
        .collect();
    let submitted = service.submit_chunks_spread(chunks, parts).await;
    let mut first_unprocessed: Option<u64> = None;
    let mut write_error = None;
    let mut accounts = Vec::with_capacity(queues.len());
    for ((account, rows), outcomes) in queues.iter().zip(&submitted.outcomes) {
        let mut newest = 0;
        for (row, outcome) in rows.iter().zip(outcomes) {
            if let CommandOutcome::Booked(Event { version, .. })
            | CommandOutcome::Duplicate(Event { version, .. }) = outcome
            {
                newest = newest.max(*version);
            }
            if let Err(e) = count(row, outcome, rejects, summary) {
                write_error.get_or_insert((row.line, e));
            }
        }
        accounts.push((account.clone(), newest));
        for row in &rows[outcomes.len().min(rows.len())..] {
            summary.unprocessed += 1;
            first_unprocessed = Some(first_unprocessed.map_or(row.line, |l| l.min(row.line)));
        }
    }
    if let Some(error) = submitted.error {
        let line = first_unprocessed.unwrap_or(0);
        return Err((line, StopCause::Command(error)));
    }
    match write_error {
        Some((line, e)) => Err((line, StopCause::Rejects(e))),
        None => Ok(accounts),
    }
}

/// Counts one row's outcome, and writes it to the rejects sink unless it was booked.
fn count<W: Write>(
    row: &Row,
    outcome: &CommandOutcome,
    rejects: &mut Rejects<W>,
    summary: &mut IngestSummary,
) -> std::io::Result<()> {
    let (txn, account) = (row.command.txn_id().as_str(), row.account.as_str());
    let (outcome, field, reason) = match outcome {
        CommandOutcome::Booked(_) => {
            summary.accepted += 1;
            return Ok(());
        }
        CommandOutcome::Duplicate(_) => {
            summary.duplicates += 1;
            return Ok(());
        }
        CommandOutcome::Refused(r) => {
            summary.refused += 1;
            ("refused", r.field(), r.to_string())
        }
        CommandOutcome::ReplayedRefusal(r) => {
            summary.replayed_refusals += 1;
            (
                "replayed_refusal",
                r.rejection.field(),
                r.rejection.to_string(),
            )
        }
        CommandOutcome::Reused { field, original } => {
            summary.reused += 1;
            let reason = describe_reuse(field, &original.command(), &row.command);
            ("reused", Some(*field), reason)
        }
        CommandOutcome::Invalid(r) => {
            summary.invalid += 1;
            ("invalid", r.field(), r.to_string())
        }
    };
    rejects.write(
        row.line,
        txn,
        account,
        [outcome, field.unwrap_or(""), &reason],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sink that counts flushes and keeps what it is given.
    #[derive(Default)]
    struct Counting {
        bytes: Vec<u8>,
        flushes: usize,
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.bytes.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.flushes += 1;
            Ok(())
        }
    }

    /// Rows go to the sink quoted as CSV and unflushed (a flush per row was a system call
    /// per row through the CLI's `BufWriter`); the caller flushes once at the end.
    #[test]
    fn rejects_are_quoted_and_never_flushed_per_row() {
        let mut rejects = Rejects::new(Counting::default()).unwrap();
        for line in 2..1_002 {
            let what = ["refused", "amount", "insufficient funds, \"balance\" 0"];
            rejects.write(line, "t,1", "a", what).unwrap();
        }
        rejects.end_window().unwrap();
        let sink = rejects.into_inner();
        assert_eq!(sink.flushes, 0);
        let text = String::from_utf8(sink.bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1_001);
        assert_eq!(lines[0], "line,txn_id,account,outcome,field,reason");
        assert_eq!(
            lines[1],
            r#"2,"t,1",a,refused,amount,"insufficient funds, ""balance"" 0""#
        );
    }
}
