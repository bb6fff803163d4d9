//! The embedded store's conditional append: every page checked against stored plus staged
//! state, an account stopping at its first failing page, and the staged writes of many
//! requests applied in one durable write transaction (group commit, `commit.rs`).
//!
//! Must never: write a page whose conditions failed, write an account's page after one of
//! its pages failed, or answer a request with anything but one `Appended` per `Append`.

use std::collections::{BTreeMap, HashMap};
use std::hash::BuildHasherDefault;
use std::sync::RwLock;

use redb::{Database, Durability, ReadableTable};

use super::index::{Identity, Origin, Slot, TxnIndex, key_hash, lookup};
use super::store::{
    PAGE_DIR, PAGES, PageView, REFUSALS, REVERSED, SEGMENTS, TIPS, corrupt, event_key, marker_key,
    split_attempt, unavailable, with_attempt,
};
use crate::codec::encode_events;
use crate::codec::stored::{
    decode_outcome, decode_tip, encode_outcome, encode_segment, encode_tip,
};
use crate::domain::{
    AccountId, AccountState, Entry, EventKind, Outcomes, RecordError, Segment, TxnId, TxnOutcome,
    record,
};
use crate::ports::{Append, AppendError, Appended, PageWrite, StoreError};

/// The tables a group reads and writes, open in one write transaction.
struct Tables<'t> {
    pages: WriteView<'t>,
    refusals: Table<'t, &'static [u8]>,
    tips: Table<'t, &'static str>,
}

/// Applies each request's appends, in order, in one durable write transaction, then records
/// the new outcomes in the txn index; one result list per request. A backend failure fails
/// every append of every request (and leaves the index as it was).
pub(super) fn append_group(
    db: &Database,
    index: &RwLock<TxnIndex>,
    requests: &[&[Append]],
) -> Vec<Vec<Appended>> {
    let run = || -> Result<(Vec<Vec<Appended>>, Staged<'_>), StoreError> {
        let mut tx = db.begin_write().map_err(unavailable)?;
        tx.set_durability(Durability::Immediate)
            .map_err(unavailable)?;
        let (results, staged) = {
            let mut t = Tables {
                pages: PageView {
                    pages: tx.open_table(PAGES).map_err(unavailable)?,
                    dir: tx.open_table(PAGE_DIR).map_err(unavailable)?,
                },
                refusals: tx.open_table(REFUSALS).map_err(unavailable)?,
                tips: tx.open_table(TIPS).map_err(unavailable)?,
            };
            let mut staged = Staged::default();
            let results: Vec<Vec<Appended>> = {
                let index = index
                    .read()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                requests
                    .iter()
                    .map(|appends| {
                        appends
                            .iter()
                            .map(|a| append_account(a, &t, &index, &mut staged))
                            .collect()
                    })
                    .collect()
            };
            let mut reversed = tx.open_table(REVERSED).map_err(unavailable)?;
            let mut segments = tx.open_table(SEGMENTS).map_err(unavailable)?;
            write_staged(&staged, &mut t, &mut reversed)?;
            summarize_completed(&staged, &t.pages, &mut segments)?;
            (results, staged)
        };
        tx.commit().map_err(unavailable)?;
        Ok((results, staged))
    };
    match run() {
        Ok((results, staged)) => {
            let mut index = index
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            staged.apply(&mut index);
            results
        }
        Err(e) => requests
            .iter()
            .map(|appends| failed_all(appends.len(), &e))
            .collect(),
    }
}

/// Inserts the staged rows in key order: pages (each under the next sequence number, so at
/// the right edge of the pages tree) with their directory rows, refusals, reversed flags,
/// tips.
fn write_staged(
    staged: &Staged<'_>,
    t: &mut Tables<'_>,
    reversed: &mut Table<'_, &'static [u8]>,
) -> Result<(), StoreError> {
    let next = match t.pages.pages.last().map_err(unavailable)? {
        Some((last, _)) => last.value().checked_add(1),
        None => Some(1),
    }
    .ok_or_else(|| corrupt("the page sequence is exhausted"))?;
    for (seq, (k, v)) in (next..).zip(&staged.events) {
        t.pages.dir.insert(k.as_slice(), seq).map_err(unavailable)?;
        t.pages
            .pages
            .insert(seq, v.as_slice())
            .map_err(unavailable)?;
    }
    // The few outcome rows the tables keep (refusals, reversed flags), in key order.
    let mut rows: Vec<(Vec<u8>, &Marker<'_>)> = staged
        .markers()
        .filter(|m| match &m.outcome {
            TxnOutcome::Refused(_) => m.origin == Origin::New,
            TxnOutcome::Booked { reversed, .. } => *reversed,
        })
        .map(|m| (marker_key(m.account, m.txn.as_str()), m))
        .collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(&b.0));
    for (k, m) in &rows {
        match &m.outcome {
            TxnOutcome::Refused(_) => {
                let value = with_attempt(m.attempt, &encode_outcome(&m.outcome));
                t.refusals
                    .insert(k.as_slice(), value.as_slice())
                    .map_err(unavailable)?;
            }
            TxnOutcome::Booked { reversed: true, .. } => {
                reversed
                    .insert(k.as_slice(), [].as_slice())
                    .map_err(unavailable)?;
            }
            _ => {}
        }
    }
    for (k, (_, tip)) in &staged.tips {
        t.tips
            .insert(*k, encode_tip(tip).as_slice())
            .map_err(unavailable)?;
    }
    Ok(())
}

