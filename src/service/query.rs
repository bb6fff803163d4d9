//! The read side: balances from the snapshot store, history and point-in-time balances
//! folded from the event store on demand. A snapshot that lags its events (a publish that
//! failed, a crash before catch-up) is completed from the event store before it is served,
//! so a client always reads its own acknowledged writes.

use crate::domain::limits::SEGMENT_EVENTS;
use crate::domain::{AccountId, Effect, Event, Money, Segment, Snapshot, Timestamp};
use crate::ports::{EventStore, SnapshotStore, StoreError};
use crate::service::projector::fold_group;

/// Most events returned by one history call.
pub const HISTORY_PAGE_MAX: usize = 1_000;

#[derive(Clone)]
pub struct QueryService<E, S> {
    events: E,
    snapshots: S,
}

/// A balance at a business time: every event whose `occurred_at` is at or before `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointInTime {
    pub at: Timestamp,
    pub balance: Money,
    pub events: u64,
}

impl<E: EventStore, S: SnapshotStore> QueryService<E, S> {
    pub fn new(events: E, snapshots: S) -> Self {
        QueryService { events, snapshots }
    }

    /// The snapshot store as is (no completion from the events): for callers that wait
    /// for the projector.
    pub fn snapshots(&self) -> &S {
        &self.snapshots
    }

    /// The account's snapshot, completed from the event store if it lags; `None` for an
    /// account with no events.
    pub async fn balance(&self, account: &AccountId) -> Result<Option<Snapshot>, StoreError> {
        let snapshot = self
            .snapshots
            .get(account.as_str())
            .await?
            .unwrap_or_default();
        let tip = self.events.tip(account).await?;
        if tip.version == 0 && snapshot.version == 0 {
            return Ok(None);
        }
        // The tip is read after the snapshot, so a snapshot ahead of it, or one whose
        // figures do not add up, is an altered item: never served as a balance.
        if snapshot.version > tip.version || !snapshot.adds_up() {
            return Err(StoreError::Corrupt(format!(
                "the snapshot of {account} (version {}) is ahead of its events ({}) or does not add up",
                snapshot.version, tip.version
            )));
        }
        if snapshot.version == tip.version {
            return Ok(Some(snapshot));
        }
        let missing = self
            .events
            .read(account, snapshot.version + 1, tip.version)
            .await?;
        let fx: Vec<Effect> = missing.iter().filter_map(Event::effect).collect();
        let fold = fold_group(snapshot, &fx);
        match fold.stop {
            None => Ok(Some(fold.snapshot)),
            Some(stop) => Err(StoreError::Corrupt(format!(
                "events of {account} do not fold: {stop:?}"
            ))),
        }
    }

    /// Events `from..` in version order, at most `limit` (capped at [`HISTORY_PAGE_MAX`]).
    pub async fn history(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        let limit = limit.clamp(1, HISTORY_PAGE_MAX) as u64;
        let from = from.max(1);
        self.events
            .read(account, from, from.saturating_add(limit - 1))
            .await
    }

    /// The balance as of business time `at` (every event whose `occurred_at` is at or before
    /// it); `None` for an unknown account.
    ///
    /// Bounded work and memory at any account size when events arrive roughly in business
    /// time order: one summary per complete segment of [`SEGMENT_EVENTS`] versions, plus the
    /// events of the segments that straddle `at` and of the unsummarized tail, read a
    /// segment at a time. (Backdated events make more segments straddle `at`; memory stays
    /// bounded, the time grows with them.)
    pub async fn balance_at(
        &self,
        account: &AccountId,
        at: Timestamp,
    ) -> Result<Option<PointInTime>, StoreError> {
        let tip = self.events.tip(account).await?;
        if tip.version == 0 {
            return Ok(None);
        }
        let mut total = Sum::default();
        // Versions before `next` are counted.
        let mut next = 1;
        'summaries: loop {
            let index = (next - 1) / SEGMENT_EVENTS;
            let segments = self
                .events
                .segments(account, index, SEGMENTS_PAGE_MAX)
                .await?;
            let full = segments.len() == SEGMENTS_PAGE_MAX;
            for segment in segments {
                let (first, last) = Segment::versions(segment.index);
                if first != next || last > tip.version {
                    break 'summaries; // a missing summary: read events from here on
                }
                match segment.contribution(at) {
                    Some(net) => total.net += net,
                    None => total.add(&self.events.read(account, first, last).await?, at)?,
                }
                total.events_summarized(&segment, at);
                next = last + 1;
            }
            if !full {
                break;
            }
        }
        while next <= tip.version {
            let last = next.saturating_add(SEGMENT_EVENTS - 1).min(tip.version);
            let events = self.events.read(account, next, last).await?;
            if events.is_empty() {
                return Err(StoreError::Corrupt(format!(
                    "{account} lacks events {next}..={last}"
                )));
            }
            total.add(&events, at)?;
            next = last + 1;
        }
        // Any prefix of booked deltas in business-time order may exceed i64 in theory
        // (reversals are booked later); report it rather than wrap.
        let balance = i64::try_from(total.net).map_err(|_| {
            StoreError::Corrupt(format!("balance of {account} at {at} exceeds i64"))
        })?;
        Ok(Some(PointInTime {
            at,
            balance: Money(balance),
            events: total.events,
        }))
    }
}

/// Summaries read per store call.
const SEGMENTS_PAGE_MAX: usize = 1_000;

/// What a point-in-time read has counted so far.
#[derive(Default)]
struct Sum {
    net: i128,
    /// Events at or before the instant (exact for read events; for a summarized segment,
    /// its whole count when it lies entirely before the instant).
    events: u64,
}

impl Sum {
    fn add(&mut self, events: &[Event], at: Timestamp) -> Result<(), StoreError> {
        for e in events.iter().filter(|e| e.occurred_at <= at) {
            let delta = e
                .kind
                .delta()
                .ok_or_else(|| StoreError::Corrupt("impossible delta".into()))?;
            self.net += i128::from(delta.minor());
            self.events += 1;
        }
        Ok(())
    }

    fn events_summarized(&mut self, segment: &Segment, at: Timestamp) {
        if segment.latest <= at {
            self.events += SEGMENT_EVENTS;
        }
    }
}
