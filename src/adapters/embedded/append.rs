//! The embedded store's conditional append: every page checked against stored plus staged
//! state, an account stopping at its first failing page, and the staged writes of many
//! requests applied in one durable write transaction (group commit, `commit.rs`).
//!
//! Must never: write a page whose conditions failed, write an account's page after one of
//! its pages failed, or answer a request with anything but one `Appended` per `Append`.

use std::collections::{BTreeMap, HashMap};

use redb::{Database, Durability, ReadableTable};

use super::store::{
    EVENTS, MARKERS, SEGMENTS, TIPS, corrupt, event_key, marker_key, read_range, unavailable,
};
use crate::codec::stored::{
    decode_outcome, decode_tip, encode_outcome, encode_segment, encode_tip,
};
use crate::codec::{WirePage, encode_page};
use crate::domain::{
    AccountId, AccountState, Entry, EventKind, Page, RecordError, Segment, TxnId, TxnOutcome,
    record,
};
use crate::ports::{Append, AppendError, Appended, PageWrite, StoreError};

/// Applies each request's appends, in order, in one durable write transaction; one result
/// list per request. A backend failure fails every append of every request.
pub(super) fn append_group(db: &Database, requests: &[&[Append]]) -> Vec<Vec<Appended>> {
    let run = || -> Result<Vec<Vec<Appended>>, StoreError> {
        let mut tx = db.begin_write().map_err(unavailable)?;
        tx.set_durability(Durability::Immediate)
            .map_err(unavailable)?;
        let results = {
            let mut events = tx.open_table(EVENTS).map_err(unavailable)?;
            let mut markers = tx.open_table(MARKERS).map_err(unavailable)?;
            let mut tips = tx.open_table(TIPS).map_err(unavailable)?;
            let mut staged = Staged::default();
            let results: Vec<Vec<Appended>> = requests
                .iter()
                .map(|appends| {
                    appends
                        .iter()
                        .map(|a| append_account(a, &events, &markers, &tips, &mut staged))
                        .collect()
                })
                .collect();
            for (k, v) in &staged.events {
                events
                    .insert(k.as_slice(), v.as_slice())
                    .map_err(unavailable)?;
            }
            for (k, o) in &staged.markers {
                markers
                    .insert(k.as_slice(), encode_outcome(o).as_slice())
                    .map_err(unavailable)?;
            }
            for (k, t) in &staged.tips {
                tips.insert(k.as_str(), encode_tip(t).as_slice())
                    .map_err(unavailable)?;
            }
            let mut segments = tx.open_table(SEGMENTS).map_err(unavailable)?;
            summarize_completed(&staged, &events, &mut segments)?;
            results
        };
        tx.commit().map_err(unavailable)?;
        Ok(results)
    };
    run().unwrap_or_else(|e| {
        requests
            .iter()
            .map(|appends| failed_all(appends.len(), &e))
            .collect()
    })
}

/// One failure per append: what a backend error that touched every account reports.
pub(super) fn failed_all(n: usize, e: &StoreError) -> Vec<Appended> {
    (0..n)
        .map(|_| Appended::failed(AppendError::Store(e.clone())))
        .collect()
}

/// Writes of one group of requests, not yet in the tables, sorted by key: sorted inserts keep
/// each B-tree leaf copied once per transaction.
#[derive(Default)]
struct Staged {
    events: BTreeMap<Vec<u8>, Vec<u8>>,
    markers: BTreeMap<Vec<u8>, TxnOutcome>,
    tips: BTreeMap<String, AccountState>,
    /// Each staged account's version before this call.
    before: BTreeMap<String, u64>,
}

/// Writes the summary of every segment this call's events completed (the events, staged
/// ones included, are already in `events`).
fn summarize_completed(
    staged: &Staged,
    events: &Table<&'static [u8]>,
    segments: &mut Table<&'static [u8]>,
) -> Result<(), StoreError> {
    for (account, tip) in &staged.tips {
        let before = staged.before.get(account).copied().unwrap_or(0);
        for index in Segment::completed(before, tip.version) {
            let (first, last) = Segment::versions(index);
            let summary = Segment::summarize(index, &read_range(events, account, first, last)?)
                .ok_or_else(|| corrupt(format!("segment {index} of {account} is not whole")))?;
            segments
                .insert(
                    event_key(account, index).as_slice(),
                    encode_segment(&summary).as_slice(),
                )
                .map_err(unavailable)?;
        }
    }
    Ok(())
}

type Table<'t, K> = redb::Table<'t, K, &'static [u8]>;

/// One account's pages, in order, stopping at the first that fails.
fn append_account(
    append: &Append,
    events: &Table<&'static [u8]>,
    markers: &Table<&'static [u8]>,
    tips: &Table<&'static str>,
    staged: &mut Staged,
) -> Appended {
    let account = append.account.as_str();
    let mut expected = append.expected_version;
    for (i, page) in append.pages.iter().enumerate() {
        let bytes = match encoded_page(&append.account, page) {
            Ok(b) => b,
            Err(e) => return stopped(i, e.into()),
        };
        let outcome = check_page(account, expected, page, markers, tips, staged)
            .map(|writes| stage(account, page, bytes.as_deref(), writes, staged));
        match outcome {
            Ok(()) => {}
            // A page that was written before (a retry after a timeout) succeeds again.
            Err(AppendError::Conflict { .. } | AppendError::DuplicateTxn(_))
                if already_written(account, page, bytes.as_deref(), events, markers)
                    .unwrap_or(false) => {}
            Err(e) => return stopped(i, e),
        }
        if let Some(last) = page.events.last() {
            expected = last.version;
        }
    }
    Appended {
        pages: append.pages.len(),
        error: None,
    }
}

