//! The exhaustive state-class × command/event-class matrix. Every cell's expectation comes
//! from `reference.rs`; production `decide` and `apply` must match it. The variant
//! functions below use exhaustive matches, and the test asserts every variant was reached,
//! so a new enum variant fails here until the matrix covers it.

use std::collections::BTreeSet;

use time::macros::datetime;

use tally::domain::{
    AccountState, Effect, Event, EventKind, FoldError, Money, Outcome, Policy, Snapshot, apply,
    apply_effect,
};

use crate::harness::{Ledger, REJECTION_TAGS, command, ref_event, ref_snapshot, rejection_tag};
use crate::reference::{RefCmd, RefLedger};

const MAX: i64 = i64::MAX;

fn ms(t: time::OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

struct StateClass {
    name: &'static str,
    amount_max: i64,
    overdraft: i64,
    /// Start at the last version number (no history can get there in a test).
    exhausted: bool,
    zoo: bool,
    extra: Vec<RefCmd>,
}

fn dep(txn: &str, amount: i64) -> RefCmd {
    RefCmd::Deposit {
        txn: txn.into(),
        amount,
        at: ms(datetime!(2026-11-05 10:00 UTC)),
    }
}
fn wd(txn: &str, amount: i64) -> RefCmd {
    RefCmd::Withdraw {
        txn: txn.into(),
        amount,
        at: ms(datetime!(2026-11-06 10:00 UTC)),
    }
}
fn rev(txn: &str, target: &str) -> RefCmd {
    RefCmd::Reverse {
        txn: txn.into(),
        target: target.into(),
        at: ms(datetime!(2026-11-07 10:00 UTC)),
    }
}

fn state_classes() -> Vec<StateClass> {
    let class = |name, amount_max, overdraft, zoo, extra| StateClass {
        name,
        amount_max,
        overdraft,
        exhausted: false,
        zoo,
        extra,
    };
    vec![
        class("new", 1_000, 0, false, vec![]),
        class("zero", 1_000, 0, true, vec![]),
        class("positive", 1_000, 0, true, vec![dep("s-1", 500)]),
        class(
            "negative",
            1_000,
            1_000,
            true,
            vec![dep("s-1", 100), wd("s-2", 400)],
        ),
        class(
            "at_overdraft_limit",
            1_000,
            1_000,
            true,
            vec![wd("s-1", 1_000)],
        ),
        class("at_i64_max", MAX, 0, true, vec![dep("s-1", MAX)]),
        class(
            "at_i64_min",
            MAX,
            MAX,
            true,
            vec![
                dep("s-a", 1),
                wd("s-1", MAX),
                wd("s-2", 1),
                rev("s-3", "s-a"),
            ],
        ),
        StateClass {
            name: "version_exhausted",
            amount_max: 1_000,
            overdraft: 0,
            exhausted: true,
            zoo: false,
            extra: vec![],
        },
    ]
}

/// A net-zero prefix that gives every reversal-target class something to point at:
/// `zoo-dr` (already reversed), `zoo-r` (itself a reversal), `zoo-d`, `zoo-w` (live).
fn zoo() -> Vec<RefCmd> {
    vec![
        dep("zoo-dr", 50),
        rev("zoo-r", "zoo-dr"),
        dep("zoo-d", 7),
        wd("zoo-w", 7),
    ]
}

fn build(class: &StateClass) -> (Ledger, RefLedger) {
    let policy = Policy::new(class.amount_max, class.overdraft).expect("valid policy");
    let mut prod = Ledger::new(policy);
    let mut reference = RefLedger::new(class.amount_max, class.overdraft);
    if class.exhausted {
        prod.state = AccountState {
            version: u64::MAX,
            balance: Money::ZERO,
        };
        reference.version_offset = u64::MAX;
    }
    let history: Vec<RefCmd> = if class.zoo { zoo() } else { vec![] }
        .into_iter()
        .chain(class.extra.clone())
        .collect();
    for (i, cmd) in history.iter().enumerate() {
        let now = ms(datetime!(2026-11-08 00:00 UTC)) + i as i64;
        prod.must(cmd, now);
        reference.must(cmd.clone(), now);
    }
    assert_eq!(
        ref_snapshot(&prod.snapshot).balance,
        reference.balance(),
        "{}: fixture balance",
        class.name
    );
    (prod, reference)
}

fn months() -> [(&'static str, i64); 3] {
    [
        ("same_month", ms(datetime!(2026-11-20 12:00 UTC))),
        ("earlier_month", ms(datetime!(2026-10-15 12:00 UTC))),
        ("later_month", ms(datetime!(2026-12-10 12:00 UTC))),
    ]
}

fn commands(amount_max: i64, at: i64) -> Vec<(String, RefCmd)> {
    let over = amount_max.checked_add(1).unwrap_or(i64::MIN);
    let amounts = [
        ("0", 0),
        ("1", 1),
        ("max", amount_max),
        ("max+1", over),
        ("negative", -5),
    ];
    let mut out = Vec::new();
    for (label, amount) in amounts {
        out.push((
            format!("deposit/{label}"),
            RefCmd::Deposit {
                txn: "cmd".into(),
                amount,
                at,
            },
        ));
        out.push((
            format!("withdraw/{label}"),
            RefCmd::Withdraw {
                txn: "cmd".into(),
                amount,
                at,
            },
        ));
    }
    let targets = [
        ("absent", "ghost"),
        ("deposit", "zoo-d"),
        ("withdrawal", "zoo-w"),
        ("already_reversed", "zoo-dr"),
        ("a_reversal", "zoo-r"),
    ];
    for (label, target) in targets {
        out.push((
            format!("reverse/{label}"),
            RefCmd::Reverse {
                txn: "cmd".into(),
                target: target.into(),
                at,
            },
        ));
    }
    out
}

fn outcome_name(o: Outcome) -> &'static str {
    match o {
        Outcome::Applied => "applied",
        Outcome::Duplicate => "duplicate",
        Outcome::Gap { .. } => "gap",
    }
}

fn fold_error_name(e: FoldError) -> &'static str {
    match e {
        FoldError::BalanceMismatch { .. } => "balance_mismatch",
        FoldError::Overflow { .. } => "overflow",
        FoldError::InvalidDelta { .. } => "invalid_delta",
        FoldError::Inconsistent { .. } => "inconsistent",
    }
}

