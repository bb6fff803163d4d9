//! Process-wide counters, rendered as Prometheus text by the HTTP API and as logs by the
//! CLI. Plain atomics: cheap enough for the hot path, no registry crate needed.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Debug, Default)]
pub struct Metrics {
    pub events_appended: AtomicU64,
    pub records_published: AtomicU64,
    pub batches_projected: AtomicU64,
    pub events_projected: AtomicU64,
    pub duplicates_skipped: AtomicU64,
    pub snapshot_conflicts: AtomicU64,
    pub gaps_filled: AtomicU64,
    pub records_quarantined: AtomicU64,
    pub accounts_failed: AtomicU64,
    /// Records published but not yet projected (embedded stream only).
    pub projection_lag_records: AtomicU64,
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64, &str); 10] = [
            (
                "tally_events_appended_total",
                "counter",
                &self.events_appended,
                "Events appended to the event store.",
            ),
            (
                "tally_records_published_total",
                "counter",
                &self.records_published,
                "Stream records published.",
            ),
            (
                "tally_batches_projected_total",
                "counter",
                &self.batches_projected,
                "Stream batches projected.",
            ),
            (
                "tally_events_projected_total",
                "counter",
                &self.events_projected,
                "Events folded into snapshots.",
            ),
            (
                "tally_duplicates_skipped_total",
                "counter",
                &self.duplicates_skipped,
                "Redelivered events skipped.",
            ),
            (
                "tally_snapshot_conflicts_total",
                "counter",
                &self.snapshot_conflicts,
                "Conditional snapshot writes that lost a race.",
            ),
            (
                "tally_gaps_filled_total",
                "counter",
                &self.gaps_filled,
                "Version gaps filled from the event store.",
            ),
            (
                "tally_records_quarantined_total",
                "counter",
                &self.records_quarantined,
                "Undecodable stream records quarantined.",
            ),
            (
                "tally_accounts_failed_total",
                "counter",
                &self.accounts_failed,
                "Accounts reported as batch item failures.",
            ),
            (
                "tally_projection_lag_records",
                "gauge",
                &self.projection_lag_records,
                "Records published but not yet projected.",
            ),
        ];
        let mut out = String::new();
        for (name, kind, value, help) in rows {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}",
                value.load(Ordering::Relaxed)
            );
        }
        out
    }
}