/// One failure per append: what a backend error that touched every account reports.
pub(super) fn failed_all(n: usize, e: &StoreError) -> Vec<Appended> {
    (0..n)
        .map(|_| Appended::failed(AppendError::Store(e.clone())))
        .collect()
}

/// Writes of one group of requests, not yet in the tables, borrowing the requests' account
/// names. Rows go in in key order (sorted inserts copy each B-tree leaf once per
/// transaction): pages and tips are kept sorted; of the outcomes, found by the index's hash,
/// the few that are rows are sorted when written.
#[derive(Default)]
struct Staged<'a> {
    events: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Each id's outcome after this group, by its [`key_hash`]; an id whose hash another
    /// staged id holds is in `collided`.
    markers: HashMap<u64, Marker<'a>, BuildHasherDefault<Identity>>,
    collided: Vec<(u64, Marker<'a>)>,
    /// Each staged account: its version before this group, and its tip after it.
    tips: BTreeMap<&'a str, (u64, AccountState)>,
}

/// A staged outcome: whose, what, whether the index has the id, the attempt that staged it.
struct Marker<'a> {
    account: &'a str,
    txn: TxnId,
    outcome: TxnOutcome,
    origin: Origin,
    attempt: u64,
}

impl Marker<'_> {
    fn is(&self, account: &str, txn: &TxnId) -> bool {
        self.account == account && &self.txn == txn
    }
}

impl<'a> Staged<'a> {
    fn marker(&self, hash: u64, account: &str, txn: &TxnId) -> Option<&Marker<'a>> {
        match self.markers.get(&hash) {
            Some(m) if m.is(account, txn) => Some(m),
            Some(_) => self
                .collided
                .iter()
                .find(|(h, m)| *h == hash && m.is(account, txn))
                .map(|(_, m)| m),
            None => None,
        }
    }

    fn put(&mut self, hash: u64, marker: Marker<'a>) {
        use std::collections::hash_map::Entry;
        match self.markers.entry(hash) {
            Entry::Vacant(v) => {
                v.insert(marker);
            }
            Entry::Occupied(mut o) if o.get().is(marker.account, &marker.txn) => {
                o.insert(marker);
            }
            Entry::Occupied(_) => {
                let found = self
                    .collided
                    .iter_mut()
                    .find(|(h, m)| *h == hash && m.is(marker.account, &marker.txn));
                match found {
                    Some((_, m)) => *m = marker,
                    None => self.collided.push((hash, marker)),
                }
            }
        }
    }

    fn markers(&self) -> impl Iterator<Item = &Marker<'a>> {
        self.markers
            .values()
            .chain(self.collided.iter().map(|(_, m)| m))
    }

    /// After the commit: every new outcome into the index, every flipped flag updated.
    fn apply(&self, index: &mut TxnIndex) {
        let all = self.markers.iter().map(|(h, m)| (*h, m));
        for (hash, m) in all.chain(self.collided.iter().map(|(h, m)| (*h, m))) {
            let slot = match &m.outcome {
                TxnOutcome::Booked { event, reversed } => Slot::Booked {
                    version: event.version,
                    reversed: *reversed,
                },
                TxnOutcome::Refused(_) => Slot::Refused,
            };
            let txn = m.txn.as_str();
            match m.origin {
                Origin::New => index.insert_hashed(hash, m.account, txn, slot),
                Origin::Indexed { exact } => index.update_hashed(hash, m.account, txn, exact, slot),
            }
        }
    }
}

