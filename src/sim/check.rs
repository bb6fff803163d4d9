//! The checker, run once a simulation has healed and drained. It reads the stores through
//! their ports and holds them against the reference model and against what the clients
//! were told:
//! - every account's stored history is versions 1..n, each txn id once, and each event is
//!   exactly what the reference rules yield at its position from a command some client
//!   sent;
//! - every outcome a client was told is in the store, and sending it again returns it;
//! - every snapshot equals the reference fold of its events, and after the backstop every
//!   account's snapshot is at its tip; nothing acknowledged by the mapping was left
//!   unprojected when the stream drained;
//! - published records carry stored events only; poison is quarantined, nothing else is;
//! - the metrics add up; `verify` agrees.
//!
//! Must never: trust the production `decide`/`apply` (the reference model is the judge).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering;

use crate::codec::decode_record_pages;
use crate::domain::{AccountId, Command, Event, Policy, Rejection, Snapshot, TxnOutcome};
use crate::ports::Quarantined;
use crate::service::audit::VerifyReport;
use crate::sim::history::{Attempt, Class, Outcome, Violation};
use crate::sim::reference::RefLedger;
use crate::sim::views::{ref_cmd, same_content};
pub use crate::sim::views::{ref_event, ref_snapshot};
use crate::sim::world::Observed;

/// What the stores held at the end.
pub struct Stored {
    pub events: BTreeMap<AccountId, Vec<Event>>,
    /// Snapshots when the healed stream had drained, before the backstop.
    pub drained: BTreeMap<String, Snapshot>,
    pub snapshots: BTreeMap<String, Snapshot>,
    pub quarantined: Vec<Quarantined>,
    pub verify: Result<VerifyReport, String>,
}

/// The checker's verdict on one run (violations not yet attributed).
pub fn check(policy: Policy, observed: &Observed, stored: &Stored) -> Vec<Violation> {
    let mut out = observed.notes.clone();
    histories(policy, observed, stored, &mut out);
    outcomes(observed, stored, &mut out);
    snapshots(observed, stored, &mut out);
    stream(observed, stored, &mut out);
    metrics(observed, stored, &mut out);
    verified(stored, &mut out);
    out
}

/// `verify` (read-only) finds nothing: no difference, no lagging snapshot, no broken chain.
fn verified(stored: &Stored, out: &mut Vec<Violation>) {
    match &stored.verify {
        Ok(r) if r.is_clean() => {}
        Ok(r) => {
            let first = r
                .differences
                .first
                .first()
                .map(|d| d.account.as_str())
                .or(r.lagging.first.first().map(|l| l.account.as_str()))
                .or(r.broken.first.first().map(|b| b.account.as_str()));
            out.push(Violation::new(
                first,
                format!(
                    "verify reports {} differences, {} lagging snapshots, {} broken chains",
                    r.differences.count, r.lagging.count, r.broken.count
                ),
            ));
        }
        Err(e) => out.push(Violation::new(None, format!("verify failed: {e}"))),
    }
}

/// The checks that need only the stores and what was sent (for black-box tests, whose
/// clients know the rows they posted but not the outcome of each): every history through
/// the reference model, every event asked for, every snapshot the fold of its events and
/// at its tip, and `verify` clean.
pub fn check_stores(policy: Policy, sent: Vec<Attempt>, stored: &Stored) -> Vec<Violation> {
    let observed = Observed {
        attempts: sent,
        ..Observed::default()
    };
    let mut out = Vec::new();
    histories(policy, &observed, stored, &mut out);
    snapshots(&observed, stored, &mut out);
    verified(stored, &mut out);
    out
}

/// Versions, txn ids, the reference replay, and that each event was asked for.
fn histories(policy: Policy, observed: &Observed, stored: &Stored, out: &mut Vec<Violation>) {
    let mut asked: HashMap<(&str, &str), Vec<&Command>> = HashMap::new();
    for a in &observed.attempts {
        asked
            .entry((a.account.as_str(), a.command.txn_id().as_str()))
            .or_default()
            .push(&a.command);
    }
    for (account, events) in &stored.events {
        let name = account.as_str();
        let mut reference = RefLedger::new(policy.amount_max, policy.overdraft_limit);
        let mut seen: HashSet<&str> = HashSet::new();
        for (i, e) in events.iter().enumerate() {
            let v = e.version;
            let fail = |what: String| Violation::new(Some(name), format!("event {v}: {what}"));
            if v != i as u64 + 1 {
                out.push(fail(format!("stored at position {}", i + 1)));
                break;
            }
            if !seen.insert(e.txn_id.as_str()) {
                out.push(fail(format!("txn {} booked twice", e.txn_id)));
            }
            let cmd = ref_cmd(e);
            match reference.decide(&cmd, e.recorded_at.millis()) {
                Ok(expected) if expected == ref_event(e) => {
                    let balance = reference.balance() + i128::from(expected.delta);
                    if balance != i128::from(e.balance.minor()) {
                        out.push(fail(format!(
                            "carries balance {}, the rules give {balance}",
                            e.balance
                        )));
                        break;
                    }
                    reference.events.push(expected);
                }
                Ok(expected) => {
                    out.push(fail(format!(
                        "is {:?}, the rules give {expected:?}",
                        ref_event(e)
                    )));
                    break;
                }
                Err(tag) => {
                    out.push(fail(format!(
                        "{cmd:?} was booked but the rules refuse it: {tag}"
                    )));
                    break;
                }
            }
            let wanted = asked.get(&(name, e.txn_id.as_str()));
            if !wanted.is_some_and(|cs| cs.iter().any(|c| same_content(c, e))) {
                out.push(fail(format!("no client asked for {e:?}")));
            }
        }
    }
}

