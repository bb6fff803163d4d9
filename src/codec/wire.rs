//! The archived shapes of pages and aggregates (rkyv 0.8), and their conversion to and from
//! the domain. Archived values are read in place; every value read is validated again as a
//! domain value, because a well-formed archive can still hold a nonsensical ledger.
//!
//! Changing a field here changes the wire format: bump `record::FORMAT_VERSION`. The serde
//! derives exist for the benchmarks' side-by-side comparison, not for any stored format.

use rkyv::{Archive, Deserialize, Serialize};

use super::CodecError;
use crate::domain::{
    AccountId, Effect, Event, EventKind, Money, Page, Timestamp, TxnId, account::check_id,
};

/// One stream record's content: pages of one or more accounts of the same bucket.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
    Default,
)]
#[rkyv(derive(Debug))]
pub struct WireAggregate {
    pub pages: Vec<WirePage>,
}

/// A run of consecutive events of one account. Versions are implied: `first_version + i`,
/// so a page cannot hold a gap or a duplicate.
#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub struct WirePage {
    pub account: String,
    pub first_version: u64,
    pub events: Vec<WireEvent>,
}

#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub struct WireEvent {
    pub txn_id: String,
    pub kind: WireKind,
    pub occurred_at: i64,
    pub recorded_at: i64,
    pub balance: i64,
}

#[derive(
    Archive,
    Serialize,
    Deserialize,
    serde::Serialize,
    serde::Deserialize,
    Debug,
    Clone,
    PartialEq,
    Eq,
)]
#[rkyv(derive(Debug))]
pub enum WireKind {
    Deposited { amount: i64 },
    Withdrawn { amount: i64 },
    Reversed { reverses: String, delta: i64 },
}

impl WirePage {
    pub fn from_page(page: &Page) -> WirePage {
        WirePage {
            account: page.account.as_str().to_owned(),
            first_version: page.first_version(),
            events: page.events().iter().map(WireEvent::from_event).collect(),
        }
    }
}

impl WireEvent {
    pub fn from_event(e: &Event) -> WireEvent {
        let kind = match &e.kind {
            EventKind::Deposited { amount } => WireKind::Deposited {
                amount: amount.minor(),
            },
            EventKind::Withdrawn { amount } => WireKind::Withdrawn {
                amount: amount.minor(),
            },
            EventKind::Reversed { reverses, delta } => WireKind::Reversed {
                reverses: reverses.as_str().to_owned(),
                delta: delta.minor(),
            },
        };
        WireEvent {
            txn_id: e.txn_id.as_str().to_owned(),
            kind,
            occurred_at: e.occurred_at.millis(),
            recorded_at: e.recorded_at.millis(),
            balance: e.balance.minor(),
        }
    }
}

fn invalid(what: &'static str, detail: impl std::fmt::Display) -> CodecError {
    CodecError::Invalid {
        what,
        detail: detail.to_string(),
    }
}

fn timestamp(what: &'static str, ms: i64) -> Result<Timestamp, CodecError> {
    Timestamp::from_millis(ms).ok_or_else(|| invalid(what, format_args!("{ms} ms is out of range")))
}

impl ArchivedWirePage {
    /// The page's account, checked against the id grammar.
    pub fn account(&self) -> Result<&str, CodecError> {
        let account = self.account.as_str();
        check_id(account).map_err(|e| invalid("account", e))?;
        Ok(account)
    }

    /// Version of the `i`-th event; `None` past the end of the version space.
    fn version(&self, i: usize) -> Result<u64, CodecError> {
        let first = self.first_version.to_native();
        if first == 0 {
            return Err(invalid("first_version", "versions start at 1"));
        }
        first
            .checked_add(i as u64)
            .ok_or_else(|| invalid("first_version", "version overflow"))
    }

    /// The fold's view of every event, validated, without allocating.
    pub fn effects(&self) -> impl Iterator<Item = Result<Effect, CodecError>> + '_ {
        self.events
            .iter()
            .enumerate()
            .map(|(i, e)| e.effect(self.version(i)?))
    }

    /// Full domain page: ids, amounts and times all re-validated.
    pub fn to_page(&self) -> Result<Page, CodecError> {
        let account = AccountId::new(self.account.as_str()).map_err(|e| invalid("account", e))?;
        let events = self
            .events
            .iter()
            .enumerate()
            .map(|(i, e)| e.to_event(self.version(i)?))
            .collect::<Result<Vec<_>, _>>()?;
        Page::new(account, events).map_err(|e| invalid("page", e))
    }
}

impl ArchivedWireEvent {
    fn delta(&self) -> Result<i64, CodecError> {
        match &self.kind {
            ArchivedWireKind::Deposited { amount } if amount.to_native() > 0 => {
                Ok(amount.to_native())
            }
            ArchivedWireKind::Withdrawn { amount } if amount.to_native() > 0 => {
                Ok(-amount.to_native())
            }
            ArchivedWireKind::Reversed { delta, .. }
                if delta.to_native() != 0 && delta.to_native() != i64::MIN =>
            {
                Ok(delta.to_native())
            }
            _ => Err(invalid(
                "amount",
                "must be positive (a reversal's delta non-zero)",
            )),
        }
    }

    pub fn effect(&self, version: u64) -> Result<Effect, CodecError> {
        Ok(Effect {
            version,
            delta: Money(self.delta()?),
            occurred_at: timestamp("occurred_at", self.occurred_at.to_native())?,
            recorded_at: timestamp("recorded_at", self.recorded_at.to_native())?,
            balance: Money(self.balance.to_native()),
        })
    }

    pub fn to_event(&self, version: u64) -> Result<Event, CodecError> {
        let effect = self.effect(version)?;
        let txn_id = TxnId::new(self.txn_id.as_str()).map_err(|e| invalid("txn_id", e))?;
        let kind = match &self.kind {
            ArchivedWireKind::Deposited { .. } => EventKind::Deposited {
                amount: effect.delta,
            },
            ArchivedWireKind::Withdrawn { .. } => EventKind::Withdrawn {
                amount: Money(-effect.delta.minor()),
            },
            ArchivedWireKind::Reversed { reverses, .. } => EventKind::Reversed {
                reverses: TxnId::new(reverses.as_str()).map_err(|e| invalid("reverses", e))?,
                delta: effect.delta,
            },
        };
        Ok(Event {
            version,
            txn_id,
            kind,
            occurred_at: effect.occurred_at,
            recorded_at: effect.recorded_at,
            balance: effect.balance,
        })
    }
}
