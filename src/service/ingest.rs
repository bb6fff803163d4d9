//! Bulk ingestion: stream rows (constant memory), validate each, group a window of rows by
//! account, and run them through the command service in per-account chunks, all accounts
//! of a window in one store transaction. Commands of one account keep file order. Every row
//! that is not booked — invalid, rejected by the rules — is written to the rejects sink with
//! its line number and reason.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::codec::rows::{Row, RowError, RowReader};
use crate::domain::AccountId;
use crate::ports::{EventPublisher, EventStore};
use crate::service::command::{AccountChunk, CommandError, CommandOutcome, CommandService};

/// Rows read before a window is grouped and submitted: bounds memory, and is large enough
/// that one store transaction carries many accounts.
pub const INGEST_WINDOW_ROWS: usize = 65_536;

/// What an ingestion did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IngestSummary {
    pub rows: u64,
    /// Newly booked.
    pub accepted: u64,
    /// Transaction ids already booked (a file sent twice, overlapping files): not booked again.
    pub duplicates: u64,
    /// Valid rows refused by the rules (insufficient funds, unknown reversal target, …).
    pub rejected: u64,
    /// Rows that are not valid transactions (bad field, missing value).
    pub invalid: u64,
    pub elapsed: Duration,
}

impl IngestSummary {
    pub fn rows_per_second(&self) -> f64 {
        self.rows as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{0}")]
    Input(RowError),
    #[error("cannot write the rejects file: {0}")]
    Rejects(std::io::Error),
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// Where refused rows go, as CSV: `line,txn_id,account,field,reason`.
pub struct Rejects<W: Write> {
    out: W,
}

impl<W: Write> Rejects<W> {
    pub fn new(mut out: W) -> std::io::Result<Rejects<W>> {
        writeln!(out, "line,txn_id,account,field,reason")?;
        Ok(Rejects { out })
    }

    fn write(
        &mut self,
        line: u64,
        txn: &str,
        account: &str,
        field: &str,
        reason: &str,
    ) -> std::io::Result<()> {
        let mut w = csv::WriterBuilder::new()
            .has_headers(false)
            .from_writer(&mut self.out);
        w.write_record([line.to_string().as_str(), txn, account, field, reason])
            .map_err(std::io::Error::other)?;
        w.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

/// Ingests every row of `rows`. `progress` is called with the rows done so far.
pub async fn ingest<R: Read, S: EventStore, P: EventPublisher, W: Write>(
    rows: RowReader<R>,
    service: &CommandService<S, P>,
    rejects: &mut Rejects<W>,
    mut progress: impl FnMut(u64),
) -> Result<IngestSummary, IngestError> {
    let started = Instant::now();
    let mut summary = IngestSummary::default();
    let mut window: Vec<Row> = Vec::with_capacity(INGEST_WINDOW_ROWS);
    for item in rows {
        summary.rows += 1;
        match item {
            Ok(row) => window.push(row),
            Err(e) if e.fatal => return Err(IngestError::Input(e)),
            Err(e) => {
                summary.invalid += 1;
                rejects
                    .write(e.line, "", "", e.field.unwrap_or(""), &e.message)
                    .map_err(IngestError::Rejects)?;
            }
        }
        if window.len() >= INGEST_WINDOW_ROWS {
            submit_window(std::mem::take(&mut window), service, rejects, &mut summary).await?;
            progress(summary.rows);
        }
    }
    submit_window(window, service, rejects, &mut summary).await?;
    progress(summary.rows);
    summary.elapsed = started.elapsed();
    Ok(summary)
}

async fn submit_window<S: EventStore, P: EventPublisher, W: Write>(
    window: Vec<Row>,
    service: &CommandService<S, P>,
    rejects: &mut Rejects<W>,
    summary: &mut IngestSummary,
) -> Result<(), IngestError> {
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
    let lines: Vec<Vec<Row>> = queues.iter_mut().map(|(_, q)| std::mem::take(q)).collect();
    let chunks = queues
        .iter()
        .zip(&lines)
        .map(|((account, _), rows)| AccountChunk {
            account: account.clone(),
            commands: rows.iter().map(|r| r.command.clone()).collect(),
        })
        .collect();
    let outcomes = service.submit_chunks(chunks).await?;
    for (rows, outcomes) in lines.iter().zip(outcomes) {
        for (row, outcome) in rows.iter().zip(outcomes) {
            match outcome {
                CommandOutcome::Booked(_) => summary.accepted += 1,
                CommandOutcome::Duplicate(_) => summary.duplicates += 1,
                CommandOutcome::Rejected(r) => {
                    summary.rejected += 1;
                    let (txn, account) = (row.command.txn_id().as_str(), row.account.as_str());
                    rejects
                        .write(row.line, txn, account, "", &r.to_string())
                        .map_err(IngestError::Rejects)?;
                }
            }
        }
    }
    Ok(())
}
