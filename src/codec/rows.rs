//! The bulk row format: CSV with a header, or NDJSON with the same names, one transaction
//! per row, amounts in minor units.
//!
//! ```text
//! txn_id,account,kind,amount,occurred_at,reverses
//! t-1,acct-1,deposit,10000,2026-11-01T09:00:00Z,
//! t-3,acct-1,reversal,,2026-11-03T09:00:00Z,t-2
//! ```
//!
//! Readers stream: memory stays constant whatever the file size. Every error names the
//! line (1-based, as an editor shows it) and the field. A bad row does not stop the reader;
//! an unreadable file or header does.

use std::io::{self, BufRead, Read};

use serde::Deserialize;

use super::time::parse_rfc3339;
use crate::domain::{AccountId, Command, Money, TxnId};

/// One valid row: a command for one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub line: u64,
    pub account: AccountId,
    pub command: Command,
}

/// A row that cannot become a command, or input that cannot be read at all (`fatal`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}{}: {message}", field.map(|f| format!(", field {f}")).unwrap_or_default())]
pub struct RowError {
    pub line: u64,
    pub field: Option<&'static str>,
    pub message: String,
    /// The reader cannot go on (I/O error, bad header); no further rows follow.
    pub fatal: bool,
    /// The row's `txn_id` and `account` as written, where it has them: an invalid row is
    /// still named by them (in the rejects file).
    pub txn_id: Option<String>,
    pub account: Option<String>,
}

impl RowError {
    fn field(line: u64, field: &'static str, message: impl Into<String>) -> RowError {
        RowError {
            line,
            field: Some(field),
            message: message.into(),
            fatal: false,
            txn_id: None,
            account: None,
        }
    }

    /// A row that is invalid as a whole (not one field); the reader goes on.
    fn field_less(line: u64, message: impl Into<String>) -> RowError {
        RowError {
            line,
            field: None,
            message: message.into(),
            fatal: false,
            txn_id: None,
            account: None,
        }
    }

    fn fatal(line: u64, message: impl Into<String>) -> RowError {
        RowError {
            line,
            field: None,
            message: message.into(),
            fatal: true,
            txn_id: None,
            account: None,
        }
    }
}

/// The file formats a bulk body may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Ndjson,
}

impl Format {
    /// By file extension: `.csv`, or `.ndjson` / `.jsonl` / `.json`.
    pub fn from_path(path: &std::path::Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "csv" => Some(Format::Csv),
            "ndjson" | "jsonl" | "json" => Some(Format::Ndjson),
            _ => None,
        }
    }

    /// By content: NDJSON starts with `{` after optional whitespace; anything else is CSV.
    pub fn sniff(prefix: &[u8]) -> Format {
        match prefix.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => Format::Ndjson,
            _ => Format::Csv,
        }
    }
}

pub const COLUMNS: [&str; 6] = [
    "txn_id",
    "account",
    "kind",
    "amount",
    "occurred_at",
    "reverses",
];
const REQUIRED: [&str; 4] = ["txn_id", "account", "kind", "occurred_at"];

/// A row's fields before validation; `None` is absent or empty.
#[derive(Default)]
struct RawRow<'a> {
    txn_id: Option<&'a str>,
    account: Option<&'a str>,
    kind: Option<&'a str>,
    amount: Option<RawAmount<'a>>,
    occurred_at: Option<&'a str>,
    reverses: Option<&'a str>,
}

enum RawAmount<'a> {
    Text(&'a str),
    Number(&'a serde_json::Number),
}

fn required<'a>(line: u64, field: &'static str, v: Option<&'a str>) -> Result<&'a str, RowError> {
    v.ok_or_else(|| RowError::field(line, field, "is required"))
}

fn parse_amount(line: u64, raw: Option<RawAmount<'_>>) -> Result<Money, RowError> {
    let bad = |m: String| RowError::field(line, "amount", m);
    match raw {
        None => Err(bad("is required for a deposit or withdrawal".into())),
        Some(RawAmount::Number(n)) => n.as_i64().map(Money).ok_or_else(|| {
            bad(format!(
                "{n} is not an integer number of minor units in i64 range"
            ))
        }),
        Some(RawAmount::Text(s)) => {
            let digits = s.strip_prefix('-').unwrap_or(s);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad(format!(
                    "{s:?} is not an integer number of minor units"
                )));
            }
            s.parse::<i64>()
                .map(Money)
                .map_err(|_| bad(format!("{s} is outside the i64 range")))
        }
    }
}

