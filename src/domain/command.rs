//! Commands and the rules: `decide` turns a command and the account's current state into
//! events, or a typed rejection. What becomes of a rejection (recorded as the txn id's
//! outcome, or not) is `txn`'s business.

use super::account::TxnId;
use super::event::{Event, EventKind, TxnKind, TxnRecord};
use super::limits::Policy;
use super::money::Money;
use super::time::Timestamp;

/// What a client asks the ledger to do to one account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Deposit {
        txn_id: TxnId,
        amount: Money,
        occurred_at: Timestamp,
    },
    Withdraw {
        txn_id: TxnId,
        amount: Money,
        occurred_at: Timestamp,
    },
    Reverse {
        txn_id: TxnId,
        reverses: TxnId,
        occurred_at: Timestamp,
    },
}

impl Command {
    pub fn txn_id(&self) -> &TxnId {
        match self {
            Command::Deposit { txn_id, .. }
            | Command::Withdraw { txn_id, .. }
            | Command::Reverse { txn_id, .. } => txn_id,
        }
    }

    /// The transaction a reversal targets, which the caller must look up before `decide`.
    pub fn reverses(&self) -> Option<&TxnId> {
        match self {
            Command::Reverse { reverses, .. } => Some(reverses),
            Command::Deposit { .. } | Command::Withdraw { .. } => None,
        }
    }
}

/// The write model: the tip of the account's event stream (its newest event's version and
/// balance). A new account is `AccountState::default()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AccountState {
    pub version: u64,
    pub balance: Money,
}

impl AccountState {
    /// The state an event leaves behind; state-carrying events make this a field copy.
    pub fn after(event: &Event) -> AccountState {
        AccountState {
            version: event.version,
            balance: event.balance,
        }
    }
}

/// Why a command was refused. Each expected case is its own variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("amount {amount} is outside 1..={max}")]
    AmountOutOfRange { amount: Money, max: i64 },
    #[error(
        "insufficient funds: balance {balance}, withdrawal {amount}, overdraft limit {overdraft_limit}"
    )]
    InsufficientFunds {
        balance: Money,
        amount: Money,
        overdraft_limit: i64,
    },
    #[error("transaction {reverses} to reverse was never booked on this account")]
    UnknownReversalTarget { reverses: TxnId },
    #[error("transaction {reverses} is already reversed")]
    AlreadyReversed { reverses: TxnId },
    #[error("transaction {reverses} is itself a reversal and cannot be reversed")]
    ReversalOfReversal { reverses: TxnId },
    #[error("the balance {balance} would overflow by applying {delta}")]
    BalanceOverflow { balance: Money, delta: Money },
    #[error("the account has reached the last version number")]
    VersionExhausted,
}

impl Rejection {
    /// The request field a refusal is about, for error bodies and rejects files.
    pub fn field(&self) -> Option<&'static str> {
        match self {
            Rejection::AmountOutOfRange { .. }
            | Rejection::InsufficientFunds { .. }
            | Rejection::BalanceOverflow { .. } => Some("amount"),
            Rejection::UnknownReversalTarget { .. }
            | Rejection::AlreadyReversed { .. }
            | Rejection::ReversalOfReversal { .. } => Some("reverses"),
            Rejection::VersionExhausted => None,
        }
    }

    /// A stable, machine-readable code (the HTTP `error` field).
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::AmountOutOfRange { .. } => "amount_out_of_range",
            Rejection::InsufficientFunds { .. } => "insufficient_funds",
            Rejection::UnknownReversalTarget { .. } => "unknown_reversal_target",
            Rejection::AlreadyReversed { .. } => "already_reversed",
            Rejection::ReversalOfReversal { .. } => "reversal_of_reversal",
            Rejection::BalanceOverflow { .. } => "balance_overflow",
            Rejection::VersionExhausted => "version_exhausted",
        }
    }
}

/// Applies the rules of DESIGN.md to one command. `target` is the stored record of the
/// transaction a `Reverse` names (`None` if the account has no such transaction); it is
/// ignored for other commands. `now` becomes the events' `recorded_at`.
pub fn decide(
    state: &AccountState,
    command: &Command,
    target: Option<&TxnRecord>,
    now: Timestamp,
    policy: &Policy,
) -> Result<Vec<Event>, Rejection> {
    let version = state
        .version
        .checked_add(1)
        .ok_or(Rejection::VersionExhausted)?;
    let (txn_id, kind, occurred_at) = match command {
        Command::Deposit {
            txn_id,
            amount,
            occurred_at,
        } => {
            check_amount(*amount, policy)?;
            (
                txn_id,
                EventKind::Deposited { amount: *amount },
                *occurred_at,
            )
        }
        Command::Withdraw {
            txn_id,
            amount,
            occurred_at,
        } => {
            check_amount(*amount, policy)?;
            check_funds(state.balance, *amount, policy)?;
            (
                txn_id,
                EventKind::Withdrawn { amount: *amount },
                *occurred_at,
            )
        }
        Command::Reverse {
            txn_id,
            reverses,
            occurred_at,
        } => {
            let delta = reversal_delta(reverses, target)?;
            (
                txn_id,
                EventKind::Reversed {
                    reverses: reverses.clone(),
                    delta,
                },
                *occurred_at,
            )
        }
    };
    let delta = kind
        .delta()
        .expect("amounts were checked positive, so negation fits");
    let balance = state
        .balance
        .checked_add(delta)
        .ok_or(Rejection::BalanceOverflow {
            balance: state.balance,
            delta,
        })?;
    Ok(vec![Event {
        version,
        txn_id: txn_id.clone(),
        kind,
        occurred_at,
        recorded_at: now,
        balance,
    }])
}

fn check_amount(amount: Money, policy: &Policy) -> Result<(), Rejection> {
    if amount.minor() < 1 || amount.minor() > policy.amount_max {
        return Err(Rejection::AmountOutOfRange {
            amount,
            max: policy.amount_max,
        });
    }
    Ok(())
}

/// The balance may not end below `-overdraft_limit`. Compared in i128 so an enormous
/// withdrawal is "insufficient funds", not an overflow.
fn check_funds(balance: Money, amount: Money, policy: &Policy) -> Result<(), Rejection> {
    let after = i128::from(balance.minor()) - i128::from(amount.minor());
    // A mutation the simulator must catch: one minor unit past the overdraft limit passes.
    #[cfg(feature = "mutation-overdraft")]
    let after = after + 1;
    if after < -i128::from(policy.overdraft_limit) {
        return Err(Rejection::InsufficientFunds {
            balance,
            amount,
            overdraft_limit: policy.overdraft_limit,
        });
    }
    Ok(())
}

fn reversal_delta(reverses: &TxnId, target: Option<&TxnRecord>) -> Result<Money, Rejection> {
    let target = target.ok_or_else(|| Rejection::UnknownReversalTarget {
        reverses: reverses.clone(),
    })?;
    if target.kind == TxnKind::Reversal {
        return Err(Rejection::ReversalOfReversal {
            reverses: reverses.clone(),
        });
    }
    if target.reversed {
        return Err(Rejection::AlreadyReversed {
            reverses: reverses.clone(),
        });
    }
    // Deposits and withdrawals have |delta| ≤ i64::MAX, so the negation always fits; a
    // corrupt record that says otherwise is refused as an overflow rather than a panic.
    target
        .delta
        .checked_neg()
        .ok_or(Rejection::BalanceOverflow {
            balance: Money::ZERO,
            delta: target.delta,
        })
}
