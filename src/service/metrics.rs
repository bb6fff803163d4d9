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
    /// Accounts the backstop found behind their event store and projected itself: each is
    /// a publish or a stream record that never reached the projector (alarmed on AWS).
    pub accounts_repaired: AtomicU64,
    /// Accounts the backstop could not bring up to date (not an account id).
    pub backstop_failures: AtomicU64,
    /// Accounts parked because their events do not fold (alarmed on AWS).
    pub accounts_parked: AtomicU64,
    /// Groups of a batch skipped because their account is parked.
    pub parked_groups_skipped: AtomicU64,
    /// Records published but not yet projected (embedded stream only).
    pub projection_lag_records: AtomicU64,
    /// Conditional snapshot writes that succeeded (the projector's floor is one per
    /// account per batch).
    pub snapshots_written: AtomicU64,
    /// Records an event source mapping played here gave up on after its retries; their
    /// events wait for a catch-up from the event store.
    pub records_given_up: AtomicU64,
    /// DynamoDB capacity consumed, in thousandths of a unit (`ReturnConsumedCapacity`).
    pub read_capacity_milli: AtomicU64,
    pub write_capacity_milli: AtomicU64,
}

/// Thousandths of a capacity unit, as the counters keep them.
pub fn milli_units(units: f64) -> u64 {
    if units.is_finite() && units > 0.0 {
        (units * 1000.0).round() as u64
    } else {
        0
    }
}

impl Metrics {
    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64, &str); 16] = [
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
                "tally_accounts_repaired_total",
                "counter",
                &self.accounts_repaired,
                "Accounts the backstop projected from the event store.",
            ),
            (
                "tally_backstop_failures_total",
                "counter",
                &self.backstop_failures,
                "Accounts the backstop could not bring up to date.",
            ),
            (
                "tally_accounts_parked_total",
                "counter",
                &self.accounts_parked,
                "Accounts parked because their events do not fold (tally parked list).",
            ),
            (
                "tally_parked_groups_skipped_total",
                "counter",
                &self.parked_groups_skipped,
                "Per-batch groups of events skipped because their account is parked.",
            ),
            (
                "tally_snapshots_written_total",
                "counter",
                &self.snapshots_written,
                "Conditional snapshot writes made.",
            ),
            (
                "tally_records_given_up_total",
                "counter",
                &self.records_given_up,
                "Stream records the event source mapping gave up on (caught up from the event store).",
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
        for (name, value, help) in [
            (
                "tally_dynamodb_read_capacity_units_total",
                &self.read_capacity_milli,
                "DynamoDB read capacity units consumed.",
            ),
            (
                "tally_dynamodb_write_capacity_units_total",
                &self.write_capacity_milli,
                "DynamoDB write capacity units consumed.",
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
                value.load(Ordering::Relaxed) as f64 / 1000.0
            );
        }
        out
    }
}

/// The EMF counters by name (capacity in units, the rest counts).
pub type Counters = [(&'static str, f64); 13];

impl Metrics {
    /// The counters CloudWatch alarms and dashboards use, by their EMF names.
    pub fn counters(&self) -> Counters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed) as f64;
        [
            ("EventsProjected", get(&self.events_projected)),
            ("DuplicatesSkipped", get(&self.duplicates_skipped)),
            ("GapsFilled", get(&self.gaps_filled)),
            ("SnapshotConflicts", get(&self.snapshot_conflicts)),
            ("SnapshotsWritten", get(&self.snapshots_written)),
            ("RecordsQuarantined", get(&self.records_quarantined)),
            ("AccountsFailed", get(&self.accounts_failed)),
            ("AccountsRepaired", get(&self.accounts_repaired)),
            ("BackstopFailures", get(&self.backstop_failures)),
            ("AccountsParked", get(&self.accounts_parked)),
            ("ParkedGroupsSkipped", get(&self.parked_groups_skipped)),
            ("ReadCapacityUnits", get(&self.read_capacity_milli) / 1000.0),
            (
                "WriteCapacityUnits",
                get(&self.write_capacity_milli) / 1000.0,
            ),
        ]
    }

    /// One CloudWatch Embedded Metric Format line with the change of every counter since
    /// `before` (namespace `Tally`, dimension `Function`).
    pub fn emf(&self, function: &str, before: &Counters, timestamp_ms: i64) -> String {
        let now = self.counters();
        let names: Vec<serde_json::Value> = now
            .iter()
            .map(|(n, _)| serde_json::json!({ "Name": n, "Unit": "Count" }))
            .collect();
        let mut line = serde_json::json!({
            "_aws": {
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{ "Namespace": "Tally", "Dimensions": [["Function"]], "Metrics": names }],
            },
            "Function": function,
        });
        for ((name, after), (_, prior)) in now.iter().zip(before) {
            line[*name] = serde_json::json!((after - prior).max(0.0));
        }
        line.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emf_reports_the_change_since_the_last_line_in_cloudwatch_shape() {
        let m = Metrics::default();
        Metrics::add(&m.records_quarantined, 2);
        let before = m.counters();
        Metrics::add(&m.records_quarantined, 1);
        Metrics::add(&m.events_projected, 40);
        let v: serde_json::Value = serde_json::from_str(&m.emf("projector", &before, 7)).unwrap();
        assert_eq!(
            (
                v["RecordsQuarantined"].as_f64(),
                v["EventsProjected"].as_f64()
            ),
            (Some(1.0), Some(40.0))
        );
        assert_eq!(v["_aws"]["CloudWatchMetrics"][0]["Namespace"], "Tally");
        assert_eq!(
            v["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .map(Vec::len),
            Some(13)
        );
        assert_eq!(
            v["AccountsParked"].as_f64(),
            Some(0.0),
            "alarmed: always emitted"
        );
        assert!(m.render().contains("tally_records_quarantined_total 3"));
        Metrics::add(&m.write_capacity_milli, milli_units(2.5));
        assert!(
            m.render()
                .contains("tally_dynamodb_write_capacity_units_total 2.5")
        );
    }
}
