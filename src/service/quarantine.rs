//! Listing and redrive of quarantined stream records, for operators (`tally quarantine
//! list|redrive`, both backends). A redrive feeds each record that now decodes (after a
//! fix: a newer reader, a producer bug understood) through the projector exactly as the
//! stream would, and removes it from the quarantine only once the projector reported no
//! failure. A record that still does not decode stays, with today's error reported; nothing
//! is ever removed unprojected.

use crate::codec::access_aggregate;
use crate::codec::batch::RecordBatch;
use crate::ports::{EventStore, QuarantineAdmin, Quarantined, SnapshotStore, StoreError};
use crate::service::projector::Projector;

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
