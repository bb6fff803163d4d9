//! Segments: immutable summaries of [`SEGMENT_EVENTS`] consecutive versions of an account,
//! so a balance as of a business time reads a summary per segment instead of every event.
//!
//! Business time is not version order (an event may be backdated), so a segment keeps the
//! range of business times it holds: a segment entirely at or before the instant counts as
//! its net change, one entirely after counts nothing, and only a segment that straddles the
//! instant is read event by event. For events arriving roughly in business-time order that
//! is one or two segments whatever the account's size.

use super::event::Event;
pub use super::limits::SEGMENT_EVENTS;
use super::time::Timestamp;

/// The summary of one complete segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// 0-based segment index.
    pub index: u64,
    /// Earliest and latest business time among its events.
    pub earliest: Timestamp,
    pub latest: Timestamp,
    /// Sum of its events' balance changes (fits: at most 1024 deltas of at most 2^63).
    pub net: i128,
}

impl Segment {
    /// First and last version the segment covers.
    pub fn versions(index: u64) -> (u64, u64) {
        let first = index.saturating_mul(SEGMENT_EVENTS).saturating_add(1);
        (first, first.saturating_add(SEGMENT_EVENTS - 1))
    }

    /// Summarizes the events of segment `index`; `None` unless `events` are exactly its
    /// versions, in order (a segment is only summarized once complete).
    pub fn summarize(index: u64, events: &[Event]) -> Option<Segment> {
        let (first, last) = Segment::versions(index);
        if events.len() as u64 != SEGMENT_EVENTS
            || events.first()?.version != first
            || events.last()?.version != last
            || events.windows(2).any(|w| w[1].version != w[0].version + 1)
        {
            return None;
        }
        let mut net: i128 = 0;
        for e in events {
            net += i128::from(e.kind.delta()?.minor());
        }
        Some(Segment {
            index,
            earliest: events.iter().map(|e| e.occurred_at).min()?,
            latest: events.iter().map(|e| e.occurred_at).max()?,
            net,
        })
    }

    /// Indexes of the segments an account's tip moving from `before` to `after` completes.
    pub fn completed(before: u64, after: u64) -> std::ops::Range<u64> {
        before / SEGMENT_EVENTS..after / SEGMENT_EVENTS
    }

    /// What this segment contributes to a balance as of `at`: all of it, nothing, or "read
    /// my events" (`None`).
    pub fn contribution(&self, at: Timestamp) -> Option<i128> {
        if self.latest <= at {
            Some(self.net)
        } else if self.earliest > at {
            Some(0)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{EventKind, Money, TxnId};

    fn event(version: u64, ms: i64, delta: i64) -> Event {
        Event {
            version,
            txn_id: TxnId::new(format!("t{version}")).unwrap(),
            kind: if delta >= 0 {
                EventKind::Deposited {
                    amount: Money(delta),
                }
            } else {
                EventKind::Withdrawn {
                    amount: Money(-delta),
                }
            },
            occurred_at: Timestamp::from_millis(ms).unwrap(),
            recorded_at: Timestamp::from_millis(ms).unwrap(),
            balance: Money(0),
        }
    }

    #[test]
    fn a_segment_summarizes_exactly_its_versions_and_answers_by_business_time() {
        let events: Vec<Event> = (1..=SEGMENT_EVENTS)
            .map(|v| event(SEGMENT_EVENTS + v, 1_000 + v as i64, 2))
            .collect();
        let s = Segment::summarize(1, &events).unwrap();
        assert_eq!(
            (s.earliest.millis(), s.latest.millis(), s.net),
            (
                1_001,
                1_000 + SEGMENT_EVENTS as i64,
                2 * SEGMENT_EVENTS as i128
            )
        );
        assert_eq!(
            s.contribution(Timestamp::from_millis(999).unwrap()),
            Some(0)
        );
        assert_eq!(s.contribution(Timestamp::from_millis(1_001).unwrap()), None);
        assert_eq!(
            s.contribution(Timestamp::from_millis(5_000).unwrap()),
            Some(2 * SEGMENT_EVENTS as i128)
        );
        assert_eq!(Segment::summarize(0, &events), None, "wrong versions");
        assert_eq!(Segment::summarize(1, &events[1..]), None, "incomplete");
        assert_eq!(Segment::completed(1023, 1024), 0..1);
        assert_eq!(Segment::completed(1024, 3000), 1..2);
        assert_eq!(Segment::versions(2), (2049, 3072));
    }
}
