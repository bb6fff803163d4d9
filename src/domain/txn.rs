//! One transaction id, one outcome, per account, forever. The first time a txn id reaches
//! the rules it is booked (an event) or refused (a [`Refusal`] with its figures); this module
//! holds that outcome, the rule that recording it writes (its own marker, and for a reversal
//! its target's `reversed` flag), and how a later submission of the same id is answered.
//!
//! Stores and the command service all record outcomes through [`record`]: the rule is written
//! here once. The DynamoDB adapter expresses the same rule as item conditions and says so.

use super::account::TxnId;
use super::command::{AccountState, Command, Rejection, decide};
use super::event::{Event, EventKind, TxnRecord};
use super::limits::Policy;
use super::time::Timestamp;

/// A command the rules refused, kept so the same txn id is answered the same way forever.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub command: Command,
    pub rejection: Rejection,
    /// The account's version when it was decided (the state the figures describe).
    pub version: u64,
}

/// What the ledger remembers about a txn id of an account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Booked as `event`; `reversed` once a reversal of it is booked.
    Booked {
        event: Event,
        reversed: bool,
    },
    Refused(Refusal),
}

impl TxnOutcome {
    /// The command this outcome answered (what a resubmission is compared with).
    pub fn command(&self) -> Command {
        match self {
            TxnOutcome::Booked { event, .. } => event.command(),
            TxnOutcome::Refused(r) => r.command.clone(),
        }
    }

    /// What `decide` needs to judge a reversal of this transaction; `None` if it was never
    /// booked (a refused transaction has nothing to reverse).
    pub fn as_target(&self) -> Option<TxnRecord> {
        match self {
            TxnOutcome::Booked { event, reversed } => event.txn_record(*reversed),
            TxnOutcome::Refused(_) => None,
        }
    }
}

impl Event {
    /// The command that booked this event.
    pub fn command(&self) -> Command {
        let (txn_id, occurred_at) = (self.txn_id.clone(), self.occurred_at);
        match &self.kind {
            EventKind::Deposited { amount } => Command::Deposit {
                txn_id,
                amount: *amount,
                occurred_at,
            },
            EventKind::Withdrawn { amount } => Command::Withdraw {
                txn_id,
                amount: *amount,
                occurred_at,
            },
            EventKind::Reversed { reverses, .. } => Command::Reverse {
                txn_id,
                reverses: reverses.clone(),
                occurred_at,
            },
        }
    }
}

impl Command {
    /// The first field in which `self` differs from `other`, in the order `kind`, `amount`,
    /// `reverses`, `occurred_at`; `None` if they ask for the same thing.
    pub fn first_difference(&self, other: &Command) -> Option<&'static str> {
        use Command::{Deposit, Reverse, Withdraw};
        let (at_a, at_b) = (self.occurred_at(), other.occurred_at());
        let field = match (self, other) {
            (Deposit { amount: a, .. }, Deposit { amount: b, .. })
            | (Withdraw { amount: a, .. }, Withdraw { amount: b, .. }) => {
                (a != b).then_some("amount")
            }
            (Reverse { reverses: a, .. }, Reverse { reverses: b, .. }) => {
                (a != b).then_some("reverses")
            }
            _ => Some("kind"),
        };
        field.or((at_a != at_b).then_some("occurred_at"))
    }

    /// Business time of the command.
    pub fn occurred_at(&self) -> Timestamp {
        match self {
            Command::Deposit { occurred_at, .. }
            | Command::Withdraw { occurred_at, .. }
            | Command::Reverse { occurred_at, .. } => *occurred_at,
        }
    }
}

impl Command {
    /// The value of one of the fields [`Command::first_difference`] names, as text.
    pub fn field_value(&self, field: &str) -> String {
        match (field, self) {
            ("kind", Command::Deposit { .. }) => "deposit".into(),
            ("kind", Command::Withdraw { .. }) => "withdrawal".into(),
            ("kind", Command::Reverse { .. }) => "reversal".into(),
            ("amount", Command::Deposit { amount, .. } | Command::Withdraw { amount, .. }) => {
                amount.to_string()
            }
            ("reverses", Command::Reverse { reverses, .. }) => reverses.to_string(),
            ("occurred_at", c) => c.occurred_at().to_string(),
            _ => "none".into(),
        }
    }
}

/// Why a resubmission is refused as a reuse of its txn id, in words.
pub fn describe_reuse(field: &str, original: &Command, submitted: &Command) -> String {
    format!(
        "txn_id {} was already used on this account for a different request: {field} is {} \
         there and {} here",
        submitted.txn_id(),
        original.field_value(field),
        submitted.field_value(field)
    )
}

impl Rejection {
    /// Whether this refusal is the txn id's outcome forever. A refusal of the input itself
    /// (an amount outside the policy's range) never reached the ledger's state: it is not
    /// recorded, and the id stays free.
    pub fn is_recorded(&self) -> bool {
        !matches!(self, Rejection::AmountOutOfRange { .. })
    }
}