fn kind_name(k: &EventKind) -> &'static str {
    match k {
        EventKind::Deposited { .. } => "deposited",
        EventKind::Withdrawn { .. } => "withdrawn",
        EventKind::Reversed { .. } => "reversed",
    }
}

#[derive(Default)]
struct Seen {
    decide_cells: usize,
    apply_cells: usize,
    names: BTreeSet<&'static str>,
}

/// next / duplicate / gap / wrong carried balance for one accepted event.
fn apply_cells(cell: &str, prod: &Ledger, reference: &RefLedger, event: &Event, seen: &mut Seen) {
    // Next version: applied, and the snapshot equals the reference fold of the whole list.
    let mut snap = prod.snapshot;
    let outcome = apply(&mut snap, event).unwrap_or_else(|e| panic!("{cell}: next refused: {e}"));
    assert_eq!(outcome, Outcome::Applied, "{cell}");
    let mut with = reference.clone();
    with.events.push(ref_event(event));
    assert_eq!(
        ref_snapshot(&snap),
        with.snapshot(),
        "{cell}: snapshot after next"
    );
    seen.names.insert(outcome_name(outcome));
    // Duplicate: the same event again changes nothing.
    let before = snap;
    let outcome = apply(&mut snap, event).expect("duplicate is not an error");
    assert_eq!(
        (outcome, snap),
        (Outcome::Duplicate, before),
        "{cell}: duplicate"
    );
    seen.names.insert(outcome_name(outcome));
    // Gap: one version too far changes nothing.
    let mut snap = prod.snapshot;
    let far = Event {
        version: event.version + 1,
        ..event.clone()
    };
    let outcome = apply(&mut snap, &far).expect("gap is not an error");
    assert_eq!(
        (outcome, snap),
        (
            Outcome::Gap {
                expected: event.version
            },
            prod.snapshot
        ),
        "{cell}: gap"
    );
    seen.names.insert(outcome_name(outcome));
    // Wrong carried balance: refused, nothing changes.
    let wrong = Event {
        balance: Money(
            event
                .balance
                .minor()
                .checked_add(1)
                .unwrap_or(event.balance.minor() - 1),
        ),
        ..event.clone()
    };
    let err = apply(&mut snap, &wrong).expect_err("wrong carried balance must be refused");
    assert!(
        matches!(err, FoldError::BalanceMismatch { .. }),
        "{cell}: {err}"
    );
    assert_eq!(snap, prod.snapshot, "{cell}: refused fold left a trace");
    seen.names.insert(fold_error_name(err));
    seen.apply_cells += 4;
}

