//! Packing pages into stream records under the record size limit. A page too large for one
//! record is split into consecutive runs; nothing is ever truncated.

use rkyv::util::AlignedVec;

use super::CodecError;
use super::record::{HEADER_BYTES, encode_aggregate};
use super::wire::{WireAggregate, WireEvent, WireKind, WirePage};

/// Upper estimate of an event's archived size: fixed fields, out-of-line strings, padding.
fn event_bytes_est(e: &WireEvent) -> usize {
    let reverses = match &e.kind {
        WireKind::Reversed { reverses, .. } => reverses.len(),
        WireKind::Deposited { .. } | WireKind::Withdrawn { .. } => 0,
    };
    64 + e.txn_id.len() + reverses + 16
}

fn page_bytes_est(p: &WirePage) -> usize {
    48 + p.account.len() + 16
}

const AGGREGATE_BYTES_EST: usize = HEADER_BYTES + 32;

/// Encodes `pages` (all of one bucket) into as few records as fit `record_bytes_max` each,
/// keeping page and event order. Errors only if a single event cannot fit an empty record.
pub fn encode_records(
    pages: &[WirePage],
    record_bytes_max: usize,
) -> Result<Vec<AlignedVec>, CodecError> {
    let mut records = Vec::new();
    let mut current: Vec<WirePage> = Vec::new();
    let mut size = AGGREGATE_BYTES_EST;
    for page in pages {
        let mut start = 0;
        while start < page.events.len() {
            let mut piece = page_bytes_est(page);
            let mut end = start;
            while end < page.events.len()
                && size + piece + event_bytes_est(&page.events[end]) <= record_bytes_max
            {
                piece += event_bytes_est(&page.events[end]);
                end += 1;
            }
            if end == start {
                if current.is_empty() {
                    return Err(CodecError::TooLarge {
                        bytes: AGGREGATE_BYTES_EST + piece,
                    });
                }
                flush(&mut current, record_bytes_max, &mut records)?;
                size = AGGREGATE_BYTES_EST;
                continue;
            }
            current.push(slice(page, start, end));
            size += piece;
            start = end;
        }
    }
    if !current.is_empty() {
        flush(&mut current, record_bytes_max, &mut records)?;
    }
    Ok(records)
}

fn slice(page: &WirePage, start: usize, end: usize) -> WirePage {
    WirePage {
        account: page.account.clone(),
        first_version: page.first_version + start as u64,
        events: page.events[start..end].to_vec(),
    }
}

/// Encodes the pending pages; if the estimate was wrong and the record is too big, splits
/// the pages in two halves by event count and tries each.
fn flush(
    pending: &mut Vec<WirePage>,
    max: usize,
    out: &mut Vec<AlignedVec>,
) -> Result<(), CodecError> {
    let aggregate = WireAggregate {
        pages: std::mem::take(pending),
    };
    let record = encode_aggregate(&aggregate)?;
    if record.len() <= max {
        out.push(record);
        return Ok(());
    }
    let pages = aggregate.pages;
    let total: usize = pages.iter().map(|p| p.events.len()).sum();
    if total <= 1 {
        return Err(CodecError::TooLarge {
            bytes: record.len(),
        });
    }
    let (mut left, mut right) = (Vec::new(), Vec::new());
    let mut taken = 0;
    for page in pages {
        let room = (total / 2).saturating_sub(taken);
        if room >= page.events.len() {
            taken += page.events.len();
            left.push(page);
        } else if room == 0 {
            right.push(page);
        } else {
            left.push(slice(&page, 0, room));
            right.push(slice(&page, room, page.events.len()));
            taken += room;
        }
    }
    flush(&mut left, max, out)?;
    flush(&mut right, max, out)
}
