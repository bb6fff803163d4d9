//! `tally quarantine list|redrive` and `tally parked list|redrive`, written once over the
//! ports for both backends: what an operator runs when the `RecordsQuarantined` or
//! `AccountsParked` alarm fires. Never removes a record the projector did not take, never
//! unparks an account it did not project.

use std::path::Path;
use std::process::ExitCode;

use crate::ports::{EventStore, Parked, QuarantineAdmin, SnapshotStore};
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

/// `tally parked list`: one line per parked account (account, first failing version, where
/// it was met, error).
pub async fn parked_list<Q: QuarantineAdmin>(q: &Q) -> Result<ExitCode, String> {
    let parked = quarantine::parked(q).await.map_err(|e| e.to_string())?;
    for p in &parked {
        say!("{}", parked_line(p));
    }
    say!("{} parked accounts", parked.len());
    Ok(ExitCode::SUCCESS)
}

fn parked_line(p: &Parked) -> String {
    let at = if p.shard.is_empty() {
        "catch-up".to_owned()
    } else {
        format!("{}/{}", p.shard, p.sequence_number)
    };
    // One line per account, whatever the stored text holds.
    let error = p.error.replace(['\t', '\n', '\r'], " ");
    format!("{}\tversion {}\t{at}\t{error}", p.account, p.version)
}

/// `tally parked redrive [ACCOUNT]...`: projects each parked account (every one if none is
/// named) from the event store and unparks it; exits 1 if any stays parked or a named
/// account was not parked.
pub async fn parked_redrive<E: EventStore, S: SnapshotStore, Q: QuarantineAdmin>(
    projector: &Projector<E, S, Q>,
    q: &Q,
    accounts: &[String],
) -> Result<ExitCode, String> {
    let done = quarantine::redrive_parked(projector, q, accounts)
        .await
        .map_err(|e| e.to_string())?;
    for (account, version) in &done.unparked {
        say!("unparked\t{account}\tprojected to version {version}");
    }
    for p in &done.still_parked {
        say!("parked\t{}", parked_line(p));
    }
    for account in &done.not_parked {
        say!("not parked\t{account}");
    }
    for (account, why) in &done.errors {
        say!("error\t{account}\t{why}");
    }
    say!(
        "unparked {} accounts; {} still parked",
        done.unparked.len(),
        done.still_parked.len()
    );
    Ok(
        if done.still_parked.is_empty() && done.not_parked.is_empty() && done.errors.is_empty() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        },
    )
}