#[test]
fn every_state_class_times_every_command_class_matches_the_reference_model() {
    let mut seen = Seen::default();
    for class in state_classes() {
        let (prod, reference) = build(&class);
        for (month, at) in months() {
            for (label, cmd) in commands(class.amount_max, at) {
                let cell = format!("{}/{month}/{label}", class.name);
                let now = at + 1_000;
                let expected = reference.decide(&cmd, now);
                let actual = prod.decide(&command(&cmd), now);
                seen.decide_cells += 1;
                match (&expected, &actual) {
                    (Err(tag), Err(rejection)) => {
                        assert_eq!(*tag, rejection_tag(rejection), "{cell}");
                        seen.names.insert(tag);
                    }
                    (Ok(want), Ok(events)) => {
                        assert_eq!(events.len(), 1, "{cell}");
                        let event = &events[0];
                        assert_eq!(&ref_event(event), want, "{cell}");
                        assert_eq!(
                            u128::from(event.version),
                            reference.version() + 1,
                            "{cell}: version"
                        );
                        assert_eq!(
                            i128::from(event.balance.minor()),
                            reference.balance() + i128::from(want.delta),
                            "{cell}"
                        );
                        seen.names.insert(kind_name(&event.kind));
                        apply_cells(&cell, &prod, &reference, event, &mut seen);
                    }
                    _ => panic!("{cell}: reference {expected:?} but production {actual:?}"),
                }
            }
        }
    }
    // Faults that only corrupt data can produce: a delta past the i64 edge, an impossible delta.
    let (edge, _) = build(&state_classes()[5]);
    let mut snap = edge.snapshot;
    let e = Effect {
        version: snap.version + 1,
        delta: Money(1),
        occurred_at: snap.updated_at.unwrap(),
        recorded_at: snap.updated_at.unwrap(),
        balance: Money(i64::MIN),
    };
    let err = apply_effect(&mut snap, e).expect_err("overflow must be refused");
    assert_eq!((fold_error_name(err), snap), ("overflow", edge.snapshot));
    seen.names.insert(fold_error_name(err));
    let bad = Event {
        kind: EventKind::Withdrawn {
            amount: Money(i64::MIN),
        },
        ..edge.events[0].clone()
    };
    let err = apply(&mut Snapshot::default(), &bad).expect_err("impossible delta must be refused");
    seen.names.insert(fold_error_name(err));
    seen.apply_cells += 2;

    let all: Vec<&str> = REJECTION_TAGS
        .iter()
        .copied()
        .chain([
            "applied",
            "duplicate",
            "gap",
            "balance_mismatch",
            "overflow",
            "invalid_delta",
            "deposited",
            "withdrawn",
            "reversed",
        ])
        .collect();
    let missing: Vec<&&str> = all.iter().filter(|n| !seen.names.contains(**n)).collect();
    assert!(
        missing.is_empty(),
        "variants never reached by the matrix: {missing:?}"
    );
    eprintln!(
        "matrix: {} decide cells, {} apply cells, {} variants covered",
        seen.decide_cells,
        seen.apply_cells,
        all.len()
    );
    assert_eq!(seen.decide_cells, 8 * 3 * 15);
}

