//! Events: immutable facts in the past tense. Each carries the account's balance after it
//! (a state-carrying event), so the newest stored event *is* the write model.

use super::account::TxnId;
use super::money::Money;
use super::time::Timestamp;

/// What happened, with the numbers needed to fold it without any other event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// Money came in: `amount` > 0.
    Deposited { amount: Money },
    /// Money went out: `amount` > 0.
    Withdrawn { amount: Money },
    /// An earlier transaction was undone. `delta` is the signed change this event makes to
    /// the balance: the negation of the reversed transaction's own change.
    Reversed { reverses: TxnId, delta: Money },
}

/// One booked transaction of one account. The account itself is the key of the page that
/// holds the event, not a field of every event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// 1, 2, 3, … per account, without gap or duplicate.
    pub version: u64,
    pub txn_id: TxnId,
    pub kind: EventKind,
    /// Business time: when it happened, as the client says.
    pub occurred_at: Timestamp,
    /// Ledger time: when the ledger accepted it.
    pub recorded_at: Timestamp,
    /// The account balance right after this event.
    pub balance: Money,
}

/// The part of an event a fold needs: plain `Copy` data, no strings. The projector builds it
/// straight from archived bytes, so folding allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Effect {
    pub version: u64,
    /// Signed change to the balance.
    pub delta: Money,
    pub occurred_at: Timestamp,
    pub recorded_at: Timestamp,
    /// The balance the event says it leads to; the fold checks it.
    pub balance: Money,
}

impl Effect {
    /// A filler value for preallocated buffers; version 0 never folds.
    pub const PLACEHOLDER: Effect = Effect {
        version: 0,
        delta: Money(0),
        occurred_at: Timestamp::MIN,
        recorded_at: Timestamp::MIN,
        balance: Money(0),
    };
}

impl EventKind {
    /// Signed change to the balance; `None` only for a withdrawal of `i64::MIN`, which
    /// `decide` never produces and a decoder must refuse.
    pub fn delta(&self) -> Option<Money> {
        match self {
            EventKind::Deposited { amount } => Some(*amount),
            EventKind::Withdrawn { amount } => amount.checked_neg(),
            EventKind::Reversed { delta, .. } => Some(*delta),
        }
    }

    /// The transaction class this event books, as a later reversal sees it.
    pub fn txn_kind(&self) -> TxnKind {
        match self {
            EventKind::Deposited { .. } => TxnKind::Deposit,
            EventKind::Withdrawn { .. } => TxnKind::Withdrawal,
            EventKind::Reversed { .. } => TxnKind::Reversal,
        }
    }
}

impl Event {
    /// The fold's view of this event; `None` if the event's delta cannot exist (see
    /// [`EventKind::delta`]).
    pub fn effect(&self) -> Option<Effect> {
        Some(Effect {
            version: self.version,
            delta: self.kind.delta()?,
            occurred_at: self.occurred_at,
            recorded_at: self.recorded_at,
            balance: self.balance,
        })
    }

    /// What a later reversal needs to know about this event's transaction.
    pub fn txn_record(&self, reversed: bool) -> Option<TxnRecord> {
        Some(TxnRecord {
            kind: self.kind.txn_kind(),
            delta: self.kind.delta()?,
            reversed,
        })
    }
}

/// The three kinds of transaction a client can book.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxnKind {
    Deposit,
    Withdrawal,
    Reversal,
}

/// A past transaction of an account, as the event store's transaction marker records it:
/// enough for `decide` to judge a reversal of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxnRecord {
    pub kind: TxnKind,
    /// The change it made to the balance.
    pub delta: Money,
    /// Whether a reversal of it has already been booked.
    pub reversed: bool,
}

/// A run of consecutive events of one account: the event store's unit of append and the
/// stream's unit of aggregation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub account: super::account::AccountId,
    events: Vec<Event>,
}

/// Why events cannot form a page.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PageError {
    #[error("a page needs at least one event")]
    Empty,
    #[error("event versions must be consecutive from 1 or more: found {found} after {previous}")]
    NotConsecutive { previous: u64, found: u64 },
}

impl Page {
    /// Checks that versions are consecutive and start at 1 or above.
    pub fn new(account: super::account::AccountId, events: Vec<Event>) -> Result<Page, PageError> {
        let first = events.first().ok_or(PageError::Empty)?;
        if first.version == 0 {
            return Err(PageError::NotConsecutive {
                previous: 0,
                found: 0,
            });
        }
        for pair in events.windows(2) {
            if pair[0].version.checked_add(1) != Some(pair[1].version) {
                return Err(PageError::NotConsecutive {
                    previous: pair[0].version,
                    found: pair[1].version,
                });
            }
        }
        Ok(Page { account, events })
    }

    pub fn events(&self) -> &[Event] {
        &self.events
    }

    pub fn into_events(self) -> Vec<Event> {
        self.events
    }

    pub fn first_version(&self) -> u64 {
        self.events[0].version
    }

    pub fn last_version(&self) -> u64 {
        self.events[self.events.len() - 1].version
    }
}
