//! Port contract breaches the fault layer saw (e.g. an append answered with the wrong
//! number of results) join the checker's violations. Issue 8's defects 1 and 2 are fixed:
//! nothing is attributed to a known defect any more, every violation fails the run.
//!
//! Must never: hide or reclassify a violation.

use crate::sim::faults::ContractBreach;
use crate::sim::history::Violation;

/// Port breaches become violations beside what the checker found.
pub fn attribute(breaches: &[ContractBreach], mut found: Vec<Violation>) -> Vec<Violation> {
    found.extend(
        breaches
            .iter()
            .map(|b| Violation::new(Some(b.account.as_str()), b.what.clone())),
    );
    found
}