/// The row's command, or why it has none (named by the row's `txn_id` and `account`).
fn build(line: u64, raw: RawRow<'_>) -> Result<Row, RowError> {
    let (txn_id, account) = (raw.txn_id, raw.account);
    row_of(line, raw).map_err(|e| RowError {
        txn_id: txn_id.map(str::to_owned),
        account: account.map(str::to_owned),
        ..e
    })
}

fn row_of(line: u64, raw: RawRow<'_>) -> Result<Row, RowError> {
    let txn_id = TxnId::new(required(line, "txn_id", raw.txn_id)?)
        .map_err(|e| RowError::field(line, "txn_id", e.to_string()))?;
    let account = AccountId::new(required(line, "account", raw.account)?)
        .map_err(|e| RowError::field(line, "account", e.to_string()))?;
    let kind = required(line, "kind", raw.kind)?;
    let occurred_at = parse_rfc3339(required(line, "occurred_at", raw.occurred_at)?)
        .map_err(|e| RowError::field(line, "occurred_at", e))?;
    let command = match kind {
        "deposit" | "withdrawal" => {
            if raw.reverses.is_some() {
                return Err(RowError::field(
                    line,
                    "reverses",
                    format!("must be empty for a {kind}"),
                ));
            }
            let amount = parse_amount(line, raw.amount)?;
            if kind == "deposit" {
                Command::Deposit {
                    txn_id,
                    amount,
                    occurred_at,
                }
            } else {
                Command::Withdraw {
                    txn_id,
                    amount,
                    occurred_at,
                }
            }
        }
        "reversal" => {
            if raw.amount.is_some() {
                return Err(RowError::field(
                    line,
                    "amount",
                    "must be empty for a reversal",
                ));
            }
            let reverses = TxnId::new(required(line, "reverses", raw.reverses)?)
                .map_err(|e| RowError::field(line, "reverses", e.to_string()))?;
            Command::Reverse {
                txn_id,
                reverses,
                occurred_at,
            }
        }
        other => {
            return Err(RowError::field(
                line,
                "kind",
                format!("{other:?} is not one of deposit, withdrawal, reversal"),
            ));
        }
    };
    Ok(Row {
        line,
        account,
        command,
    })
}

/// Streams rows out of a CSV or NDJSON source.
pub struct RowReader<R: Read> {
    inner: Inner<R>,
    done: bool,
}

enum Inner<R: Read> {
    Csv {
        reader: csv::Reader<Tail<R>>,
        columns: [Option<usize>; 6],
        record: csv::StringRecord,
    },
    Ndjson {
        reader: io::BufReader<R>,
        line: u64,
        buf: Vec<u8>,
    },
}

/// Longest NDJSON line accepted as a row; a longer one is an invalid row, skipped to its end
/// without holding it in memory.
pub const ROW_BYTES_MAX: usize = 64 * 1024;

impl<R: Read> RowReader<R> {
    /// Reads the CSV header now, so a wrong header fails before any row is processed.
    pub fn new(source: R, format: Format) -> Result<RowReader<R>, RowError> {
        let inner = match format {
            Format::Csv => {
                // Fields are trimmed as they are read (`trim`), not by the reader: its trim
                // drops the newlines at a field's edges that `start_line` counts (and
                // copies every record).
                let mut reader = csv::ReaderBuilder::new().from_reader(Tail {
                    inner: source,
                    base: 0,
                    chunk: Vec::new(),
                    before: None,
                });
                let header = reader
                    .headers()
                    .map_err(|e| RowError::fatal(1, e.to_string()))?;
                let columns = header_columns(header)?;
                Inner::Csv {
                    reader,
                    columns,
                    record: csv::StringRecord::new(),
                }
            }
            Format::Ndjson => Inner::Ndjson {
                reader: io::BufReader::new(source),
                line: 0,
                buf: Vec::new(),
            },
        };
        Ok(RowReader { inner, done: false })
    }
}

