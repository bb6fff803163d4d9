//! A reference ledger written apart from `src/domain`: it keeps the full event list and
//! recomputes everything from it with plain loops and wide integers. Slow and obviously
//! right; the production `decide`/`apply` must agree with it everywhere. Shared by the
//! state × event matrix (`tests/it/matrix.rs`) and the simulator's checker.
//!
//! Must never: call into `crate::domain` (it is the independent opinion), or be used on a
//! hot path.

use time::OffsetDateTime;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefCmd {
    Deposit {
        txn: String,
        amount: i64,
        at: i64,
    },
    Withdraw {
        txn: String,
        amount: i64,
        at: i64,
    },
    Reverse {
        txn: String,
        target: String,
        at: i64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    pub txn: String,
    /// "deposit", "withdrawal" or "reversal".
    pub kind: &'static str,
    pub target: Option<String>,
    pub delta: i64,
    pub at: i64,
    pub recorded: i64,
}

#[derive(Debug, Clone, Default)]
pub struct RefLedger {
    /// Versions before the first listed event (to reach the end of the version space).
    pub version_offset: u64,
    pub events: Vec<RefEvent>,
    pub amount_max: i64,
    pub overdraft: i64,
}

/// The expected snapshot, every field recomputed from the whole list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefSnapshot {
    pub version: u64,
    pub balance: i128,
    pub month: Option<(i32, u8)>,
    pub month_balance: i128,
    pub credit_total: i128,
    pub credit_count: u64,
    pub debit_total: i128,
    pub debit_count: u64,
    pub last_occurred_at: Option<i64>,
    pub updated_at: Option<i64>,
}

pub fn year_month(ms: i64) -> (i32, u8) {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .expect("ledger times (years 1970-9999) have a calendar date");
    (t.year(), t.month() as u8)
}

impl RefLedger {
    pub fn new(amount_max: i64, overdraft: i64) -> RefLedger {
        RefLedger {
            version_offset: 0,
            events: Vec::new(),
            amount_max,
            overdraft,
        }
    }

    pub fn balance(&self) -> i128 {
        self.events.iter().map(|e| i128::from(e.delta)).sum()
    }

    pub fn version(&self) -> u128 {
        u128::from(self.version_offset) + self.events.len() as u128
    }

    /// The rule book, in the order DESIGN.md states it. `Err` is a rejection tag.
    pub fn decide(&self, cmd: &RefCmd, now: i64) -> Result<RefEvent, &'static str> {
        if self.version() + 1 > u128::from(u64::MAX) {
            return Err("version_exhausted");
        }
        let amount_ok = |a: i64| a >= 1 && a <= self.amount_max;
        let event = match cmd {
            RefCmd::Deposit { txn, amount, at } => {
                if !amount_ok(*amount) {
                    return Err("amount_out_of_range");
                }
                RefEvent {
                    txn: txn.clone(),
                    kind: "deposit",
                    target: None,
                    delta: *amount,
                    at: *at,
                    recorded: now,
                }
            }
            RefCmd::Withdraw { txn, amount, at } => {
                if !amount_ok(*amount) {
                    return Err("amount_out_of_range");
                }
                if self.balance() - i128::from(*amount) < -i128::from(self.overdraft) {
                    return Err("insufficient_funds");
                }
                RefEvent {
                    txn: txn.clone(),
                    kind: "withdrawal",
                    target: None,
                    delta: -amount,
                    at: *at,
                    recorded: now,
                }
            }
            RefCmd::Reverse { txn, target, at } => {
                let Some(original) = self.events.iter().find(|e| &e.txn == target) else {
                    return Err("unknown_reversal_target");
                };
                if original.kind == "reversal" {
                    return Err("reversal_of_reversal");
                }
                if self
                    .events
                    .iter()
                    .any(|e| e.target.as_ref() == Some(target))
                {
                    return Err("already_reversed");
                }
                RefEvent {
                    txn: txn.clone(),
                    kind: "reversal",
                    target: Some(target.clone()),
                    delta: -original.delta,
                    at: *at,
                    recorded: now,
                }
            }
        };
        let after = self.balance() + i128::from(event.delta);
        if after > i128::from(i64::MAX) || after < i128::from(i64::MIN) {
            return Err("balance_overflow");
        }
        Ok(event)
    }

    /// Decides and, if accepted, records. Panics on rejection: for building fixtures.
    pub fn must(&mut self, cmd: RefCmd, now: i64) -> &mut RefLedger {
        let e = self
            .decide(&cmd, now)
            .unwrap_or_else(|r| panic!("fixture command {cmd:?} rejected: {r}"));
        self.events.push(e);
        self
    }

    pub fn snapshot(&self) -> RefSnapshot {
        let month = self.events.iter().map(|e| year_month(e.at)).max();
        let in_month = |e: &&RefEvent| Some(year_month(e.at)) == month;
        RefSnapshot {
            version: self.version() as u64,
            balance: self.balance(),
            month,
            month_balance: self
                .events
                .iter()
                .filter(in_month)
                .map(|e| i128::from(e.delta))
                .sum(),
            credit_total: self
                .events
                .iter()
                .filter(|e| e.delta > 0)
                .map(|e| i128::from(e.delta))
                .sum(),
            credit_count: self.events.iter().filter(|e| e.delta > 0).count() as u64,
            debit_total: self
                .events
                .iter()
                .filter(|e| e.delta < 0)
                .map(|e| -i128::from(e.delta))
                .sum(),
            debit_count: self.events.iter().filter(|e| e.delta < 0).count() as u64,
            last_occurred_at: self.events.iter().map(|e| e.at).max(),
            updated_at: self.events.last().map(|e| e.recorded),
        }
    }
}