fn stored_at<'a>(stored: &'a Stored, a: &AccountId, version: u64) -> Option<&'a Event> {
    let i = usize::try_from(version.checked_sub(1)?).ok()?;
    stored.events.get(a)?.get(i)
}

/// Every answer a client got is what the store holds; answers again are the same.
fn outcomes(observed: &Observed, stored: &Stored, out: &mut Vec<Violation>) {
    let mut order: HashMap<(usize, u64, &str), u64> = HashMap::new();
    for a in &observed.attempts {
        let name = a.account.as_str();
        match &a.outcome {
            Outcome::Booked(e) | Outcome::Duplicate(e) => {
                if stored_at(stored, &a.account, e.version) != Some(e) {
                    out.push(Violation::new(
                        Some(name),
                        format!(
                            "answered {:?} but the store holds {:?}",
                            a.outcome,
                            stored_at(stored, &a.account, e.version)
                        ),
                    ));
                }
                let booked = matches!(a.outcome, Outcome::Booked(_));
                if !same_content(&a.command, e) {
                    let v =
                        Violation::new(Some(name), format!("{:?} answered with {e:?}", a.command));
                    out.push(if booked { v } else { v.class(Class::Issue10) });
                }
                if booked {
                    let last = order.entry((a.client, a.call, name)).or_default();
                    if e.version <= *last {
                        out.push(Violation::new(
                            Some(name),
                            format!(
                                "a chunk's commands were booked out of order (v{} after v{last})",
                                e.version
                            ),
                        ));
                    }
                    *last = e.version;
                }
            }
            Outcome::Rejected(r) => rejection(a, r, stored, out),
            Outcome::ReplayedRefusal(r) => {
                if r.command != a.command {
                    out.push(
                        Violation::new(
                            Some(name),
                            format!(
                                "{:?} answered with the refusal of {:?}",
                                a.command, r.command
                            ),
                        )
                        .class(Class::Issue10),
                    );
                }
                rejection(a, &r.rejection, stored, out);
            }
            Outcome::Reused { field, original } => reused(a, field, original, out),
            Outcome::Invalid(r) => {
                if r.is_recorded() {
                    out.push(Violation::new(
                        Some(name),
                        format!(
                            "{:?} answered invalid with a rule's refusal: {r}",
                            a.command
                        ),
                    ));
                }
            }
            Outcome::Unknown(_) => {}
        }
    }
    refusals_agree(observed, out);
    for (a, again) in &observed.resubmissions {
        let refused = match (&a.outcome, again) {
            (Outcome::Rejected(r), Outcome::ReplayedRefusal(back)) => Some(&back.rejection == r),
            (Outcome::Rejected(_), _) => Some(false),
            _ => None,
        };
        if refused == Some(false) {
            out.push(
                Violation::new(
                    Some(a.account.as_str()),
                    format!("{:?} was refused, sent again answered {again:?}", a.command),
                )
                .class(Class::Issue10),
            );
        }
        let expected = match &a.outcome {
            Outcome::Booked(e) | Outcome::Duplicate(e) => e,
            _ => continue,
        };
        if again != &Outcome::Duplicate(expected.clone()) {
            out.push(Violation::new(
                Some(a.account.as_str()),
                format!(
                    "{:?} sent again answered {again:?}, not the original {expected:?}",
                    a.command
                ),
            ));
        }
    }
    told_booked(observed, stored, out);
}

/// A reuse names the first field in which this request differs from the id's outcome.
fn reused(a: &Attempt, field: &str, original: &TxnOutcome, out: &mut Vec<Violation>) {
    let first = a.command.first_difference(&original.command());
    if first != Some(field) || original.command().txn_id() != a.command.txn_id() {
        out.push(
            Violation::new(
                Some(a.account.as_str()),
                format!(
                    "{:?} refused as a reuse of {field} against {:?} (first difference {first:?})",
                    a.command,
                    original.command()
                ),
            )
            .class(Class::Issue10),
        );
    }
}