fn header_columns(header: &csv::StringRecord) -> Result<[Option<usize>; 6], RowError> {
    let mut columns = [None; 6];
    for (i, name) in header.iter().map(trim).enumerate() {
        let slot = COLUMNS.iter().position(|c| *c == name).ok_or_else(|| {
            RowError::fatal(
                1,
                format!("unknown column {name:?}; expected {}", COLUMNS.join(",")),
            )
        })?;
        if columns[slot].replace(i).is_some() {
            return Err(RowError::fatal(1, format!("column {name:?} appears twice")));
        }
    }
    if let Some(missing) = REQUIRED
        .iter()
        .find(|c| columns[COLUMNS.iter().position(|x| x == *c).unwrap_or(0)].is_none())
    {
        return Err(RowError::fatal(1, format!("missing column {missing:?}")));
    }
    Ok(columns)
}

/// The input under the CSV reader, keeping a copy of the chunk it gave last (and the byte
/// before it): enough to tell which byte ended the record just read.
struct Tail<R> {
    inner: R,
    /// Offset of `chunk` in the input.
    base: u64,
    chunk: Vec<u8>,
    before: Option<u8>,
}

impl<R> Tail<R> {
    fn byte_at(&self, at: u64) -> Option<u8> {
        if at.checked_add(1) == Some(self.base) {
            return self.before;
        }
        let i = usize::try_from(at.checked_sub(self.base)?).ok()?;
        self.chunk.get(i).copied()
    }
}

impl<R: Read> Read for Tail<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.before = self.chunk.last().copied().or(self.before);
            self.base += self.chunk.len() as u64;
            self.chunk.clear();
            self.chunk.extend_from_slice(&buf[..n]);
        }
        Ok(n)
    }
}

/// A CSV field without the ASCII whitespace around it.
fn trim(field: &str) -> &str {
    field.trim_matches(|c: char| c.is_ascii_whitespace())
}

/// The line a CSV record just read starts on. The reader's own record position is where
/// the previous record ended, before any blank lines it skipped; so count back from where
/// this one ended: the newlines inside its fields (as read, before `trim`), and the one
/// ending it (none after a CR, which the reader stops at, or at the end of an input without
/// a final newline).
fn start_line<R: Read>(reader: &csv::Reader<Tail<R>>, record: &csv::StringRecord) -> u64 {
    let end = reader.position();
    let inside: usize = record
        .iter()
        .map(|f| memchr::memchr_iter(b'\n', f.as_bytes()).count())
        .sum();
    let ended_by_newline = end
        .byte()
        .checked_sub(1)
        .and_then(|at| reader.get_ref().byte_at(at))
        .is_none_or(|b| b == b'\n');
    end.line()
        .saturating_sub(inside as u64 + u64::from(ended_by_newline))
        .max(1)
}

/// NDJSON object with the bulk row's names; anything else is refused by name.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JsonRow {
    txn_id: Option<serde_json::Value>,
    account: Option<serde_json::Value>,
    kind: Option<serde_json::Value>,
    amount: Option<serde_json::Value>,
    occurred_at: Option<serde_json::Value>,
    reverses: Option<serde_json::Value>,
}

fn json_str<'a>(
    line: u64,
    field: &'static str,
    v: &'a Option<serde_json::Value>,
) -> Result<Option<&'a str>, RowError> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) if s.is_empty() => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(RowError::field(
            line,
            field,
            format!("must be a string, got {other}"),
        )),
    }
}

/// An NDJSON row's command, or why it has none, named by its `txn_id` and `account` where
/// they are strings (read loosely when the row is not a valid row object).
fn json_row(line: u64, text: &str) -> Result<Row, RowError> {
    let name = |v: Option<&serde_json::Value>| v.and_then(|v| v.as_str()).map(str::to_owned);
    match serde_json::from_str::<JsonRow>(text) {
        Ok(row) => json_row_of(line, &row).map_err(|e| RowError {
            txn_id: e.txn_id.or_else(|| name(row.txn_id.as_ref())),
            account: e.account.or_else(|| name(row.account.as_ref())),
            ..e
        }),
        Err(e) => {
            let loose = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(text);
            let loose = loose.ok();
            Err(RowError {
                txn_id: name(loose.as_ref().and_then(|m| m.get("txn_id"))),
                account: name(loose.as_ref().and_then(|m| m.get("account"))),
                ..json_error(line, &e)
            })
        }
    }
}

