//! Property tests: batching, redelivery, decide/apply agreement, codec round trips.

use proptest::prelude::*;

use tally::codec::{
    WireAggregate, WirePage, decode_page, decode_record_pages, encode_page, encode_records,
};
use tally::domain::{AccountId, Effect, Event, Page, Policy, Snapshot, apply};
use tally::service::projector::{Stop, fold_group};

use crate::harness::{Ledger, command, ref_event, ref_snapshot};
use crate::reference::{RefCmd, RefLedger};

const T0: i64 = 1_790_000_000_000; // 2026-09-21

/// Raw material for a command: kind selector, amount, target pick, minutes later.
fn raw_commands() -> impl Strategy<Value = Vec<(u8, i64, usize, i64)>> {
    prop::collection::vec((0u8..10, 1i64..5_000, any::<usize>(), 0i64..100_000), 1..60)
}

/// Runs raw commands through production and reference side by side, asserting they agree
/// on every decision, and returns the production ledger.
fn run(raw: &[(u8, i64, usize, i64)], overdraft: i64) -> (Ledger, RefLedger) {
    let policy = Policy::new(10_000, overdraft).unwrap();
    let mut prod = Ledger::new(policy);
    let mut reference = RefLedger::new(10_000, overdraft);
    for (i, &(k, amount, pick, minutes)) in raw.iter().enumerate() {
        let at = T0 + minutes * 60_000;
        let txn = format!("t{i}");
        let cmd = match k {
            0..=4 => RefCmd::Deposit { txn, amount, at },
            5..=7 => RefCmd::Withdraw { txn, amount, at },
            _ => {
                let target = if i == 0 {
                    "none".to_string()
                } else {
                    format!("t{}", pick % i)
                };
                RefCmd::Reverse { txn, target, at }
            }
        };
        let now = T0 + i as i64;
        let expected = reference.decide(&cmd, now);
        match prod.decide(&command(&cmd), now) {
            Ok(events) => {
                let want = expected.unwrap_or_else(|r| {
                    panic!("reference rejected {cmd:?} ({r}), production accepted")
                });
                assert_eq!(ref_event(&events[0]), want);
                prod.commit(events); // asserts `apply` accepts what `decide` produced
                reference.events.push(want);
            }
            Err(r) => assert_eq!(
                expected.err(),
                Some(crate::harness::rejection_tag(&r)),
                "{cmd:?}"
            ),
        }
    }
    assert_eq!(ref_snapshot(&prod.snapshot), reference.snapshot());
    (prod, reference)
}

/// Raw material for a stream of submissions whose txn ids repeat: id pick (from a small
/// pool), kind, amount, target pick, minutes, and where runs are cut.
fn raw_submissions() -> impl Strategy<Value = Vec<(usize, u8, i64, usize, i64, bool)>> {
    prop::collection::vec(
        (
            0usize..24,
            0u8..10,
            1i64..4_000,
            any::<usize>(),
            0i64..3,
            any::<bool>(),
        ),
        1..80,
    )
}

/// `decide_run` over runs of submissions (outcomes kept across runs, as the store keeps
/// them) agrees with the reference on every answer: booked, refused (recorded), invalid
/// (not recorded), duplicate, replayed refusal, reused id with the field named.
fn run_submissions(raw: &[(usize, u8, i64, usize, i64, bool)]) {
    use std::collections::HashMap;
    use tally::domain::{AccountState, Decision, TxnOutcome, decide_run};
    let policy = Policy::new(3_000, 500).unwrap();
    let mut reference = crate::reference::RefBook::new(3_000, 500);
    let mut outcomes: HashMap<tally::domain::TxnId, TxnOutcome> = HashMap::new();
    let mut state = AccountState::default();
    let mut start = 0;
    for (run_index, end) in raw
        .iter()
        .enumerate()
        .filter(|(i, r)| r.5 || *i + 1 == raw.len())
        .map(|(i, _)| i + 1)
        .enumerate()
    {
        let now = T0 + run_index as i64;
        let cmds: Vec<RefCmd> = raw[start..end]
            .iter()
            .map(|&(id, k, amount, pick, minutes, _)| {
                let (txn, at) = (format!("t{id}"), T0 + minutes * 60_000);
                match k {
                    0..=3 => RefCmd::Deposit { txn, amount, at },
                    4..=6 => RefCmd::Withdraw { txn, amount, at },
                    _ => RefCmd::Reverse {
                        txn,
                        target: format!("t{}", pick % 24),
                        at,
                    },
                }
            })
            .collect();
        let prod: Vec<_> = cmds.iter().map(command).collect();
        let (decisions, after) = decide_run(
            state,
            &mut outcomes,
            &prod,
            crate::harness::ts(now),
            &policy,
        );
        state = after;
        for (cmd, d) in cmds.iter().zip(decisions) {
            use crate::reference::RefOutcome as R;
            let tag = crate::harness::rejection_tag;
            let got = match d {
                Decision::Booked(e) => R::Booked(ref_event(&e)),
                Decision::Refused(r) => R::Refused(tag(&r.rejection)),
                Decision::Invalid(r) => R::Invalid(tag(&r)),
                Decision::Replayed(TxnOutcome::Booked { event, .. }) => {
                    R::Duplicate(ref_event(&event))
                }
                Decision::Replayed(TxnOutcome::Refused(r)) => R::ReplayedRefusal(tag(&r.rejection)),
                Decision::Reused { field, .. } => R::Reused(field),
            };
            assert_eq!(got, reference.submit(cmd, now), "{cmd:?}");
        }
        start = end;
    }
    assert_eq!(state.version as usize, reference.ledger.events.len());
}

