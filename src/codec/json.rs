//! The JSON shapes users see, shared by the CLI's `--json` and the HTTP API so both print
//! the same thing. Money is an integer of minor units; times are RFC 3339 UTC.

use serde::Serialize;

use crate::domain::{Event, EventKind, Money, Snapshot, Timestamp};

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct BalanceView {
    pub account: String,
    pub version: u64,
    pub balance: i64,
    pub month: Option<String>,
    pub month_balance: i128,
    pub credit_total: u128,
    pub credit_count: u64,
    pub debit_total: u128,
    pub debit_count: u64,
    pub last_occurred_at: Option<String>,
    pub updated_at: Option<String>,
}

impl BalanceView {
    pub fn new(account: &str, s: &Snapshot) -> BalanceView {
        BalanceView {
            account: account.to_owned(),
            version: s.version,
            balance: s.balance.minor(),
            month: s.month.map(|m| m.to_string()),
            month_balance: s.month_balance,
            credit_total: s.credit_total,
            credit_count: s.credit_count,
            debit_total: s.debit_total,
            debit_count: s.debit_count,
            last_occurred_at: s.last_occurred_at.map(|t| t.to_string()),
            updated_at: s.updated_at.map(|t| t.to_string()),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PointInTimeView {
    pub account: String,
    pub at: String,
    pub balance: i64,
    pub events: u64,
}

impl PointInTimeView {
    pub fn new(account: &str, at: Timestamp, balance: Money, events: u64) -> PointInTimeView {
        PointInTimeView {
            account: account.to_owned(),
            at: at.to_string(),
            balance: balance.minor(),
            events,
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct EventView {
    pub version: u64,
    pub txn_id: String,
    /// `deposit`, `withdrawal` or `reversal`.
    pub kind: &'static str,
    /// Signed change to the balance.
    pub amount: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reverses: Option<String>,
    pub occurred_at: String,
    pub recorded_at: String,
    pub balance: i64,
}

impl EventView {
    pub fn new(e: &Event) -> EventView {
        let (kind, reverses) = match &e.kind {
            EventKind::Deposited { .. } => ("deposit", None),
            EventKind::Withdrawn { .. } => ("withdrawal", None),
            EventKind::Reversed { reverses, .. } => ("reversal", Some(reverses.to_string())),
        };
        EventView {
            version: e.version,
            txn_id: e.txn_id.to_string(),
            kind,
            amount: e.kind.delta().map_or(0, |d| d.minor()),
            reverses,
            occurred_at: e.occurred_at.to_string(),
            recorded_at: e.recorded_at.to_string(),
            balance: e.balance.minor(),
        }
    }
}
