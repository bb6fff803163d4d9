//! What the simulated clients were told, command by command, and what the checker says
//! about a run.
//!
//! Must never: hold anything the system under test could change after the fact.

use crate::domain::{AccountId, Command, Event, Refusal, Rejection, TxnOutcome};

/// The answer a client got for one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Booked(Event),
    Duplicate(Event),
    /// Newly refused by the rules (recorded as the id's outcome).
    Rejected(Rejection),
    /// The id's recorded refusal, answered again.
    ReplayedRefusal(Refusal),
    /// The id already had an outcome for a different request.
    Reused {
        field: &'static str,
        original: Box<TxnOutcome>,
    },
    /// Invalid input (an amount out of range): not an outcome of the id.
    Invalid(Rejection),
    /// No answer: an error, a crash mid-call, or a bulk file (whose summary counts rows
    /// but does not say which row got which outcome).
    Unknown(String),
}

/// One command sent once.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub client: usize,
    /// Which call (all commands of one `submit_chunks` share it).
    pub call: u64,
    /// Position of the command in its account's chunk of the call.
    pub index: usize,
    pub account: AccountId,
    pub command: Command,
    pub outcome: Outcome,
}

/// The client id of the resubmissions made once the run has healed.
pub const RESUBMITTER: usize = usize::MAX;

/// Which contract a violation breaks. Every class fails a run: issue 8's defects 1
/// (append atomicity) and 2 (cache eviction) are fixed, so no open defect is exempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Class {
    /// A new defect (or a defect of the simulator).
    New,
    /// A contract of issue 10 (one outcome per txn id forever).
    Issue10,
}

impl Class {
    /// The class's name in reports.
    pub fn label(self) -> &'static str {
        match self {
            Class::New => "NEW",
            Class::Issue10 => "issue 10 contract (one txn id, one outcome)",
        }
    }
}

/// One broken promise.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub class: Class,
    pub account: Option<String>,
    pub what: String,
}

impl Violation {
    pub fn new(account: Option<&str>, what: impl Into<String>) -> Violation {
        Violation {
            class: Class::New,
            account: account.map(str::to_owned),
            what: what.into(),
        }
    }

    pub fn class(mut self, class: Class) -> Violation {
        self.class = class;
        self
    }
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.account {
            Some(a) => write!(f, "[{}] {a}: {}", self.class.label(), self.what),
            None => write!(f, "[{}] {}", self.class.label(), self.what),
        }
    }
}
