//! Production-side helpers: a tiny in-memory "event store" around `decide`, and
//! conversions between the production types and the reference model's.

use std::collections::HashMap;

use tally::domain::{
    AccountState, Command, Entry, Event, Money, Policy, Rejection, Snapshot, Timestamp, TxnId,
    TxnOutcome, apply, decide, record,
};

use crate::reference::RefCmd;

pub fn ts(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms).expect("test times are in range")
}

pub fn txn(s: &str) -> TxnId {
    TxnId::new(s).expect("test ids are valid")
}

pub fn command(c: &RefCmd) -> Command {
    match c {
        RefCmd::Deposit { txn: t, amount, at } => Command::Deposit {
            txn_id: txn(t),
            amount: Money(*amount),
            occurred_at: ts(*at),
        },
        RefCmd::Withdraw { txn: t, amount, at } => Command::Withdraw {
            txn_id: txn(t),
            amount: Money(*amount),
            occurred_at: ts(*at),
        },
        RefCmd::Reverse { txn: t, target, at } => Command::Reverse {
            txn_id: txn(t),
            reverses: txn(target),
            occurred_at: ts(*at),
        },
    }
}

/// The reference model's tag for a production rejection. Exhaustive: a new variant fails
/// to compile here until the matrix and the reference model learn it.
pub fn rejection_tag(r: &Rejection) -> &'static str {
    match r {
        Rejection::AmountOutOfRange { .. } => "amount_out_of_range",
        Rejection::InsufficientFunds { .. } => "insufficient_funds",
        Rejection::UnknownReversalTarget { .. } => "unknown_reversal_target",
        Rejection::AlreadyReversed { .. } => "already_reversed",
        Rejection::ReversalOfReversal { .. } => "reversal_of_reversal",
        Rejection::BalanceOverflow { .. } => "balance_overflow",
        Rejection::VersionExhausted => "version_exhausted",
    }
}

pub const REJECTION_TAGS: [&str; 7] = [
    "amount_out_of_range",
    "insufficient_funds",
    "unknown_reversal_target",
    "already_reversed",
    "reversal_of_reversal",
    "balance_overflow",
    "version_exhausted",
];

/// The reference views of production events and snapshots (shared with the simulator).
pub use tally::sim::check::{ref_event, ref_snapshot};

/// Production ledger for one account: tip state, events, transaction markers, snapshot.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    pub policy: Policy,
    pub state: AccountState,
    pub events: Vec<Event>,
    pub markers: HashMap<TxnId, TxnOutcome>,
    pub snapshot: Snapshot,
}

impl Ledger {
    pub fn new(policy: Policy) -> Ledger {
        Ledger {
            policy,
            ..Ledger::default()
        }
    }

    pub fn decide(&self, cmd: &Command, now: i64) -> Result<Vec<Event>, Rejection> {
        let target = cmd
            .reverses()
            .and_then(|t| self.markers.get(t))
            .and_then(TxnOutcome::as_target);
        decide(&self.state, cmd, target.as_ref(), ts(now), &self.policy)
    }

    /// Records events as the event store would (the domain's marker rule), moves the tip,
    /// and folds them into the snapshot.
    pub fn commit(&mut self, events: Vec<Event>) {
        for e in events {
            record(&mut self.markers, Entry::Booked(&e)).expect("decided events record");
            self.state = AccountState::after(&e);
            apply(&mut self.snapshot, &e).expect("decided events fold");
            self.events.push(e);
        }
    }

    pub fn must(&mut self, cmd: &RefCmd, now: i64) -> &mut Ledger {
        let events = self
            .decide(&command(cmd), now)
            .unwrap_or_else(|r| panic!("fixture {cmd:?} rejected: {r}"));
        self.commit(events);
        self
    }
}

/// A batch of record payloads from one shard, sequence numbers 1000, 1001, …
pub fn batch_of(records: &[Vec<u8>]) -> tally::codec::batch::RecordBatch {
    let mut batch = tally::codec::batch::RecordBatch::new();
    for (i, data) in records.iter().enumerate() {
        batch.push("shardId-000000000000", &(1000 + i).to_string(), data);
    }
    batch
}

/// A Lambda Kinesis event (JSON, with the fields Lambda sends) around record payloads.
pub fn lambda_json(records: &[Vec<u8>]) -> String {
    let items: Vec<String> = records
        .iter()
        .enumerate()
        .map(|(i, data)| {
            format!(
                r#"{{"kinesis":{{"kinesisSchemaVersion":"1.0","partitionKey":"{}","sequenceNumber":"{}","data":"{}","approximateArrivalTimestamp":1.5}},"eventSource":"aws:kinesis","eventID":"shardId-000000000000:{}","eventName":"aws:kinesis:record"}}"#,
                tally::codec::bucket::partition_key_of("a", 1024),
                1000 + i,
                base64_simd::STANDARD.encode_to_string(data),
                1000 + i
            )
        })
        .collect();
    format!(r#"{{"Records":[{}]}}"#, items.join(","))
}

/// The real `tally` binary, with none of the caller's `TALLY_*` settings (a shell that ran
/// `export TALLY_BACKEND=aws` must not move these tests to AWS); `TALLY_TEST_*` stay.
pub fn tally_bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_tally"));
    for (k, _) in std::env::vars() {
        if k.starts_with("TALLY_") && !k.starts_with("TALLY_TEST_") {
            c.env_remove(k);
        }
    }
    c
}
