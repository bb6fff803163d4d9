//! Little-endian layouts for the small values the stores keep: snapshots, txn outcomes and
//! segment summaries (both stores) and tips. Decoding checks lengths and ranges and never panics.

use super::CodecError;
use crate::domain::{
    AccountState, Command, Event, EventKind, Money, Month, Refusal, Rejection, Segment, Snapshot,
    Timestamp, TxnId, TxnOutcome,
};

const SNAPSHOT_BYTES: usize = 101;

fn invalid(what: &'static str, detail: impl std::fmt::Display) -> CodecError {
    CodecError::Invalid {
        what,
        detail: detail.to_string(),
    }
}

/// Reads fixed-size little-endian fields off a slice whose length was checked.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into()
            .expect("length checked before reading fields")
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }
    fn i64(&mut self) -> i64 {
        i64::from_le_bytes(self.take())
    }
    fn u128(&mut self) -> u128 {
        u128::from_le_bytes(self.take())
    }
    fn i128(&mut self) -> i128 {
        i128::from_le_bytes(self.take())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }
}

fn opt_ts(what: &'static str, ms: i64) -> Result<Option<Timestamp>, CodecError> {
    if ms == -1 {
        return Ok(None);
    }
    Timestamp::from_millis(ms)
        .map(Some)
        .ok_or_else(|| invalid(what, ms))
}

pub fn encode_snapshot(s: &Snapshot) -> Vec<u8> {
    let mut out = Vec::with_capacity(SNAPSHOT_BYTES);
    out.push(1); // layout version
    out.extend_from_slice(&s.version.to_le_bytes());
    out.extend_from_slice(&s.balance.minor().to_le_bytes());
    out.extend_from_slice(&s.month.map_or(u32::MAX, Month::index).to_le_bytes());
    out.extend_from_slice(&s.month_balance.to_le_bytes());
    out.extend_from_slice(&s.credit_total.to_le_bytes());
    out.extend_from_slice(&s.credit_count.to_le_bytes());
    out.extend_from_slice(&s.debit_total.to_le_bytes());
    out.extend_from_slice(&s.debit_count.to_le_bytes());
    out.extend_from_slice(
        &s.last_occurred_at
            .map_or(-1, Timestamp::millis)
            .to_le_bytes(),
    );
    out.extend_from_slice(&s.updated_at.map_or(-1, Timestamp::millis).to_le_bytes());
    debug_assert_eq!(out.len(), SNAPSHOT_BYTES);
    out
}

pub fn decode_snapshot(bytes: &[u8]) -> Result<Snapshot, CodecError> {
    if bytes.len() != SNAPSHOT_BYTES || bytes[0] != 1 {
        return Err(invalid(
            "snapshot",
            format_args!("{} bytes, layout {:?}", bytes.len(), bytes.first()),
        ));
    }
    let mut f = Fields(&bytes[1..]);
    let version = f.u64();
    let balance = Money(f.i64());
    let month = match f.u32() {
        u32::MAX => None,
        index => Some(Month::from_index(index).ok_or_else(|| invalid("month", index))?),
    };
    Ok(Snapshot {
        version,
        balance,
        month,
        month_balance: f.i128(),
        credit_total: f.u128(),
        credit_count: f.u64(),
        debit_total: f.u128(),
        debit_count: f.u64(),
        last_occurred_at: opt_ts("last_occurred_at", f.i64())?,
        updated_at: opt_ts("updated_at", f.i64())?,
    })
}

/// Layout version of an encoded [`TxnOutcome`].
const OUTCOME_LAYOUT: u8 = 2;