/// Why serde refused an NDJSON row, naming the field where serde does.
fn json_error(line: u64, e: &serde_json::Error) -> RowError {
    // serde names the offending field in backticks; an unknown field is not a column.
    let text = e.to_string();
    let field = if text.starts_with("unknown field") {
        None
    } else {
        COLUMNS
            .iter()
            .find(|c| text.contains(&format!("`{c}`")))
            .copied()
    };
    RowError {
        line,
        field,
        message: format!("invalid JSON row: {e}"),
        fatal: false,
        txn_id: None,
        account: None,
    }
}

/// A parsed NDJSON row's command, or why it has none.
fn json_row_of(line: u64, row: &JsonRow) -> Result<Row, RowError> {
    let amount = match &row.amount {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::Number(n)) => Some(RawAmount::Number(n)),
        Some(serde_json::Value::String(s)) if s.is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(RawAmount::Text(s)),
        Some(other) => {
            return Err(RowError::field(
                line,
                "amount",
                format!("must be an integer, got {other}"),
            ));
        }
    };
    build(
        line,
        RawRow {
            txn_id: json_str(line, "txn_id", &row.txn_id)?,
            account: json_str(line, "account", &row.account)?,
            kind: json_str(line, "kind", &row.kind)?,
            amount,
            occurred_at: json_str(line, "occurred_at", &row.occurred_at)?,
            reverses: json_str(line, "reverses", &row.reverses)?,
        },
    )
}

/// Reads the next line into `buf` (without its newline). `Ok(None)` at the end of input;
/// `Ok(Some(false))` for a line over [`ROW_BYTES_MAX`], consumed to its end but not kept.
fn next_line<R: Read>(
    reader: &mut io::BufReader<R>,
    buf: &mut Vec<u8>,
) -> io::Result<Option<bool>> {
    buf.clear();
    let limit = ROW_BYTES_MAX as u64 + 1;
    let n = reader.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(true));
    }
    if buf.len() <= ROW_BYTES_MAX {
        return Ok(Some(true)); // the last line, without a newline
    }
    // Too long: skip the rest of the line in bounded steps.
    loop {
        buf.clear();
        let n = reader.by_ref().take(limit).read_until(b'\n', buf)?;
        if n == 0 || buf.last() == Some(&b'\n') {
            buf.clear();
            return Ok(Some(false));
        }
    }
}

impl<R: Read> Iterator for RowReader<R> {
    type Item = Result<Row, RowError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = match &mut self.inner {
            Inner::Csv {
                reader,
                columns,
                record,
            } => match reader.read_record(record) {
                Ok(false) => None,
                Ok(true) => {
                    let line = start_line(reader, record);
                    let get = |slot: usize| {
                        columns[slot]
                            .and_then(|i| record.get(i))
                            .map(trim)
                            .filter(|s| !s.is_empty())
                    };
                    Some(build(
                        line,
                        RawRow {
                            txn_id: get(0),
                            account: get(1),
                            kind: get(2),
                            amount: get(3).map(RawAmount::Text),
                            occurred_at: get(4),
                            reverses: get(5),
                        },
                    ))
                }
                Err(e) => {
                    let line = e.position().map_or(0, |p| p.line());
                    let fatal = matches!(e.kind(), csv::ErrorKind::Io(_));
                    Some(Err(RowError {
                        line,
                        field: None,
                        message: e.to_string(),
                        fatal,
                        txn_id: None,
                        account: None,
                    }))
                }
            },
            Inner::Ndjson { reader, line, buf } => loop {
                *line += 1;
                match next_line(reader, buf) {
                    Ok(None) => break None,
                    Ok(Some(false)) => {
                        break Some(Err(RowError::field_less(
                            *line,
                            format!("line is longer than {ROW_BYTES_MAX} bytes"),
                        )));
                    }
                    Ok(Some(true)) => {}
                    Err(e) => break Some(Err(RowError::fatal(*line, e.to_string()))),
                }
                let text = match std::str::from_utf8(buf) {
                    Ok(text) => text,
                    Err(e) => {
                        break Some(Err(RowError::field_less(
                            *line,
                            format!("not valid UTF-8 (at byte {})", e.valid_up_to() + 1),
                        )));
                    }
                };
                if text.trim().is_empty() {
                    continue;
                }
                break Some(json_row(*line, text.trim_end()));
            },
        };
        match &item {
            None | Some(Err(RowError { fatal: true, .. })) => self.done = true,
            _ => {}
        }
        item
    }
}