/// What the reference answers for one submission, remembering every txn id's first outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefOutcome {
    Booked(RefEvent),
    /// Refused by the rules (tag); remembered.
    Refused(&'static str),
    /// Refused as invalid input (tag); not remembered.
    Invalid(&'static str),
    Duplicate(RefEvent),
    ReplayedRefusal(&'static str),
    /// The id is remembered for another request; the first field that differs.
    Reused(&'static str),
}

/// A reference ledger that also keeps each txn id's first outcome forever.
#[derive(Debug, Clone, Default)]
pub struct RefBook {
    pub ledger: RefLedger,
    /// txn id → the command it answered, and the outcome (event, or refusal tag).
    pub outcomes: std::collections::HashMap<String, (RefCmd, Result<RefEvent, &'static str>)>,
}

fn ref_txn(c: &RefCmd) -> &str {
    match c {
        RefCmd::Deposit { txn, .. }
        | RefCmd::Withdraw { txn, .. }
        | RefCmd::Reverse { txn, .. } => txn,
    }
}

/// The first field in which two requests differ: kind, amount, reverses, occurred_at.
fn first_difference(a: &RefCmd, b: &RefCmd) -> Option<&'static str> {
    use RefCmd::*;
    let kind = |c: &RefCmd| match c {
        Deposit { .. } => 0,
        Withdraw { .. } => 1,
        Reverse { .. } => 2,
    };
    let amount = |c: &RefCmd| match c {
        Deposit { amount, .. } | Withdraw { amount, .. } => Some(*amount),
        Reverse { .. } => None,
    };
    let target = |c: &RefCmd| match c {
        Reverse { target, .. } => Some(target.clone()),
        _ => None,
    };
    let at = |c: &RefCmd| match c {
        Deposit { at, .. } | Withdraw { at, .. } | Reverse { at, .. } => *at,
    };
    if kind(a) != kind(b) {
        Some("kind")
    } else if amount(a) != amount(b) {
        Some("amount")
    } else if target(a) != target(b) {
        Some("reverses")
    } else if at(a) != at(b) {
        Some("occurred_at")
    } else {
        None
    }
}

impl RefBook {
    pub fn new(amount_max: i64, overdraft: i64) -> RefBook {
        RefBook {
            ledger: RefLedger::new(amount_max, overdraft),
            outcomes: Default::default(),
        }
    }

    pub fn submit(&mut self, cmd: &RefCmd, now: i64) -> RefOutcome {
        let txn = ref_txn(cmd).to_string();
        if let Some((first, outcome)) = self.outcomes.get(&txn) {
            return match (first_difference(first, cmd), outcome) {
                (Some(field), _) => RefOutcome::Reused(field),
                (None, Ok(e)) => RefOutcome::Duplicate(e.clone()),
                (None, Err(tag)) => RefOutcome::ReplayedRefusal(tag),
            };
        }
        match self.ledger.decide(cmd, now) {
            Ok(e) => {
                self.ledger.events.push(e.clone());
                self.outcomes.insert(txn, (cmd.clone(), Ok(e.clone())));
                RefOutcome::Booked(e)
            }
            Err("amount_out_of_range") => RefOutcome::Invalid("amount_out_of_range"),
            Err(tag) => {
                self.outcomes.insert(txn, (cmd.clone(), Err(tag)));
                RefOutcome::Refused(tag)
            }
        }
    }
}
