//! The ledger's business logic as plain functions over plain data.
//!
//! Must never: do I/O, spawn or await, read a clock or the environment, or depend on any
//! crate beyond `std` and derives. `decide` holds every rule; `apply` only folds.

pub mod account;
pub mod command;
pub mod event;
pub mod limits;
pub mod money;
pub mod segment;
pub mod snapshot;
pub mod time;
pub mod txn;

pub use account::{AccountId, IdError, TxnId};
pub use command::{AccountState, Command, Rejection, decide};
pub use event::{Effect, Event, EventKind, Page, PageError, TxnKind, TxnRecord};
pub use limits::{Policy, PolicyError};
pub use money::Money;
pub use segment::Segment;
pub use snapshot::{FoldError, Outcome, Snapshot, apply, apply_effect};
pub use time::{Month, Timestamp};
pub use txn::{
    Decision, Entry, Outcomes, RecordError, Refusal, TxnOutcome, decide_run, describe_reuse, record,
};
