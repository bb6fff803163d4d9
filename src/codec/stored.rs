//! Fixed little-endian layouts for the small values the embedded store keeps: snapshots,
//! transaction markers and tips. Decoding checks lengths and ranges and never panics.

use super::CodecError;
use crate::domain::{AccountState, Money, Month, Snapshot, Timestamp, TxnKind, TxnRecord};
use crate::ports::StoredTxn;

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
    fn u8(&mut self) -> u8 {
        self.take::<1>()[0]
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

pub fn encode_marker(m: &StoredTxn) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[0..8].copy_from_slice(&m.version.to_le_bytes());
    out[8] = match m.record.kind {
        TxnKind::Deposit => 1,
        TxnKind::Withdrawal => 2,
        TxnKind::Reversal => 3,
    };
    out[9..17].copy_from_slice(&m.record.delta.minor().to_le_bytes());
    out[17] = u8::from(m.record.reversed);
    out
}

pub fn decode_marker(bytes: &[u8]) -> Result<StoredTxn, CodecError> {
    if bytes.len() != 18 {
        return Err(invalid("marker", format_args!("{} bytes", bytes.len())));
    }
    let mut f = Fields(bytes);
    let version = f.u64();
    let kind = match f.u8() {
        1 => TxnKind::Deposit,
        2 => TxnKind::Withdrawal,
        3 => TxnKind::Reversal,
        k => return Err(invalid("marker kind", k)),
    };
    let delta = Money(f.i64());
    let reversed = match f.u8() {
        0 => false,
        1 => true,
        r => return Err(invalid("marker reversed flag", r)),
    };
    Ok(StoredTxn {
        version,
        record: TxnRecord {
            kind,
            delta,
            reversed,
        },
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
        let m = StoredTxn {
            version: 3,
            record: TxnRecord {
                kind: TxnKind::Withdrawal,
                delta: Money(-4),
                reversed: true,
            },
        };
        assert_eq!(decode_marker(&encode_marker(&m)), Ok(m));
        let t = AccountState {
            version: 9,
            balance: Money(i64::MIN),
        };
        assert_eq!(decode_tip(&encode_tip(&t)), Ok(t));
    }
}
