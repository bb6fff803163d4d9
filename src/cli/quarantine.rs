//! `tally quarantine list|redrive`, written once over the ports for both backends: what an
//! operator runs when the `RecordsQuarantined` alarm fires. Never removes a record the
//! projector did not take.

use std::path::Path;
use std::process::ExitCode;

use crate::ports::{EventStore, QuarantineAdmin, SnapshotStore};
use crate::service::projector::Projector;
use crate::service::quarantine;

/// One line per record (shard, sequence number, size, error); with `dump`, each record's
/// bytes also go to `DIR/<shard>_<sequence number>.bin`.
pub async fn list<Q: QuarantineAdmin>(q: &Q, dump: Option<&Path>) -> Result<ExitCode, String> {
    let records = quarantine::list(q).await.map_err(|e| e.to_string())?;
    if let Some(dir) = dump {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    for r in &records {
        say!(
            "{}\t{}\t{} bytes\t{}",
            r.shard,
            r.sequence_number,
            r.data.len(),
            r.error
        );
        if let Some(dir) = dump {
            let name = format!("{}_{}.bin", r.shard, r.sequence_number).replace(['/', '\\'], "_");
            let path = dir.join(name);
            std::fs::write(&path, &r.data).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    say!("{} quarantined records", records.len());
    Ok(ExitCode::SUCCESS)
}

/// Redrives every record; exits 1 if any stays quarantined.
pub async fn redrive<E: EventStore, S: SnapshotStore, Q: QuarantineAdmin>(
    projector: &Projector<E, S, Q>,
    q: &Q,
) -> Result<ExitCode, String> {
    let done = quarantine::redrive(projector, q)
        .await
        .map_err(|e| e.to_string())?;
    for (shard, seq, why) in &done.left {
        say!("left\t{shard}\t{seq}\t{why}");
    }
    say!(
        "redrove {} records; {} left in quarantine",
        done.projected,
        done.left.len()
    );
    Ok(if done.left.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
