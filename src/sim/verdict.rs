//! Which violations are known, open defects: a run on a store that broke the append
//! contract (issue 8, defect 1) corrupts its accounts, and everything that follows from
//! that corruption is that defect's doing, not a new finding.
//!
//! Must never: hide a violation (a known one is still reported, and fails with
//! `--strict`).

use std::collections::HashSet;

use crate::sim::faults::ContractBreach;
use crate::sim::history::{Class, Violation};

/// Port breaches become violations; whatever happened to an account whose append broke
/// atomicity is that known defect's doing.
pub fn attribute(breaches: &[ContractBreach], mut found: Vec<Violation>) -> Vec<Violation> {
    let broken: HashSet<&str> = breaches
        .iter()
        .filter(|b| b.what.contains("all-or-nothing"))
        .map(|b| b.account.as_str())
        .collect();
    for b in breaches {
        let v = Violation::new(Some(b.account.as_str()), b.what.clone());
        found.push(if broken.contains(b.account.as_str()) {
            v.class(Class::KnownAppendAtomicity)
        } else {
            v
        });
    }
    for v in &mut found {
        // A page written after a failed one was never counted or answered as booked.
        let uncounted = !broken.is_empty()
            && (v.what.starts_with("events_appended") || v.what.contains("did not drain"));
        let named = v.account.as_deref().is_some_and(|a| broken.contains(a))
            || broken
                .iter()
                .any(|a| v.what.contains(&format!("events of {a} ")))
            || uncounted;
        if named && v.class == Class::New {
            v.class = Class::KnownAppendAtomicity;
        }
    }
    // A catch-up stops at the first account it cannot fold, so the accounts after a
    // corrupt one stay behind too.
    let halted = found
        .iter()
        .any(|v| v.class == Class::KnownAppendAtomicity && v.what.contains("catch-up"));
    for v in &mut found {
        if halted && v.class == Class::New && v.what.starts_with("after the backstop") {
            v.class = Class::KnownAppendAtomicity;
        }
    }
    found
}