/// Every answer about one refused id carries the same refusal (the first one, forever).
fn refusals_agree(observed: &Observed, out: &mut Vec<Violation>) {
    let mut first: HashMap<(&str, &str), &Rejection> = HashMap::new();
    for a in &observed.attempts {
        let r = match &a.outcome {
            Outcome::Rejected(r) => r,
            Outcome::ReplayedRefusal(r) => &r.rejection,
            _ => continue,
        };
        let key = (a.account.as_str(), a.command.txn_id().as_str());
        if let Some(earlier) = first.insert(key, r)
            && earlier != r
        {
            out.push(
                Violation::new(
                    Some(a.account.as_str()),
                    format!("txn {} refused as {earlier} and as {r}", key.1),
                )
                .class(Class::Issue10),
            );
        }
    }
}

/// A refusal's figures are real: the amount is the command's and the balance is one the
/// account had. (When refusals are recorded, issue 10: the id is never booked later.)
fn rejection(a: &Attempt, r: &Rejection, stored: &Stored, out: &mut Vec<Violation>) {
    let name = a.account.as_str();
    let events = stored.events.get(&a.account).map_or(&[][..], Vec::as_slice);
    if let Rejection::InsufficientFunds {
        balance, amount, ..
    } = r
    {
        let real = balance.minor() == 0 || events.iter().any(|e| e.balance == *balance);
        let asked = matches!(&a.command, Command::Withdraw { amount: m, .. } if m == amount);
        if !real || !asked {
            out.push(Violation::new(
                Some(name),
                format!(
                    "{:?} refused with figures the account never had: {r}",
                    a.command
                ),
            ));
        }
    }
    if events.iter().any(|e| &e.txn_id == a.command.txn_id()) {
        out.push(
            Violation::new(
                Some(name),
                format!("txn {} was refused ({r}) and is booked", a.command.txn_id()),
            )
            .class(Class::Issue10),
        );
    }
}

/// Issue 10: a booked txn id was answered "booked" to someone, or some call carrying it
/// ended without an answer (a commit whose caller saw a timeout must still answer 201).
fn told_booked(observed: &Observed, stored: &Stored, out: &mut Vec<Violation>) {
    let mut told: HashSet<(&str, &str)> = HashSet::new();
    for a in &observed.attempts {
        if matches!(a.outcome, Outcome::Booked(_) | Outcome::Unknown(_)) {
            told.insert((a.account.as_str(), a.command.txn_id().as_str()));
        }
    }
    for (account, events) in &stored.events {
        for e in events {
            if !told.contains(&(account.as_str(), e.txn_id.as_str())) {
                out.push(Violation::new(Some(account.as_str()), format!("txn {} is booked, but every call carrying it was answered \"duplicate\"", e.txn_id)).class(Class::Issue10));
            }
        }
    }
}

/// Snapshots equal the reference fold of their events; nothing acknowledged was dropped.
fn snapshots(observed: &Observed, stored: &Stored, out: &mut Vec<Violation>) {
    let fold = |events: &[Event]| {
        let mut r = RefLedger::new(i64::MAX, i64::MAX);
        r.events = events.iter().map(ref_event).collect();
        r.snapshot()
    };
    for (when, set) in [("drained", &stored.drained), ("final", &stored.snapshots)] {
        for (name, s) in set {
            let events = AccountId::new(name.as_str())
                .ok()
                .and_then(|a| stored.events.get(&a))
                .map_or(&[][..], Vec::as_slice);
            let Some(prefix) = events.get(..s.version as usize) else {
                out.push(Violation::new(
                    Some(name),
                    format!(
                        "{when} snapshot at version {} beyond the {} stored events",
                        s.version,
                        events.len()
                    ),
                ));
                continue;
            };
            if ref_snapshot(s) != fold(prefix) {
                out.push(Violation::new(
                    Some(name),
                    format!(
                        "{when} snapshot {s:?} is not the fold of its events: {:?}",
                        fold(prefix)
                    ),
                ));
            }
        }
    }
    for (account, events) in &stored.events {
        let at = stored
            .snapshots
            .get(account.as_str())
            .map_or(0, |s| s.version);
        if at != events.len() as u64 {
            out.push(Violation::new(
                Some(account.as_str()),
                format!(
                    "after the backstop the snapshot is at version {at} of {}",
                    events.len()
                ),
            ));
        }
    }
    for (name, acked) in &observed.acks.versions {
        let at = stored.drained.get(name).map_or(0, |s| s.version);
        if at < *acked {
            let v = Violation::new(
                Some(name),
                format!(
                    "the mapping acknowledged version {acked} but the drained snapshot is at {at}: a group was dropped without a failure report"
                ),
            );
            out.push(v);
        }
    }
}

