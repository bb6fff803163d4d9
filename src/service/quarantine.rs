//! Listing and redrive of quarantined stream records, for operators (`tally quarantine
//! list|redrive`, both backends). A redrive feeds each record that now decodes (after a
//! fix: a newer reader, a producer bug understood) through the projector exactly as the
//! stream would, and removes it from the quarantine only once the projector reported no
//! failure. A record that still does not decode stays, with today's error reported; nothing
//! is ever removed unprojected.
//!
//! Parked accounts (`tally parked list|redrive`) are listed and redriven the same way:
//! see [`crate::service::projector::park`].

use crate::codec::access_aggregate;
use crate::codec::batch::RecordBatch;
use crate::ports::{EventStore, Parked, QuarantineAdmin, Quarantined, SnapshotStore, StoreError};
use crate::service::projector::{Projector, Redriven};

/// What a redrive did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Redrive {
    /// Records projected and removed from the quarantine.
    pub projected: u64,
    /// Records left in place: (shard, sequence number, why).
    pub left: Vec<(String, String, String)>,
}

/// Every quarantined record, bytes included.
pub async fn list<Q: QuarantineAdmin>(quarantine: &Q) -> Result<Vec<Quarantined>, StoreError> {
    quarantine.list().await
}

/// Redrives every quarantined record through `projector` (whose quarantine is `quarantine`).
pub async fn redrive<E: EventStore, S: SnapshotStore, Q: QuarantineAdmin>(
    projector: &Projector<E, S, Q>,
    quarantine: &Q,
) -> Result<Redrive, StoreError> {
    let mut done = Redrive::default();
    for record in quarantine.list().await? {
        if let Err(e) = access_aggregate(&record.data) {
            done.left.push((
                record.shard,
                record.sequence_number,
                format!("still undecodable: {e}"),
            ));
            continue;
        }
        let mut batch = RecordBatch::new();
        batch.push(&record.shard, &record.sequence_number, &record.data);
        if projector.project(&batch).await.failed.is_empty() {
            quarantine
                .remove(&record.shard, &record.sequence_number)
                .await?;
            done.projected += 1;
        } else {
            done.left.push((
                record.shard,
                record.sequence_number,
                "the projector reported a failure; see its log".into(),
            ));
        }
    }
    Ok(done)
}

/// What a redrive of parked accounts did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParkedRedrive {
    /// Accounts projected up to their newest version and unparked: (account, version).
    pub unparked: Vec<(String, u64)>,
    /// Accounts whose events still do not fold, parked again with today's error.
    pub still_parked: Vec<Parked>,
    /// Accounts named that were not parked.
    pub not_parked: Vec<String>,
    /// Accounts the redrive could not finish (a store failure, a name that is not an
    /// account id): (account, why). They stay parked; run the redrive again.
    pub errors: Vec<(String, String)>,
}

/// Every parked account, in account order.
pub async fn parked<Q: QuarantineAdmin>(quarantine: &Q) -> Result<Vec<Parked>, StoreError> {
    quarantine.parked_list().await
}

/// Redrives the parked accounts named in `accounts` (every parked account if empty)
/// through `projector` (whose quarantine is `quarantine`): each is projected from the event
/// store and unparked, or parked again if its events still do not fold.
pub async fn redrive_parked<E: EventStore, S: SnapshotStore, Q: QuarantineAdmin>(
    projector: &Projector<E, S, Q>,
    quarantine: &Q,
    accounts: &[String],
) -> Result<ParkedRedrive, StoreError> {
    let mut done = ParkedRedrive::default();
    let mut parked = quarantine.parked_list().await?;
    if !accounts.is_empty() {
        let named: std::collections::BTreeSet<&str> = accounts.iter().map(String::as_str).collect();
        parked.retain(|p| named.contains(p.account.as_str()));
        let found: std::collections::BTreeSet<&str> =
            parked.iter().map(|p| p.account.as_str()).collect();
        done.not_parked = named.difference(&found).map(|&a| a.to_owned()).collect();
    }
    for p in &parked {
        match projector.redrive_parked(p).await {
            Ok(Redriven::Unparked { version }) => done.unparked.push((p.account.clone(), version)),
            Ok(Redriven::StillParked(again)) => done.still_parked.push(again),
            Err(e) => done.errors.push((p.account.clone(), e.to_string())),
        }
    }
    Ok(done)
}