/// A txn id's outcome, as both stores keep it (the txn id itself is the key). Booked: the
/// whole event, so a duplicate is answered without reading its page; refused: the command
/// and the rejection with its figures.
pub fn encode_outcome(outcome: &TxnOutcome) -> Vec<u8> {
    let mut w = Vec::with_capacity(64);
    w.push(OUTCOME_LAYOUT);
    match outcome {
        TxnOutcome::Booked { event, reversed } => {
            w.push(1);
            w.push(u8::from(*reversed));
            w.extend_from_slice(&event.version.to_le_bytes());
            let (kind, figure, reverses) = match &event.kind {
                EventKind::Deposited { amount } => (1, *amount, None),
                EventKind::Withdrawn { amount } => (2, *amount, None),
                EventKind::Reversed { reverses, delta } => (3, *delta, Some(reverses)),
            };
            w.push(kind);
            w.extend_from_slice(&figure.minor().to_le_bytes());
            w.extend_from_slice(&event.occurred_at.millis().to_le_bytes());
            w.extend_from_slice(&event.recorded_at.millis().to_le_bytes());
            w.extend_from_slice(&event.balance.minor().to_le_bytes());
            put_id(&mut w, reverses.map(TxnId::as_str));
        }
        TxnOutcome::Refused(r) => {
            w.push(2);
            w.extend_from_slice(&r.version.to_le_bytes());
            let (kind, amount, reverses) = match &r.command {
                Command::Deposit { amount, .. } => (1, *amount, None),
                Command::Withdraw { amount, .. } => (2, *amount, None),
                Command::Reverse { reverses, .. } => (3, Money::ZERO, Some(reverses)),
            };
            w.push(kind);
            w.extend_from_slice(&amount.minor().to_le_bytes());
            w.extend_from_slice(&r.command.occurred_at().millis().to_le_bytes());
            put_id(&mut w, reverses.map(TxnId::as_str));
            let (tag, figures) = rejection_figures(&r.rejection);
            w.push(tag);
            for f in figures {
                w.extend_from_slice(&f.to_le_bytes());
            }
        }
    }
    w
}

fn put_id(w: &mut Vec<u8>, id: Option<&str>) {
    let id = id.unwrap_or("");
    // Ids are at most 64 bytes (checked at construction).
    w.push(u8::try_from(id.len()).unwrap_or(u8::MAX));
    w.extend_from_slice(id.as_bytes());
}

fn rejection_figures(r: &Rejection) -> (u8, [i64; 3]) {
    match r {
        Rejection::InsufficientFunds {
            balance,
            amount,
            overdraft_limit,
        } => (1, [balance.minor(), amount.minor(), *overdraft_limit]),
        Rejection::UnknownReversalTarget { .. } => (2, [0; 3]),
        Rejection::AlreadyReversed { .. } => (3, [0; 3]),
        Rejection::ReversalOfReversal { .. } => (4, [0; 3]),
        Rejection::BalanceOverflow { balance, delta } => (5, [balance.minor(), delta.minor(), 0]),
        Rejection::VersionExhausted => (6, [0; 3]),
        Rejection::AmountOutOfRange { amount, max } => (7, [amount.minor(), *max, 0]),
    }
}

/// Bounds-checked reads over variable-length bytes: a short input is an error, never a panic.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CodecError> {
        if self.0.len() < n {
            return Err(invalid("outcome", "truncated"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, CodecError> {
        Ok(self.take(1)?[0])
    }
    fn u64(&mut self) -> Result<u64, CodecError> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(
            b.try_into().map_err(|_| invalid("outcome", "truncated"))?,
        ))
    }
    fn i64(&mut self) -> Result<i64, CodecError> {
        Ok(self.u64()? as i64)
    }
    fn time(&mut self) -> Result<Timestamp, CodecError> {
        let ms = self.i64()?;
        Timestamp::from_millis(ms).ok_or_else(|| invalid("outcome time", ms))
    }
    fn id(&mut self) -> Result<Option<TxnId>, CodecError> {
        let n = usize::from(self.u8()?);
        if n == 0 {
            return Ok(None);
        }
        let raw = std::str::from_utf8(self.take(n)?).map_err(|e| invalid("outcome id", e))?;
        TxnId::new(raw)
            .map(Some)
            .map_err(|e| invalid("outcome id", e))
    }
}

