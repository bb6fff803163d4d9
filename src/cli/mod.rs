//! The `tally` CLI's data commands, written once over the ports so every command runs the
//! same way on both backends: `ingest` (in [`ingest`]), `balance`, `history`, `verify`,
//! `replay`. `src/main.rs` parses flags, builds the configuration, opens a backend and calls
//! these. Output goes to stdout, one line per fact; errors come back as text naming the
//! input, and the binary exits non-zero with them.
//!
//! Must never: write anything from `balance`, `history` or `verify` (they read only), or
//! print a result before what it describes is durable.

use std::process::ExitCode;

use crate::codec::json::{BalanceView, EventView, PointInTimeView};
use crate::codec::time::parse_rfc3339;
use crate::domain::AccountId;
use crate::ports::{EventStore, SnapshotStore};
use crate::service::audit::VerifyReport;
use crate::service::query::QueryService;

/// Set once a write to stdout failed: the reader went away (`tally … | head`).
pub(crate) static STDOUT_GONE: std::sync::atomic::AtomicBool =
    std::sync::atomic::AtomicBool::new(false);

/// `println!` that treats a closed stdout (`tally … | head`) as "the reader has seen
/// enough": later lines are dropped, no panic, and the command goes on to its end. It must
/// not exit: `ingest` prints its summary before the stream drains and the snapshots are
/// flushed, and `redrive` prints while it works.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        use std::sync::atomic::Ordering;
        if !$crate::cli::STDOUT_GONE.load(Ordering::Relaxed)
            && writeln!(std::io::stdout().lock(), $($arg)*).is_err()
        {
            $crate::cli::STDOUT_GONE.store(true, Ordering::Relaxed);
        }
    }};
}

pub mod ingest;
pub mod quarantine;

/// An account id from the command line, or an error naming it.
pub fn account(s: &str) -> Result<AccountId, String> {
    AccountId::new(s).map_err(|e| format!("account {s:?}: {e}"))
}

fn to_json<T: serde::Serialize>(v: &T) -> Result<String, String> {
    serde_json::to_string_pretty(v).map_err(|e| e.to_string())
}

/// `tally balance ACCOUNT [--at T] [--json]`: the snapshot (completed from the events if it
/// lags), or the balance as of a business time.
pub async fn balance<E: EventStore, S: SnapshotStore>(
    query: &QueryService<E, S>,
    name: &str,
    at: Option<&str>,
    json: bool,
) -> Result<ExitCode, String> {
    let id = account(name)?;
    let out = match at {
        None => {
            let s = query
                .balance(&id)
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("account {name} has no events"))?;
            let v = BalanceView::new(name, &s);
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
            let t = parse_rfc3339(at).map_err(|e| format!("--at: {e}"))?;
            let p = query
                .balance_at(&id, t)
                .await
                .map_err(|e| e.to_string())?
                .ok_or(format!("account {name} has no events"))?;
            let v = PointInTimeView::new(name, p.at, p.balance, p.events);
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

/// `tally history ACCOUNT [--from V] [--limit N] [--json]`.
pub async fn history<E: EventStore, S: SnapshotStore>(
    query: &QueryService<E, S>,
    name: &str,
    from: u64,
    limit: usize,
    json: bool,
) -> Result<ExitCode, String> {
    let id = account(name)?;
    let events = query
        .history(&id, from, limit)
        .await
        .map_err(|e| e.to_string())?;
    let views: Vec<EventView> = events.iter().map(EventView::new).collect();
    if json {
        say!("{}", to_json(&views)?);
        return Ok(ExitCode::SUCCESS);
    }
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
    Ok(ExitCode::SUCCESS)
}

/// Prints a verify report; exit 1 if it found anything.
pub fn print_verify(report: &VerifyReport) -> ExitCode {
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
    if report.is_clean() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints what a replay did; exits 1 if any account's events do not fold.
pub fn print_replay(done: &crate::service::audit::Replayed) -> ExitCode {
    for (account, reason) in &done.unfoldable {
        say!("NOT REPLAYED {account}: its events do not fold: {reason}");
    }
    say!("replayed {} accounts", done.accounts);
    if done.unfoldable.is_empty() {
        ExitCode::SUCCESS
    } else {
        say!(
            "{} accounts left as they were (`tally verify` names what is wrong)",
            done.unfoldable.len()
        );
        ExitCode::FAILURE
    }
}
