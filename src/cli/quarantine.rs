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

/// Stored text on one line, one field: what an item holds can never forge a line.
fn field(s: &str) -> String {
    s.replace(['\t', '\n', '\r'], " ")
}

fn parked_line(p: &Parked) -> String {
    let at = if p.shard.is_empty() {
        "catch-up".to_owned()
    } else {
        format!("{}/{}", p.shard, p.sequence_number)
    };
    format!(
        "{}\tversion {}\t{}\t{}",
        field(&p.account),
        p.version,
        field(&at),
        field(&p.error)
    )
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
        say!(
            "unparked\t{}\tprojected to version {version}",
            field(account)
        );
    }
    for p in &done.still_parked {
        say!("parked\t{}", parked_line(p));
    }
    for account in &done.not_parked {
        say!("not parked\t{}", field(account));
    }
    for (account, why) in &done.errors {
        say!("error\t{}\t{}", field(account), field(why));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever a stored item holds, a parked account is one line of four fields.
    #[test]
    fn a_parked_line_is_one_line_whatever_the_item_holds() {
        let p = Parked {
            account: "evil\tacc\nINJECTED".into(),
            version: 2,
            shard: "sh\tA\nB".into(),
            sequence_number: "1\r2".into(),
            error: "a\tb\nc".into(),
        };
        let line = parked_line(&p);
        assert!(!line.contains(['\n', '\r']), "{line:?}");
        assert_eq!(line.split('\t').count(), 4, "{line:?}");
        assert!(
            line.starts_with("evil acc INJECTED\tversion 2\tsh A B/1 2\t"),
            "{line:?}"
        );
    }
}