/// The txn-id matrix: every kind of first outcome (booked deposit, withdrawal, reversal;
/// refused withdrawal, reversal; an invalid amount, which is not an outcome) × every way of
/// sending the id again (the same request, or differing in kind, amount, target or business
/// time). Expectations from the reference book; every `Decision` variant must be reached.
#[test]
fn every_first_outcome_times_every_resubmission_matches_the_reference() {
    use tally::domain::{AccountState, Decision, TxnOutcome, decide_run};

    use crate::reference::{RefBook, RefOutcome};
    let later = ms(datetime!(2026-11-20 10:00 UTC));
    let firsts: [(&str, RefCmd); 6] = [
        ("booked deposit", dep("x", 100)),
        ("booked withdrawal", wd("x", 40)),
        ("booked reversal", rev("x", "d0")),
        ("refused withdrawal", wd("x", 1_000_000)),
        ("refused reversal", rev("x", "ghost")),
        ("invalid amount", dep("x", 0)),
    ];
    let variants = |first: &RefCmd| -> Vec<(&'static str, RefCmd)> {
        let mut v = vec![("same", first.clone())];
        v.push((
            "kind",
            match first {
                RefCmd::Deposit { .. } => wd("x", 100),
                _ => dep("x", 40),
            },
        ));
        let mut more = first.clone();
        match &mut more {
            RefCmd::Deposit { amount, .. } | RefCmd::Withdraw { amount, .. } => {
                *amount += 1;
                v.push(("amount", more));
            }
            RefCmd::Reverse { .. } => v.push(("reverses", rev("x", "d1"))),
        }
        let mut moved = first.clone();
        match &mut moved {
            RefCmd::Deposit { at, .. }
            | RefCmd::Withdraw { at, .. }
            | RefCmd::Reverse { at, .. } => *at = later,
        }
        v.push(("occurred_at", moved));
        v
    };
    let mut seen = BTreeSet::new();
    let mut cells = 0;
    for (name, first) in &firsts {
        for (how, again) in variants(first) {
            let cell = format!("{name} / again with {how}");
            // History: two deposits the reversals can target, then the first submission.
            let history = [dep("d0", 500), dep("d1", 70), first.clone(), again.clone()];
            let mut reference = RefBook::new(1_000_000_000, 0);
            let want: Vec<RefOutcome> = history.iter().map(|c| reference.submit(c, 7)).collect();
            let mut outcomes: std::collections::HashMap<tally::domain::TxnId, TxnOutcome> =
                Default::default();
            let prod: Vec<_> = history.iter().map(command).collect();
            let (got, _) = decide_run(
                AccountState::default(),
                &mut outcomes,
                &prod,
                crate::harness::ts(7),
                &Policy::new(1_000_000_000, 0).unwrap(),
            );
            let tag = rejection_tag;
            let got: Vec<RefOutcome> = got
                .into_iter()
                .map(|d| {
                    seen.insert(match &d {
                        Decision::Booked(_) => "booked",
                        Decision::Refused(_) => "refused",
                        Decision::Invalid(_) => "invalid",
                        Decision::Replayed(TxnOutcome::Booked { .. }) => "duplicate",
                        Decision::Replayed(TxnOutcome::Refused(_)) => "replayed refusal",
                        Decision::Reused { .. } => "reused",
                    });
                    match d {
                        Decision::Booked(e) => RefOutcome::Booked(ref_event(&e)),
                        Decision::Refused(r) => RefOutcome::Refused(tag(&r.rejection)),
                        Decision::Invalid(r) => RefOutcome::Invalid(tag(&r)),
                        Decision::Replayed(TxnOutcome::Booked { event, .. }) => {
                            RefOutcome::Duplicate(ref_event(&event))
                        }
                        Decision::Replayed(TxnOutcome::Refused(r)) => {
                            RefOutcome::ReplayedRefusal(tag(&r.rejection))
                        }
                        Decision::Reused { field, .. } => RefOutcome::Reused(field),
                    }
                })
                .collect();
            assert_eq!(got, want, "{cell}");
            cells += 1;
        }
    }
    assert_eq!(cells, 24);
    assert_eq!(seen.len(), 6, "every decision variant reached: {seen:?}");
}
