//! The read model and the fold. `apply` classifies each event against the snapshot's
//! version (next, duplicate, gap) and folds only the next one. It holds no business rules:
//! those ran in `decide` when the event was made.

use super::event::{Effect, Event};
use super::money::Money;
use super::time::{Month, Timestamp};

/// The precalculated balance of one account, as the query side serves it.
///
/// Totals are i128/u128: they sum up to 2^64 amounts of at most 2^63, which always fits, so
/// a long-lived account can never make a valid event unfoldable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Snapshot {
    /// Version of the newest event folded in; 0 for an account with no events.
    pub version: u64,
    pub balance: Money,
    /// UTC month of the newest business time seen; `None` before the first event.
    pub month: Option<Month>,
    /// Net change of the balance from events in `month`.
    pub month_balance: i128,
    /// Sum of positive deltas (deposits, reversed withdrawals).
    pub credit_total: u128,
    pub credit_count: u64,
    /// Sum of the magnitudes of negative deltas (withdrawals, reversed deposits).
    pub debit_total: u128,
    pub debit_count: u64,
    /// Newest business time seen.
    pub last_occurred_at: Option<Timestamp>,
    /// Ledger time of the newest event folded in.
    pub updated_at: Option<Timestamp>,
}

impl Snapshot {
    /// Whether its figures agree: credits minus debits is the balance. Every fold keeps it;
    /// only an altered or corrupt stored item breaks it.
    pub fn adds_up(&self) -> bool {
        i128::try_from(self.credit_total)
            .ok()
            .zip(i128::try_from(self.debit_total).ok())
            .and_then(|(c, d)| c.checked_sub(d))
            == Some(i128::from(self.balance.minor()))
    }
}

/// What folding one event did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The event was the next version and is now part of the snapshot.
    Applied,
    /// The snapshot already contains this version; nothing changed.
    Duplicate,
    /// Versions `expected..event` are missing; nothing changed. Fill from the event store.
    Gap { expected: u64 },
}

/// An event that is the next version but cannot be folded: a bug or corrupt data, never an
/// expected case. The snapshot is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FoldError {
    #[error("event {version} carries balance {carried} but folding gives {folded}")]
    BalanceMismatch {
        version: u64,
        carried: Money,
        folded: Money,
    },
    #[error("event {version} would overflow the balance {balance} by {delta}")]
    Overflow {
        version: u64,
        balance: Money,
        delta: Money,
    },
    #[error("event {version} has a delta that cannot exist")]
    InvalidDelta { version: u64 },
    /// The snapshot folded onto does not add up (credits minus debits is not its balance):
    /// an altered or corrupt stored item, never something a fold makes.
    #[error(
        "the snapshot at version {version} does not add up: credits minus debits is not its balance"
    )]
    Inconsistent { version: u64 },
}

/// Folds one event onto `snapshot` (see [`apply_effect`]).
pub fn apply(snapshot: &mut Snapshot, event: &Event) -> Result<Outcome, FoldError> {
    let effect = event.effect().ok_or(FoldError::InvalidDelta {
        version: event.version,
    })?;
    apply_effect(snapshot, effect)
}

/// The hot fold. Checks every step; on any error `snapshot` is untouched.
///
/// Always inlined, and written so that no field's address is taken: in a loop over a local
/// snapshot (`fold_group`) the compiler keeps the snapshot in registers across events
/// instead of a call and a round trip through memory per event. Every new value is
/// computed before the first write.
#[inline(always)]
pub fn apply_effect(snapshot: &mut Snapshot, e: Effect) -> Result<Outcome, FoldError> {
    let expected = snapshot.version.wrapping_add(1);
    if e.version != expected || snapshot.version == u64::MAX {
        return Ok(if e.version <= snapshot.version {
            Outcome::Duplicate
        } else {
            Outcome::Gap { expected }
        });
    }
    let overflow = || overflow(e, snapshot.balance);
    let folded = snapshot.balance.checked_add(e.delta).ok_or_else(overflow)?;
    if folded != e.balance {
        return Err(mismatch(e, folded));
    }
    let delta = e.delta.minor();
    let magnitude = u128::from(delta.unsigned_abs());
    // Counts and totals cannot overflow (u64 events of < 2^63 each), but stay checked.
    let (credit_total, credit_count, debit_total, debit_count) = if delta >= 0 {
        (
            snapshot.credit_total.checked_add(magnitude),
            snapshot.credit_count.checked_add(1),
            Some(snapshot.debit_total),
            Some(snapshot.debit_count),
        )
    } else {
        (
            Some(snapshot.credit_total),
            Some(snapshot.credit_count),
            snapshot.debit_total.checked_add(magnitude),
            snapshot.debit_count.checked_add(1),
        )
    };
    let (Some(credit_total), Some(credit_count), Some(debit_total), Some(debit_count)) =
        (credit_total, credit_count, debit_total, debit_count)
    else {
        return Err(overflow());
    };
    let (month, month_balance) = match snapshot.month {
        Some(current) if current.contains(e.occurred_at) => (
            Some(current),
            snapshot
                .month_balance
                .checked_add(i128::from(delta))
                .ok_or_else(overflow)?,
        ),
        // A mutation the simulator must catch: an earlier month's event counted in the
        // current month's figure.
        #[cfg(feature = "mutation-month")]
        Some(current) if !current.is_before(e.occurred_at) => (
            Some(current),
            snapshot
                .month_balance
                .checked_add(i128::from(delta))
                .ok_or_else(overflow)?,
        ),
        // An event of an earlier month changes the balance, not the month figure.
        #[cfg(not(feature = "mutation-month"))]
        Some(current) if !current.is_before(e.occurred_at) => {
            (Some(current), snapshot.month_balance)
        }
        _ => (Some(e.occurred_at.month()), i128::from(delta)),
    };
    snapshot.credit_total = credit_total;
    snapshot.credit_count = credit_count;
    snapshot.debit_total = debit_total;
    snapshot.debit_count = debit_count;
    snapshot.month = month;
    snapshot.month_balance = month_balance;
    if snapshot.last_occurred_at.is_none_or(|t| t < e.occurred_at) {
        snapshot.last_occurred_at = Some(e.occurred_at);
    }
    snapshot.updated_at = Some(e.recorded_at);
    snapshot.version = e.version;
    snapshot.balance = folded;
    // A consistent snapshot stays consistent (each arm above moves a total and the balance by
    // the same delta); folds check it once where they start (`Snapshot::adds_up`), since a
    // stored item is input.
    Ok(Outcome::Applied)
}

#[cold]
fn overflow(e: Effect, balance: Money) -> FoldError {
    FoldError::Overflow {
        version: e.version,
        balance,
        delta: e.delta,
    }
}

#[cold]
fn mismatch(e: Effect, folded: Money) -> FoldError {
    FoldError::BalanceMismatch {
        version: e.version,
        carried: e.balance,
        folded,
    }
}