fn stopped(pages: usize, error: AppendError) -> Appended {
    Appended {
        pages,
        error: Some(error),
    }
}

/// The stored bytes of a page's events (`None` for a page of refusals only).
fn encoded_page(account: &AccountId, page: &PageWrite) -> Result<Option<Vec<u8>>, StoreError> {
    if page.events.is_empty() {
        return Ok(None);
    }
    let page = Page::new(account.clone(), page.events.clone()).map_err(corrupt)?;
    Ok(Some(
        encode_page(&WirePage::from_page(&page))
            .map_err(corrupt)?
            .to_vec(),
    ))
}

/// Checks one page's conditions against stored plus staged state; returns the outcome
/// writes it makes (the marker rule of `domain::record`), writing nothing.
fn check_page(
    account: &str,
    expected: u64,
    page: &PageWrite,
    markers: &Table<&'static [u8]>,
    tips: &Table<&'static str>,
    staged: &Staged,
) -> Result<HashMap<TxnId, TxnOutcome>, AppendError> {
    if !page.events.is_empty() {
        let current = match staged.tips.get(account) {
            Some(t) => t.version,
            None => match tips.get(account).map_err(unavailable)? {
                Some(v) => decode_tip(v.value()).map_err(corrupt)?.version,
                None => 0,
            },
        };
        if current != expected {
            return Err(AppendError::Conflict { current });
        }
    }
    let mut view: HashMap<TxnId, TxnOutcome> = HashMap::new();
    for txn in touched(page) {
        if let Some(o) = stored_outcome(account, txn, markers, staged)? {
            view.insert(txn.clone(), o);
        }
    }
    for event in &page.events {
        record(&mut view, Entry::Booked(event)).map_err(append_error)?;
    }
    for refusal in &page.refusals {
        record(&mut view, Entry::Refused(refusal)).map_err(append_error)?;
    }
    Ok(view)
}

/// Every txn id a page's recording reads or writes.
fn touched(page: &PageWrite) -> impl Iterator<Item = &TxnId> {
    page.events
        .iter()
        .flat_map(|e| {
            let target = match &e.kind {
                EventKind::Reversed { reverses, .. } => Some(reverses),
                _ => None,
            };
            std::iter::once(&e.txn_id).chain(target)
        })
        .chain(page.refusals.iter().map(|r| r.command.txn_id()))
}

fn append_error(e: RecordError) -> AppendError {
    match e {
        RecordError::Taken(t) => AppendError::DuplicateTxn(t),
        RecordError::TargetNotLive(t) => AppendError::TargetReversed(t),
    }
}

fn stored_outcome(
    account: &str,
    txn: &TxnId,
    markers: &Table<&'static [u8]>,
    staged: &Staged,
) -> Result<Option<TxnOutcome>, StoreError> {
    let key = marker_key(account, txn.as_str());
    if let Some(o) = staged.markers.get(&key) {
        return Ok(Some(o.clone()));
    }
    match markers.get(key.as_slice()).map_err(unavailable)? {
        Some(v) => Ok(Some(decode_outcome(txn, v.value()).map_err(corrupt)?)),
        None => Ok(None),
    }
}

fn stage(
    account: &str,
    page: &PageWrite,
    bytes: Option<&[u8]>,
    writes: HashMap<TxnId, TxnOutcome>,
    staged: &mut Staged,
) {
    if let (Some(first), Some(last), Some(bytes)) = (page.events.first(), page.events.last(), bytes)
    {
        staged
            .events
            .insert(event_key(account, first.version), bytes.to_vec());
        if !staged.before.contains_key(account) {
            staged.before.insert(account.to_owned(), first.version - 1);
        }
        staged
            .tips
            .insert(account.to_owned(), AccountState::after(last));
    }
    for (txn, outcome) in writes {
        staged
            .markers
            .insert(marker_key(account, txn.as_str()), outcome);
    }
}

/// Whether this exact page is already stored (its events' bytes at their key, and each
/// refusal as recorded): then a retry of it succeeds without writing.
fn already_written(
    account: &str,
    page: &PageWrite,
    bytes: Option<&[u8]>,
    events: &Table<&'static [u8]>,
    markers: &Table<&'static [u8]>,
) -> Result<bool, StoreError> {
    if let (Some(first), Some(bytes)) = (page.events.first(), bytes) {
        match events
            .get(event_key(account, first.version).as_slice())
            .map_err(unavailable)?
        {
            Some(stored) if stored.value() == bytes => {}
            _ => return Ok(false),
        }
    }
    let staged = Staged::default();
    for r in &page.refusals {
        let stored = stored_outcome(account, r.command.txn_id(), markers, &staged)?;
        if stored.as_ref() != Some(&TxnOutcome::Refused(r.clone())) {
            return Ok(false);
        }
    }
    Ok(true)
}