/// Published records hold stored events only; poison is quarantined, nothing else is.
fn stream(observed: &Observed, stored: &Stored, out: &mut Vec<Violation>) {
    for data in &observed.published {
        for page in decode_record_pages(data).unwrap_or_default() {
            for e in page.events() {
                if stored_at(stored, &page.account, e.version) != Some(e) {
                    out.push(Violation::new(
                        Some(page.account.as_str()),
                        format!("published {e:?}, which the store does not hold"),
                    ));
                }
            }
        }
    }
    let quarantined: HashSet<u64> = stored
        .quarantined
        .iter()
        .filter_map(|q| q.sequence_number.parse().ok())
        .collect();
    for q in &quarantined {
        if !observed.poison.contains(q) {
            out.push(Violation::new(
                None,
                format!("record {q} was quarantined but is not poison"),
            ));
        }
    }
    for p in &observed.acks.poison {
        if !quarantined.contains(p) {
            out.push(Violation::new(
                None,
                format!("poison record {p} was acknowledged but not quarantined"),
            ));
        }
    }
}

/// The counters agree with the stores (exactly where no crash lost a process's counts).
fn metrics(observed: &Observed, stored: &Stored, out: &mut Vec<Violation>) {
    let sum = |f: fn(&crate::service::metrics::Metrics) -> &std::sync::atomic::AtomicU64| {
        observed
            .metrics
            .iter()
            .map(|m| f(m).load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let events: u64 = stored.events.values().map(|e| e.len() as u64).sum();
    let appended = sum(|m| &m.events_appended);
    if appended > events || (observed.crashes == 0 && appended + observed.silent_events < events) {
        out.push(Violation::new(
            None,
            format!(
                "events_appended {appended} (+{} unseen commits) for {events} stored events",
                observed.silent_events
            ),
        ));
    }
    if observed.crashes == 0 && observed.catch_ups <= 1 && observed.acks.given_up == 0 {
        // Every snapshot write counts, the backstop's catch-up's too: compare with the
        // snapshots after it.
        let projected = sum(|m| &m.events_projected) + observed.silent_versions;
        let versions: u64 = stored.snapshots.values().map(|s| s.version).sum();
        if projected != versions {
            out.push(Violation::new(None, format!("events_projected {projected} (with unseen writes) but the final snapshots moved {versions} versions")));
        }
        // A redelivered poison record is quarantined again under the same key.
        let quarantined = sum(|m| &m.records_quarantined) + observed.silent_quarantined;
        if quarantined < stored.quarantined.len() as u64 {
            out.push(Violation::new(
                None,
                format!(
                    "records_quarantined {quarantined} for {} quarantined records",
                    stored.quarantined.len()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, Money, Timestamp, TxnId};

    fn stored(events: Vec<Event>) -> Stored {
        let account = AccountId::new("a0").expect("valid");
        Stored {
            events: BTreeMap::from([(account, events)]),
            drained: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            quarantined: Vec::new(),
            verify: Ok(VerifyReport::default()),
        }
    }

    fn overdraw() -> Event {
        let at = Timestamp::from_millis(1_767_225_600_000).expect("in range");
        Event {
            version: 1,
            txn_id: TxnId::new("w1").expect("valid"),
            kind: EventKind::Withdrawn { amount: Money(5) },
            occurred_at: at,
            recorded_at: at,
            balance: Money(-5),
        }
    }

    #[test]
    fn a_stored_event_the_rules_refuse_is_a_violation() {
        let found = check(
            Policy::default(),
            &Observed::default(),
            &stored(vec![overdraw()]),
        );
        assert!(
            found
                .iter()
                .any(|v| v.what.contains("the rules refuse it: insufficient_funds")),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|v| v.what.contains("after the backstop")),
            "{found:#?}"
        );
    }

    #[test]
    fn an_acknowledged_event_missing_from_the_drained_snapshot_is_a_dropped_group() {
        let mut observed = Observed::default();
        observed.acks.versions.insert("a0".into(), 1);
        let dropped = |o: &Observed| {
            check(
                Policy::new(10, 10).expect("valid"),
                o,
                &stored(vec![overdraw()]),
            )
            .into_iter()
            .find(|v| v.what.contains("dropped without a failure report"))
            .map(|v| v.class)
        };
        assert_eq!(dropped(&observed), Some(Class::New));
        let found = check(
            Policy::new(10, 10).expect("valid"),
            &observed,
            &stored(vec![overdraw()]),
        );
        assert!(
            found.iter().any(|v| v.what.contains("no client asked")),
            "{found:#?}"
        );
    }
}