/// The outcomes of one account's txn ids, as far as a caller can see them: stored ones,
/// overlaid by what the caller has recorded but not yet written.
pub trait Outcomes {
    fn outcome(&self, txn: &TxnId) -> Option<TxnOutcome>;
    fn set(&mut self, txn: TxnId, outcome: TxnOutcome);
}

impl Outcomes for std::collections::HashMap<TxnId, TxnOutcome> {
    fn outcome(&self, txn: &TxnId) -> Option<TxnOutcome> {
        self.get(txn).cloned()
    }
    fn set(&mut self, txn: TxnId, outcome: TxnOutcome) {
        self.insert(txn, outcome);
    }
}

/// Why an outcome cannot be recorded: the conditions every store checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("transaction {0} already has an outcome")]
    Taken(TxnId),
    #[error("transaction {0} is not a booked, unreversed transaction")]
    TargetNotLive(TxnId),
}

/// What recording one entry writes (the marker rule): its own outcome, which must not exist
/// yet, and for a booked reversal its target's `reversed` flag, which must be false.
pub enum Entry<'a> {
    Booked(&'a Event),
    Refused(&'a Refusal),
}

/// Records `entry` into `outcomes` if the marker rule's conditions hold; on error nothing
/// changed.
pub fn record(outcomes: &mut impl Outcomes, entry: Entry<'_>) -> Result<(), RecordError> {
    let txn = match &entry {
        Entry::Booked(e) => &e.txn_id,
        Entry::Refused(r) => r.command.txn_id(),
    };
    if outcomes.outcome(txn).is_some() {
        return Err(RecordError::Taken(txn.clone()));
    }
    match entry {
        Entry::Booked(event) => {
            if let EventKind::Reversed { reverses, .. } = &event.kind {
                match outcomes.outcome(reverses) {
                    Some(TxnOutcome::Booked {
                        event: target,
                        reversed: false,
                    }) => outcomes.set(
                        reverses.clone(),
                        TxnOutcome::Booked {
                            event: target,
                            reversed: true,
                        },
                    ),
                    _ => return Err(RecordError::TargetNotLive(reverses.clone())),
                }
            }
            outcomes.set(
                event.txn_id.clone(),
                TxnOutcome::Booked {
                    event: event.clone(),
                    reversed: false,
                },
            );
        }
        Entry::Refused(refusal) => {
            outcomes.set(
                refusal.command.txn_id().clone(),
                TxnOutcome::Refused(refusal.clone()),
            );
        }
    }
    Ok(())
}

/// How one command of a run was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Newly booked: the event to append.
    Booked(Event),
    /// Newly refused by the rules: the refusal to record.
    Refused(Refusal),
    /// Refused before reaching the ledger's state (see [`Rejection::is_recorded`]); nothing
    /// is written and the id stays free.
    Invalid(Rejection),
    /// The id already has an outcome and this submission asks the same: that outcome.
    Replayed(TxnOutcome),
    /// The id already has an outcome for a different request; `field` is the first
    /// difference. Nothing is written.
    Reused {
        field: &'static str,
        original: Box<TxnOutcome>,
    },
}

/// Decides `commands` of one account in order, starting from `state`. Each new outcome is
/// recorded into `outcomes` before the next command is decided, so a run sees its own
/// bookings, refusals and reversals. Returns one decision per command and the state after
/// the last booked event.
pub fn decide_run(
    mut state: AccountState,
    outcomes: &mut impl Outcomes,
    commands: &[Command],
    now: Timestamp,
    policy: &Policy,
) -> (Vec<Decision>, AccountState) {
    let mut out = Vec::with_capacity(commands.len());
    for command in commands {
        if let Some(original) = outcomes.outcome(command.txn_id()) {
            out.push(match command.first_difference(&original.command()) {
                None => Decision::Replayed(original),
                Some(field) => Decision::Reused {
                    field,
                    original: Box::new(original),
                },
            });
            continue;
        }
        let target = command
            .reverses()
            .and_then(|t| outcomes.outcome(t))
            .and_then(|o| o.as_target());
        match decide(&state, command, target.as_ref(), now, policy) {
            Ok(events) => {
                let [event]: [Event; 1] = events
                    .try_into()
                    .expect("decide books exactly one event per accepted command");
                record(outcomes, Entry::Booked(&event))
                    .expect("decide only books unused ids and live targets");
                state = AccountState::after(&event);
                out.push(Decision::Booked(event));
            }
            Err(rejection) if rejection.is_recorded() => {
                let refusal = Refusal {
                    command: command.clone(),
                    rejection,
                    version: state.version,
                };
                record(outcomes, Entry::Refused(&refusal)).expect("the id was checked free above");
                out.push(Decision::Refused(refusal));
            }
            Err(rejection) => out.push(Decision::Invalid(rejection)),
        }
    }
    (out, state)
}