/// Inverse of [`encode_outcome`]; `txn` is the key it was stored under.
pub fn decode_outcome(txn: &TxnId, bytes: &[u8]) -> Result<TxnOutcome, CodecError> {
    let mut r = Reader(bytes);
    if r.u8()? != OUTCOME_LAYOUT {
        return Err(invalid("outcome", "unknown layout"));
    }
    let outcome = match r.u8()? {
        1 => {
            let reversed = match r.u8()? {
                0 => false,
                1 => true,
                b => return Err(invalid("outcome reversed flag", b)),
            };
            let version = r.u64()?;
            let (kind, figure) = (r.u8()?, Money(r.i64()?));
            let (occurred_at, recorded_at, balance) = (r.time()?, r.time()?, Money(r.i64()?));
            let reverses = r.id()?;
            let kind = match (kind, reverses) {
                (1, None) => EventKind::Deposited { amount: figure },
                (2, None) => EventKind::Withdrawn { amount: figure },
                (3, Some(reverses)) => EventKind::Reversed {
                    reverses,
                    delta: figure,
                },
                (k, _) => return Err(invalid("outcome event kind", k)),
            };
            let event = Event {
                version,
                txn_id: txn.clone(),
                kind,
                occurred_at,
                recorded_at,
                balance,
            };
            if event.effect().is_none() {
                return Err(invalid("outcome event", "impossible delta"));
            }
            TxnOutcome::Booked { event, reversed }
        }
        2 => {
            let version = r.u64()?;
            let (kind, amount, occurred_at) = (r.u8()?, Money(r.i64()?), r.time()?);
            let reverses = r.id()?;
            let txn_id = txn.clone();
            let command = match (kind, reverses.clone()) {
                (1, None) => Command::Deposit {
                    txn_id,
                    amount,
                    occurred_at,
                },
                (2, None) => Command::Withdraw {
                    txn_id,
                    amount,
                    occurred_at,
                },
                (3, Some(reverses)) => Command::Reverse {
                    txn_id,
                    reverses,
                    occurred_at,
                },
                (k, _) => return Err(invalid("outcome command kind", k)),
            };
            let tag = r.u8()?;
            let [a, b, c] = [r.i64()?, r.i64()?, r.i64()?];
            let target = || {
                reverses
                    .clone()
                    .ok_or_else(|| invalid("outcome rejection", tag))
            };
            let rejection = match tag {
                1 => Rejection::InsufficientFunds {
                    balance: Money(a),
                    amount: Money(b),
                    overdraft_limit: c,
                },
                2 => Rejection::UnknownReversalTarget {
                    reverses: target()?,
                },
                3 => Rejection::AlreadyReversed {
                    reverses: target()?,
                },
                4 => Rejection::ReversalOfReversal {
                    reverses: target()?,
                },
                5 => Rejection::BalanceOverflow {
                    balance: Money(a),
                    delta: Money(b),
                },
                6 => Rejection::VersionExhausted,
                7 => Rejection::AmountOutOfRange {
                    amount: Money(a),
                    max: b,
                },
                t => return Err(invalid("outcome rejection", t)),
            };
            TxnOutcome::Refused(Refusal {
                command,
                rejection,
                version,
            })
        }
        t => return Err(invalid("outcome tag", t)),
    };
    if !r.0.is_empty() {
        return Err(invalid("outcome", "trailing bytes"));
    }
    Ok(outcome)
}

const SEGMENT_BYTES: usize = 1 + 8 + 8 + 16;

/// A segment summary (its index is the key).
pub fn encode_segment(s: &Segment) -> [u8; SEGMENT_BYTES] {
    let mut out = [0u8; SEGMENT_BYTES];
    out[0] = 1; // layout version
    out[1..9].copy_from_slice(&s.earliest.millis().to_le_bytes());
    out[9..17].copy_from_slice(&s.latest.millis().to_le_bytes());
    out[17..33].copy_from_slice(&s.net.to_le_bytes());
    out
}

