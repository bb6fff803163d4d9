//! Production values seen the reference model's way (`RefEvent`, `RefSnapshot`, `RefCmd`),
//! and whether an event books what a command asked. The one place that knows both shapes.
//!
//! Must never: judge anything (the checker does), or let the reference model see a
//! production type.

use crate::domain::{Command, Event, EventKind, Snapshot};
use crate::sim::reference::{RefCmd, RefEvent, RefSnapshot};

/// The reference view of a production event.
pub fn ref_event(e: &Event) -> RefEvent {
    let (kind, target) = match &e.kind {
        EventKind::Deposited { .. } => ("deposit", None),
        EventKind::Withdrawn { .. } => ("withdrawal", None),
        EventKind::Reversed { reverses, .. } => ("reversal", Some(reverses.to_string())),
    };
    RefEvent {
        txn: e.txn_id.to_string(),
        kind,
        target,
        delta: e.kind.delta().map_or(0, |d| d.minor()),
        at: e.occurred_at.millis(),
        recorded: e.recorded_at.millis(),
    }
}

/// The reference view of a production snapshot.
pub fn ref_snapshot(s: &Snapshot) -> RefSnapshot {
    RefSnapshot {
        version: s.version,
        balance: i128::from(s.balance.minor()),
        month: s.month.map(|m| (m.year() as i32, m.month() as u8)),
        month_balance: s.month_balance,
        credit_total: s.credit_total as i128,
        credit_count: s.credit_count,
        debit_total: s.debit_total as i128,
        debit_count: s.debit_count,
        last_occurred_at: s.last_occurred_at.map(|t| t.millis()),
        updated_at: s.updated_at.map(|t| t.millis()),
    }
}

/// The command an event books, as the reference model takes it.
pub(crate) fn ref_cmd(e: &Event) -> RefCmd {
    let (txn, at) = (e.txn_id.to_string(), e.occurred_at.millis());
    match &e.kind {
        EventKind::Deposited { amount } => RefCmd::Deposit {
            txn,
            amount: amount.minor(),
            at,
        },
        EventKind::Withdrawn { amount } => RefCmd::Withdraw {
            txn,
            amount: amount.minor(),
            at,
        },
        EventKind::Reversed { reverses, .. } => RefCmd::Reverse {
            txn,
            target: reverses.to_string(),
            at,
        },
    }
}

/// Whether `e` books exactly what `c` asked for.
pub(crate) fn same_content(c: &Command, e: &Event) -> bool {
    let content = match (c, &e.kind) {
        (
            Command::Deposit {
                amount,
                occurred_at,
                ..
            },
            EventKind::Deposited { amount: a },
        )
        | (
            Command::Withdraw {
                amount,
                occurred_at,
                ..
            },
            EventKind::Withdrawn { amount: a },
        ) => amount == a && *occurred_at == e.occurred_at,
        (
            Command::Reverse {
                reverses,
                occurred_at,
                ..
            },
            EventKind::Reversed { reverses: r, .. },
        ) => reverses == r && *occurred_at == e.occurred_at,
        _ => false,
    };
    content && c.txn_id() == &e.txn_id
}