/// Writes the summary of every segment this call's events completed (the events, staged
/// ones included, are already in `pages`).
fn summarize_completed(
    staged: &Staged<'_>,
    pages: &WriteView<'_>,
    segments: &mut Table<&'static [u8]>,
) -> Result<(), StoreError> {
    for (account, (before, tip)) in &staged.tips {
        for index in Segment::completed(*before, tip.version) {
            let (first, last) = Segment::versions(index);
            let summary = Segment::summarize(index, &pages.read_range(account, first, last)?)
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

/// The pages and their directory as the write transaction sees them.
type WriteView<'t> = PageView<Table<'t, u64>, redb::Table<'t, &'static [u8], u64>>;

/// One account's pages, in order, stopping at the first that fails.
fn append_account<'a>(
    append: &'a Append,
    t: &Tables<'_>,
    index: &TxnIndex,
    staged: &mut Staged<'a>,
) -> Appended {
    let account = append.account.as_str();
    let mut expected = append.expected_version;
    for (i, page) in append.pages.iter().enumerate() {
        let value = match stored_value(&append.account, expected, page, append.attempt) {
            Ok(v) => v,
            Err(e) => return stopped(i, e.into()),
        };
        match check_page(account, expected, page, t, index, staged) {
            Ok(outcomes) => {
                let writes = Writes {
                    page: value,
                    outcomes,
                    attempt: append.attempt,
                };
                stage(account, page, writes, staged);
            }
            // A page this attempt wrote before (a retry after a timeout) succeeds again; the
            // same page from another attempt stays a conflict.
            Err(AppendError::Conflict { .. } | AppendError::DuplicateTxn(_))
                if already_written(account, page, value.as_deref(), append.attempt, t)
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

/// The stored value of a page's events: the attempt, then the encoded page (`None` for a
/// page of refusals only). One copy of the encoding, moved into the staged writes.
fn stored_value(
    account: &AccountId,
    expected: u64,
    page: &PageWrite,
    attempt: u64,
) -> Result<Option<Vec<u8>>, StoreError> {
    page.check_shape(expected)?;
    if page.events.is_empty() {
        return Ok(None);
    }
    let encoded = encode_events(account, &page.events).map_err(corrupt)?;
    Ok(Some(with_attempt(attempt, &encoded)))
}

/// Checks one page's conditions against stored plus staged state; returns the outcome
/// writes it makes (the marker rule of `domain::record`) with where each id was found,
/// writing nothing.
fn check_page(
    account: &str,
    expected: u64,
    page: &PageWrite,
    t: &Tables<'_>,
    index: &TxnIndex,
    staged: &Staged<'_>,
) -> Result<Vec<(TxnId, TxnOutcome, Origin)>, AppendError> {
    if !page.events.is_empty() {
        let current = match staged.tips.get(account) {
            Some((_, tip)) => tip.version,
            None => match t.tips.get(account).map_err(unavailable)? {
                Some(v) => decode_tip(v.value()).map_err(corrupt)?.version,
                None => 0,
            },
        };
        if current != expected {
            return Err(AppendError::Conflict { current });
        }
    }
    let mut view = PageOutcomes::default();
    for txn in touched(page) {
        if view.find(txn).is_none()
            && let Some((o, origin)) = stored_outcome(account, txn, t, index, staged)?
        {
            view.0.push((txn.clone(), o, origin));
        }
    }
    for event in &page.events {
        record(&mut view, Entry::Booked(event)).map_err(append_error)?;
    }
    for refusal in &page.refusals {
        record(&mut view, Entry::Refused(refusal)).map_err(append_error)?;
    }
    Ok(view.0)
}

/// The outcomes one page reads and writes, each with where it was found (`New`: decided by
/// this page). A page has at most 2 × `PAGE_EVENTS_MAX` ids: a list beats a map.
#[derive(Default)]
struct PageOutcomes(Vec<(TxnId, TxnOutcome, Origin)>);

impl PageOutcomes {
    fn find(&self, txn: &TxnId) -> Option<usize> {
        self.0.iter().position(|(t, ..)| t == txn)
    }
}

impl Outcomes for PageOutcomes {
    fn outcome(&self, txn: &TxnId) -> Option<TxnOutcome> {
        self.find(txn).map(|i| self.0[i].1.clone())
    }

    fn set(&mut self, txn: TxnId, outcome: TxnOutcome) {
        match self.find(&txn) {
            Some(i) => self.0[i].1 = outcome,
            None => self.0.push((txn, outcome, Origin::New)),
        }
    }
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

/// An id's outcome as this group sees it: staged by an earlier page of the group, else
/// committed (the index, confirmed against the tables).
fn stored_outcome(
    account: &str,
    txn: &TxnId,
    t: &Tables<'_>,
    index: &TxnIndex,
    staged: &Staged<'_>,
) -> Result<Option<(TxnOutcome, Origin)>, StoreError> {
    let hash = key_hash(account, txn.as_str());
    if let Some(m) = staged.marker(hash, account, txn) {
        return Ok(Some((m.outcome.clone(), m.origin)));
    }
    lookup(index, &t.pages, &t.refusals, account, txn, hash)
}

/// What a page that passed its checks writes.
struct Writes {
    /// The stored value of its events (attempt first), `None` for refusals only.
    page: Option<Vec<u8>>,
    outcomes: Vec<(TxnId, TxnOutcome, Origin)>,
    attempt: u64,
}

fn stage<'a>(account: &'a str, page: &PageWrite, writes: Writes, staged: &mut Staged<'a>) {
    if let (Some(first), Some(last), Some(bytes)) =
        (page.events.first(), page.events.last(), writes.page)
    {
        staged
            .events
            .insert(event_key(account, first.version), bytes);
        let after = AccountState::after(last);
        match staged.tips.get_mut(account) {
            Some(tip) => tip.1 = after,
            None => {
                staged.tips.insert(account, (first.version - 1, after));
            }
        }
    }
    for (txn, outcome, origin) in writes.outcomes {
        let hash = key_hash(account, txn.as_str());
        let marker = Marker {
            account,
            txn,
            outcome,
            origin,
            attempt: writes.attempt,
        };
        staged.put(hash, marker);
    }
}

/// Whether this exact page is already stored by this attempt (its value, attempt included,
/// at its key, and each refusal as recorded by the attempt): then a retry of it succeeds
/// without writing.
fn already_written(
    account: &str,
    page: &PageWrite,
    value: Option<&[u8]>,
    attempt: u64,
    t: &Tables<'_>,
) -> Result<bool, StoreError> {
    if let (Some(first), Some(bytes)) = (page.events.first(), value)
        && !t.pages.holds(account, first.version, bytes)?
    {
        return Ok(false);
    }
    for r in &page.refusals {
        let txn = r.command.txn_id();
        let Some(stored) = t
            .refusals
            .get(marker_key(account, txn.as_str()).as_slice())
            .map_err(unavailable)?
        else {
            return Ok(false);
        };
        let (by, bytes) = split_attempt(stored.value())?;
        let outcome = decode_outcome(txn, bytes).map_err(corrupt)?;
        if by != attempt || outcome != TxnOutcome::Refused(r.clone()) {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Command, Money, Refusal, Rejection, Timestamp};

    fn refused(txn: &TxnId) -> TxnOutcome {
        TxnOutcome::Refused(Refusal {
            command: Command::Withdraw {
                txn_id: txn.clone(),
                amount: Money(5),
                occurred_at: Timestamp::MIN,
            },
            rejection: Rejection::InsufficientFunds {
                balance: Money(0),
                amount: Money(5),
                overdraft_limit: 0,
            },
            version: 0,
        })
    }

    /// Two staged ids under one hash (forced: a 64-bit collision does not happen by chance
    /// in a test) are found, replaced and indexed each as itself.
    #[test]
    fn staged_ids_that_share_a_hash_are_kept_apart() {
        let (a, b) = (TxnId::new("a").unwrap(), TxnId::new("b").unwrap());
        let marker = |txn: &TxnId, attempt| Marker {
            account: "acct",
            txn: txn.clone(),
            outcome: refused(txn),
            origin: Origin::New,
            attempt,
        };
        let mut staged = Staged::default();
        staged.put(7, marker(&a, 1));
        staged.put(7, marker(&b, 1));
        staged.put(7, marker(&b, 2));
        assert_eq!(staged.markers().count(), 2);
        assert_eq!(staged.marker(7, "acct", &a).map(|m| m.attempt), Some(1));
        assert_eq!(staged.marker(7, "acct", &b).map(|m| m.attempt), Some(2));
        assert!(staged.marker(7, "other", &a).is_none());
        assert!(staged.marker(8, "acct", &a).is_none());
        let mut index = TxnIndex::default();
        staged.apply(&mut index);
        assert_eq!(index.len(), 2);
        let found = |txn| index.get_hashed(7, "acct", txn).map(|c| (c.slot, c.exact));
        assert_eq!(found("a"), Some((Slot::Refused, false)));
        assert_eq!(found("b"), Some((Slot::Refused, true)));
    }
}