pub fn decode_segment(index: u64, bytes: &[u8]) -> Result<Segment, CodecError> {
    if bytes.len() != SEGMENT_BYTES || bytes[0] != 1 {
        return Err(invalid("segment", format_args!("{} bytes", bytes.len())));
    }
    let mut f = Fields(&bytes[1..]);
    let time = |ms: i64| Timestamp::from_millis(ms).ok_or_else(|| invalid("segment time", ms));
    let (earliest, latest) = (time(f.i64())?, time(f.i64())?);
    let net = f.i128();
    if earliest > latest {
        return Err(invalid("segment", "earliest after latest"));
    }
    Ok(Segment {
        index,
        earliest,
        latest,
        net,
    })
}

pub fn encode_tip(t: &AccountState) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0..8].copy_from_slice(&t.version.to_le_bytes());
    out[8..16].copy_from_slice(&t.balance.minor().to_le_bytes());
    out
}

pub fn decode_tip(bytes: &[u8]) -> Result<AccountState, CodecError> {
    if bytes.len() != 16 {
        return Err(invalid("tip", format_args!("{} bytes", bytes.len())));
    }
    let mut f = Fields(bytes);
    Ok(AccountState {
        version: f.u64(),
        balance: Money(f.i64()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_markers_and_tips_round_trip_and_reject_wrong_lengths() {
        let s = Snapshot {
            version: 7,
            balance: Money(-5),
            month: Month::new(2026, 11),
            month_balance: -9,
            credit_total: 10,
            credit_count: 2,
            debit_total: 15,
            debit_count: 3,
            last_occurred_at: Timestamp::from_millis(5),
            updated_at: None,
        };
        assert_eq!(decode_snapshot(&encode_snapshot(&s)), Ok(s));
        assert_eq!(
            decode_snapshot(&encode_snapshot(&Snapshot::default())),
            Ok(Snapshot::default())
        );
        assert!(decode_snapshot(&encode_snapshot(&s)[..50]).is_err());
        let at = Timestamp::from_millis(1_000).unwrap();
        let outcomes = [
            TxnOutcome::Booked {
                event: Event {
                    version: 3,
                    txn_id: TxnId::new("t-3").unwrap(),
                    kind: EventKind::Reversed {
                        reverses: TxnId::new("t-1").unwrap(),
                        delta: Money(-4),
                    },
                    occurred_at: at,
                    recorded_at: at,
                    balance: Money(-4),
                },
                reversed: true,
            },
            TxnOutcome::Refused(Refusal {
                command: Command::Withdraw {
                    txn_id: TxnId::new("t-3").unwrap(),
                    amount: Money(9),
                    occurred_at: at,
                },
                rejection: Rejection::InsufficientFunds {
                    balance: Money(5),
                    amount: Money(9),
                    overdraft_limit: 0,
                },
                version: 2,
            }),
            TxnOutcome::Refused(Refusal {
                command: Command::Reverse {
                    txn_id: TxnId::new("t-3").unwrap(),
                    reverses: TxnId::new("t-0").unwrap(),
                    occurred_at: at,
                },
                rejection: Rejection::UnknownReversalTarget {
                    reverses: TxnId::new("t-0").unwrap(),
                },
                version: 0,
            }),
        ];
        for o in &outcomes {
            let bytes = encode_outcome(o);
            let id = TxnId::new("t-3").unwrap();
            assert_eq!(decode_outcome(&id, &bytes).as_ref(), Ok(o));
            for cut in 0..bytes.len() {
                assert!(decode_outcome(&id, &bytes[..cut]).is_err(), "cut at {cut}");
            }
        }
        let t = AccountState {
            version: 9,
            balance: Money(i64::MIN),
        };
        assert_eq!(decode_tip(&encode_tip(&t)), Ok(t));
    }
}