fn effects(events: &[Event]) -> Vec<Effect> {
    events.iter().map(|e| e.effect().unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn every_txn_id_keeps_its_first_outcome_as_the_reference_says(raw in raw_submissions()) {
        run_submissions(&raw);
    }

    #[test]
    fn decide_never_produces_an_event_that_apply_refuses(raw in raw_commands(), overdraft in 0i64..3_000) {
        let _ = run(&raw, overdraft);
    }

    #[test]
    fn folding_in_one_batch_equals_folding_split_at_any_point(raw in raw_commands(), cut in any::<prop::sample::Index>()) {
        let (prod, _) = run(&raw, 1_000);
        let fx = effects(&prod.events);
        let whole = fold_group(Snapshot::default(), &fx);
        let at = cut.index(fx.len() + 1);
        let first = fold_group(Snapshot::default(), &fx[..at]);
        let second = fold_group(first.snapshot, &fx[at..]);
        prop_assert_eq!(whole.snapshot, second.snapshot);
        prop_assert_eq!(whole.snapshot, prod.snapshot);
        prop_assert_eq!(whole.applied, first.applied + second.applied);
    }

    /// Deliveries are arbitrary runs of the event list, in any order, repeated at will; the
    /// projector fills a gap from the store (the full list). After the newest run arrives,
    /// the snapshot equals the fold of everything up to it.
    #[test]
    fn any_interleaving_of_duplicate_and_redelivered_pages_converges(
        raw in raw_commands(),
        deliveries in prop::collection::vec((any::<prop::sample::Index>(), 1usize..8), 0..20),
    ) {
        let (prod, _) = run(&raw, 1_000);
        let fx = effects(&prod.events);
        prop_assume!(!fx.is_empty());
        let mut runs: Vec<(usize, usize)> = deliveries.iter().map(|(s, len)| {
            let start = s.index(fx.len());
            (start, (start + len).min(fx.len()))
        }).collect();
        runs.push((fx.len() - 1, fx.len())); // the newest event arrives at some point
        let mut snap = Snapshot::default();
        for (start, end) in runs {
            let mut pending = &fx[start..end];
            loop {
                let fold = fold_group(snap, pending);
                prop_assert!(fold.snapshot.version >= snap.version, "version moved backward");
                snap = fold.snapshot;
                match fold.stop {
                    None => break,
                    Some(Stop::Gap { expected, at, .. }) => {
                        // Fill from the store, then resume at the event that found the gap.
                        let filled = fold_group(snap, &fx[(expected - 1) as usize..(pending[at].version - 1) as usize]);
                        prop_assert!(filled.stop.is_none());
                        snap = filled.snapshot;
                        pending = &pending[at..];
                    }
                    Some(Stop::Fault { error, .. }) => prop_assert!(false, "fault: {}", error),
                }
            }
        }
        prop_assert_eq!(snap, prod.snapshot);
    }

    #[test]
    fn a_page_survives_encode_and_decode(raw in raw_commands(), account in "[A-Za-z0-9._:-]{1,64}") {
        let (prod, _) = run(&raw, 1_000);
        prop_assume!(!prod.events.is_empty());
        let page = Page::new(AccountId::new(account).unwrap(), prod.events.clone()).unwrap();
        let bytes = encode_page(&WirePage::from_page(&page)).unwrap();
        prop_assert_eq!(decode_page(&bytes).unwrap(), page);
    }

    /// Whatever the size limit, records respect it, and their pages concatenate back to
    /// the input: split, never truncated or reordered.
    #[test]
    fn records_split_under_any_limit_and_reassemble(
        raws in prop::collection::vec(raw_commands(), 1..4),
        limit in 400usize..6_000,
    ) {
        let pages: Vec<Page> = raws.iter().enumerate().filter_map(|(i, raw)| {
            let (prod, _) = run(raw, 1_000);
            (!prod.events.is_empty()).then(|| Page::new(AccountId::new(format!("acct-{i}")).unwrap(), prod.events).unwrap())
        }).collect();
        let wire: Vec<WirePage> = pages.iter().map(WirePage::from_page).collect();
        let records = encode_records(&wire, limit).unwrap();
        let mut events_back: Vec<(String, Event)> = Vec::new();
        for r in &records {
            prop_assert!(r.len() <= limit, "record of {} bytes over {}", r.len(), limit);
            for p in decode_record_pages(r).unwrap() {
                let account = p.account.to_string();
                events_back.extend(p.into_events().into_iter().map(|e| (account.clone(), e)));
            }
        }
        let events_in: Vec<(String, Event)> = pages.iter().flat_map(|p| p.events().iter().map(move |e| (p.account.to_string(), e.clone()))).collect();
        prop_assert_eq!(events_back, events_in);
        let _ = WireAggregate::default();
    }
}

#[test]
fn apply_of_a_decided_sequence_matches_the_reference_on_a_fixed_example() {
    let raw = [
        (0, 100, 0, 0),
        (5, 30, 0, 10),
        (9, 0, 1, 20),
        (9, 0, 1, 30),
        (5, 500, 0, 40),
    ];
    let (prod, reference) = run(&raw, 0);
    // deposit 100, withdraw 30, reverse t1 (+30), second reversal of t1 rejected,
    // withdraw 500 rejected.
    assert_eq!(prod.events.len(), 3);
    assert_eq!(prod.snapshot.balance.minor(), 100);
    assert_eq!(reference.balance(), 100);
    let mut again = Snapshot::default();
    for e in &prod.events {
        apply(&mut again, e).unwrap();
    }
    assert_eq!(again, prod.snapshot);
}
