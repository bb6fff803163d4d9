//! One client call, from the client's side: send an operation through the command service
//! (or ingestion, for a file) and turn the answer into the attempts the checker reads.
//! Shared by the simulated run and the stress mode.
//!
//! Must never: retry (the caller decides), or drop a command from the record.

use crate::codec::rows::{Format, RowError, RowReader};
use crate::domain::{AccountId, Command};
use crate::ports::{EventPublisher, EventStore};
use crate::service::command::{CommandError, CommandOutcome, CommandService, Submitted};
use crate::service::ingest::{
    INGEST_WINDOW_ROWS, IngestError, IngestSummary, ReadAhead, Rejects, ingest_with,
};
use crate::sim::history::{Attempt, Outcome, Violation};
use crate::sim::workload::Op;

/// What one call returned (`None` where recorded: the process crashed under it).
pub(crate) enum Answer {
    One(Result<CommandOutcome, CommandError>),
    Many(Submitted),
    Ingest(Result<IngestSummary, IngestError>),
}

/// The attempts a call's answer makes, whether it was answered, and what it broke.
pub(crate) fn attempts_of(
    client: usize,
    call: u64,
    op: &Op,
    answer: Option<Answer>,
) -> (Vec<Attempt>, bool, Vec<Violation>) {
    let unknown = |why: &str| Outcome::Unknown(why.to_owned());
    let mut out: Vec<Attempt> = Vec::new();
    let mut notes = Vec::new();
    let mut push = |account: &AccountId, command: &Command, index, outcome| {
        out.push(Attempt {
            client,
            call,
            index,
            account: account.clone(),
            command: command.clone(),
            outcome,
        })
    };
    let answered = match (op, answer) {
        (Op::Single { account, command }, Some(Answer::One(r))) => {
            let ok = r.is_ok();
            push(
                account,
                command,
                0,
                r.map_or_else(|e| unknown(&e.to_string()), outcome),
            );
            ok
        }
        (Op::Bulk { chunks }, Some(Answer::Many(submitted))) => {
            // Outcomes for a prefix of each chunk; the rest have none (only with an error).
            let why = submitted
                .error
                .as_ref()
                .map_or_else(|| "no outcome".to_owned(), ToString::to_string);
            for (chunk, outs) in chunks.iter().zip(&submitted.outcomes) {
                if submitted.error.is_none() && outs.len() != chunk.commands.len() {
                    notes.push(Violation::new(
                        Some(chunk.account.as_str()),
                        format!(
                            "{} outcomes for {} commands",
                            outs.len(),
                            chunk.commands.len()
                        ),
                    ));
                }
                for (i, c) in chunk.commands.iter().enumerate() {
                    let o = outs
                        .get(i)
                        .map_or_else(|| unknown(&why), |o| outcome(o.clone()));
                    push(&chunk.account, c, i, o);
                }
            }
            submitted.error.is_none()
        }
        (Op::Ingest { rows, invalid, .. }, Some(Answer::Ingest(r))) => {
            if let Ok(s) = &r {
                notes.extend(check_summary(s, rows.len() as u64, *invalid));
            }
            for (i, (a, c)) in rows.iter().enumerate() {
                push(a, c, i, unknown("bulk file"));
            }
            r.is_ok()
        }
        (op, answer) => {
            let why = match answer {
                None => "crashed mid-call".to_owned(),
                Some(_) => "mismatched answer".to_owned(),
            };
            for (i, (a, c)) in commands_of(op).into_iter().enumerate() {
                push(&a, &c, i, unknown(&why));
            }
            false
        }
    };
    (out, answered, notes)
}

fn check_summary(s: &IngestSummary, valid: u64, invalid: u64) -> Option<Violation> {
    let sum = s.accepted + s.duplicates + s.refused + s.replayed_refusals + s.reused + s.invalid;
    let wrong = s.rows != valid + invalid || s.invalid < invalid || sum != s.rows;
    (wrong || s.unprocessed != 0).then(|| {
        Violation::new(
            None,
            format!(
                "bulk summary does not add up: {s:?} for {valid} valid and {invalid} invalid rows"
            ),
        )
    })
}

pub(crate) fn outcome(o: CommandOutcome) -> Outcome {
    match o {
        CommandOutcome::Booked(e) => Outcome::Booked(e),
        CommandOutcome::Duplicate(e) => Outcome::Duplicate(e),
        CommandOutcome::Refused(r) => Outcome::Rejected(r),
        CommandOutcome::ReplayedRefusal(r) => Outcome::ReplayedRefusal(r),
        CommandOutcome::Reused { field, original } => Outcome::Reused { field, original },
        CommandOutcome::Invalid(r) => Outcome::Invalid(r),
    }
}

impl Attempt {
    /// A small code of the outcome for the run's trace hash.
    pub(crate) fn outcome_code(&self) -> u64 {
        match &self.outcome {
            Outcome::Booked(e) => 1 + (e.version << 3),
            Outcome::Duplicate(e) => 2 + (e.version << 3),
            Outcome::Rejected(_) => 3,
            Outcome::Unknown(_) => 4,
            Outcome::ReplayedRefusal(r) => 5 + (r.version << 3),
            Outcome::Reused { .. } => 6,
            Outcome::Invalid(_) => 7,
        }
    }
}

fn commands_of(op: &Op) -> Vec<(AccountId, Command)> {
    match op {
        Op::Single { account, command } => vec![(account.clone(), command.clone())],
        Op::Bulk { chunks } => chunks
            .iter()
            .flat_map(|c| {
                c.commands
                    .iter()
                    .map(|cmd| (c.account.clone(), cmd.clone()))
            })
            .collect(),
        Op::Ingest { rows, .. } => rows.clone(),
    }
}

/// Sends one operation through the command service (or ingestion, for a file).
pub(crate) async fn run_op<S: EventStore, P: EventPublisher>(
    commands: &CommandService<S, P>,
    op: &Op,
) -> Answer {
    match op {
        Op::Single { account, command } => {
            Answer::One(commands.submit(account.clone(), command.clone()).await)
        }
        Op::Bulk { chunks } => Answer::Many(commands.submit_chunks(chunks.clone()).await),
        Op::Ingest { csv, .. } => {
            let rows =
                match RowReader::new(std::io::Cursor::new(csv.clone().into_bytes()), Format::Csv) {
                    Ok(rows) => rows,
                    Err(e) => return Answer::Ingest(Err(IngestError::Input(e))),
                };
            let mut rejects = match Rejects::new(Vec::new()) {
                Ok(r) => r,
                Err(e) => {
                    return Answer::Ingest(Err(IngestError::Input(RowError {
                        line: 0,
                        field: None,
                        message: e.to_string(),
                        fatal: true,
                        txn_id: None,
                        account: None,
                    })));
                }
            };
            let read = ReadAhead::Inline; // a reader thread would not replay
            Answer::Ingest(
                ingest_with(
                    read,
                    INGEST_WINDOW_ROWS,
                    rows,
                    commands,
                    &mut rejects,
                    |_| {},
                    || false,
                )
                .await,
            )
        }
    }
}
