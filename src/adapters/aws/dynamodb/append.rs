//! Appends on the Events table. A page is written as the items of one `TransactWriteItems`
//! (the page item, one outcome marker per entry, each reversal target's flag), or as one
//! conditional `PutItem` for a page of a single refusal (1 write unit instead of 2).
//!
//! Many accounts share a transaction: each round takes the next page of every account still
//! going and packs them, whole, into transactions of at most [`TRANSACT_ITEMS_MAX`] items,
//! sent concurrently (at most the store's concurrency in flight). DynamoDB bills the same per
//! item either way, and DynamoDB (Local above all) answers a few large transactions far
//! faster than many small ones. A transaction is all or nothing, so a cancelled one is read
//! item by item (`CancellationReasons`): the account whose condition failed gets its error,
//! and the other accounts of that transaction, which wrote nothing, go again next round.
//!
//! After the pages, the summaries of the segments they completed are written (`s#` items,
//! best effort, as before the bulk path).
//!
//! Must never: write an account's page before its previous one, write any page of an
//! account after one failed, or report a page written that is not. A retry of a page that
//! was in fact written (the caller saw a timeout) is recognised whatever transaction it
//! travels in: by the `ClientRequestToken` when the transaction is the same, else by the
//! stored page (or the stored refusals) being identical to ours and written by the same
//! attempt (`Append::attempt`, stored on page items and refusal markers): a twin caller's
//! byte-identical page is somebody else's write.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{
    AttributeValue, CancellationReason, ReturnConsumedCapacity, TransactWriteItem,
};
use futures_util::stream::{self, StreamExt};

use super::events::{marker_sk, now_secs, outcome_of, page_sk, segment_sk};
use super::items::{Item, Written, request_token};
use super::{DynamoStore, Units, corrupt, get_n, n, s, store_error};
use crate::domain::limits::TRANSACT_ITEMS_MAX;
use crate::domain::{AccountId, Refusal, Segment, TxnOutcome};
use crate::ports::{Append, AppendError, Appended, EventStore, PageWrite, StoreError};

/// Times a page may be sent again after a transaction that was cancelled through no fault
/// of its own (another account's condition failed) or by a conflicting transaction, before
/// its account is reported unavailable (transient: the command service retries).
const AGAIN_MAX: u32 = 8;

/// Pause before a round that follows a conflicting transaction.
const CONFLICT_PAUSE: Duration = Duration::from_millis(5);

impl DynamoStore {
    /// A page of exactly one refusal: a conditional `PutItem` (1 write unit instead of a
    /// transaction's 2). A retry after a timeout finds its own marker (same outcome, same
    /// attempt) and succeeds; a twin attempt's identical marker is a duplicate.
    async fn put_refusal(
        &self,
        account: &AccountId,
        refusal: &Refusal,
        written: Written,
    ) -> Result<(), AppendError> {
        let txn = refusal.command.txn_id();
        let outcome = TxnOutcome::Refused(refusal.clone());
        let put = self.marker_put(account.as_str(), txn, &outcome, written)?;
        let result = self
            .client
            .put_item()
            .table_name(put.table_name())
            .set_item(Some(put.item().clone()))
            .condition_expression(put.condition_expression().unwrap_or_default())
            .set_expression_attribute_values(put.expression_attribute_values().cloned())
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match result {
            Ok(out) => {
                self.charge(Units::Write, out.consumed_capacity());
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                if self.refused_by(account, refusal, written.attempt).await? {
                    Ok(())
                } else {
                    Err(AppendError::DuplicateTxn(txn.clone()))
                }
            }
            Err(e) => Err(AppendError::Store(store_error(&e))),
        }
    }
}

/// One page of one account, ready to travel in a transaction.
pub(super) struct Prepared {
    /// Index of its account in the call's appends.
    pub(super) account: usize,
    pub(super) items: Vec<TransactWriteItem>,
    /// What each of `items` stands for, to read `CancellationReasons` by index.
    pub(super) meaning: Vec<Item>,
    /// The page item's bytes (a page with events), to recognise it already stored.
    pub(super) page_bytes: Option<Vec<u8>>,
    /// The page's own `ClientRequestToken`.
    pub(super) token: String,
}

/// What became of one page in a round.
enum Fate {
    Written,
    Failed(AppendError),
    /// Not written, through no fault of its own: send it again.
    Again,
}

/// One request of a round.
enum Work {
    /// A page of a single refusal, as a `PutItem`.
    Refusal(usize),
    Transaction(Vec<Prepared>),
}

/// What a page's items share: the seconds of ledger time its TTL counts from (its first
/// event's, else the call's decision time: fixed, so a retry is the same request) and the
/// caller's attempt.
fn shared(a: &Append, page: &PageWrite) -> Written {
    let decided = page.events.first().map_or(a.decided_at, |e| e.recorded_at);
    Written {
        now: decided.millis().div_euclid(1000),
        attempt: a.attempt,
    }
}

/// For each append, the index of the call's previous append of the same account, if any.
fn earlier_of_same_account(appends: &[Append]) -> Vec<Option<usize>> {
    let mut last: HashMap<&AccountId, usize> = HashMap::new();
    appends
        .iter()
        .enumerate()
        .map(|(i, a)| last.insert(&a.account, i))
        .collect()
}

/// Packs whole pages, in order, into transactions of at most [`TRANSACT_ITEMS_MAX`] items.
fn pack(pages: Vec<Prepared>) -> Vec<Vec<Prepared>> {
    let mut groups: Vec<Vec<Prepared>> = Vec::new();
    let mut items = 0;
    for p in pages {
        let full = groups
            .last()
            .is_none_or(|_| items + p.items.len() > TRANSACT_ITEMS_MAX);
        if full {
            groups.push(Vec::new());
            items = 0;
        }
        items += p.items.len();
        groups.last_mut().expect("a group was just pushed").push(p);
    }
    groups
}

/// The token of a transaction of several pages: a digest of theirs, in order.
fn group_token(group: &[Prepared]) -> String {
    use md5::Digest;
    if let [one] = group {
        return one.token.clone();
    }
    let mut h = md5::Md5::new();
    for p in group {
        h.update(p.token.as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl DynamoStore {
    /// The port's `append`: rounds of packed transactions until every account has written
    /// all its pages or failed; one result per account, in order.
    pub(super) async fn append_all(&self, appends: &[Append]) -> Vec<Appended> {
        let mut written = vec![0usize; appends.len()];
        let mut expected: Vec<u64> = appends.iter().map(|a| a.expected_version).collect();
        let mut error: Vec<Option<AppendError>> = vec![None; appends.len()];
        let mut again = vec![0u32; appends.len()];
        let earlier = earlier_of_same_account(appends);
        let mut gated = vec![false; appends.len()];
        loop {
            let going = |i: usize| error[i].is_none() && written[i] < appends[i].pages.len();
            // An account's later append of the call waits until its earlier one is done.
            let ready: Vec<usize> = (0..appends.len())
                .filter(|&i| going(i) && earlier[i].is_none_or(|j| !going(j)))
                .collect();
            if ready.is_empty() {
                break;
            }
            for &i in &ready {
                if let (Some(j), false) = (earlier[i], gated[i]) {
                    gated[i] = true;
                    let reached = error[j].is_none().then_some(expected[j]);
                    error[i] = self.gate(&appends[i], reached).await;
                }
            }
            let ready: Vec<usize> = ready.into_iter().filter(|&i| error[i].is_none()).collect();
            let mut pause = false;
            for (i, fate) in self.round(appends, &ready, &expected, &written).await {
                match fate {
                    Fate::Written => {
                        if let Some(last) = appends[i].pages[written[i]].events.last() {
                            expected[i] = last.version;
                        }
                        written[i] += 1;
                        again[i] = 0;
                    }
                    Fate::Failed(e) => error[i] = Some(e),
                    Fate::Again if again[i] >= AGAIN_MAX => {
                        error[i] = Some(AppendError::Store(StoreError::Unavailable(
                            "transactions kept being cancelled by conflicting ones".into(),
                        )));
                    }
                    Fate::Again => {
                        again[i] += 1;
                        pause = true;
                    }
                }
            }
            if pause {
                tokio::time::sleep(CONFLICT_PAUSE).await;
            }
        }
        self.put_segments(appends, &expected).await;
        written
            .into_iter()
            .zip(error)
            .map(|(pages, error)| Appended { pages, error })
            .collect()
    }

    /// After the pages: the summaries of the segments each account's written pages completed
    /// (accounts concurrently). Best effort: a missing summary only makes point-in-time reads
    /// of that account read the segment's events instead.
    async fn put_segments(&self, appends: &[Append], reached: &[u64]) {
        let work: Vec<(&AccountId, u64)> = appends
            .iter()
            .zip(reached)
            .flat_map(|(a, &to)| {
                Segment::completed(a.expected_version, to).map(move |index| (&a.account, index))
            })
            .collect();
        stream::iter(work)
            .for_each_concurrent(self.concurrency, |(account, index)| async move {
                if let Err(e) = self.put_segment(account, index).await {
                    tracing::warn!(%account, index, error = %e, "segment summary not written");
                }
            })
            .await;
    }

    /// Summarizes segment `index` of `account` from its (immutable) events and stores it.
    async fn put_segment(&self, account: &AccountId, index: u64) -> Result<(), StoreError> {
        let (first, last) = Segment::versions(index);
        let events = self.read(account, first, last).await?;
        let summary = Segment::summarize(index, &events)
            .ok_or_else(|| corrupt(format!("segment {index} of {account} is not whole")))?;
        let out = self
            .client
            .put_item()
            .table_name(&self.config.events_table)
            .item("pk", s(account.as_str()))
            .item("sk", s(segment_sk(index)))
            .item("earliest", n(summary.earliest.millis()))
            .item("latest", n(summary.latest.millis()))
            .item("net", n(summary.net))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Write, out.consumed_capacity());
        Ok(())
    }

    /// Whether an account's later append of the call may start: only from the version its
    /// earlier one `reached` (or, where that one failed, from the account's stored tip).
    /// A page's condition is only "my first version is free", which stops a stale tip but
    /// not one the account never had: without this, a page could be written past a gap.
    async fn gate(&self, a: &Append, reached: Option<u64>) -> Option<AppendError> {
        if reached == Some(a.expected_version) {
            return None;
        }
        match self.head(a.account.as_str()).await {
            Ok((tip, _)) if tip.version == a.expected_version => None,
            Ok((tip, _)) => Some(AppendError::Conflict {
                current: tip.version,
            }),
            Err(e) => Some(e.into()),
        }
    }

    /// Sends the next page of every account in `ready`; each page's fate.
    async fn round(
        &self,
        appends: &[Append],
        ready: &[usize],
        expected: &[u64],
        written: &[usize],
    ) -> Vec<(usize, Fate)> {
        let mut fates = Vec::new();
        let mut works = Vec::new();
        let mut prepared = Vec::new();
        for &i in ready {
            let page = &appends[i].pages[written[i]];
            if let Err(e) = page.check_shape(expected[i]) {
                fates.push((i, Fate::Failed(e.into())));
                continue;
            }
            if page.events.is_empty() && page.refusals.len() == 1 {
                works.push(Work::Refusal(i));
                continue;
            }
            let account = &appends[i].account;
            match self.page_items(account, page, shared(&appends[i], page)) {
                Ok(mut p) => {
                    p.account = i;
                    p.token = request_token(
                        &self.config.events_table,
                        account.as_str(),
                        expected[i],
                        page,
                        appends[i].attempt,
                    );
                    prepared.push(p);
                }
                Err(e) => fates.push((i, Fate::Failed(e.into()))),
            }
        }
        works.extend(pack(prepared).into_iter().map(Work::Transaction));
        let done: Vec<Vec<(usize, Fate)>> = stream::iter(works)
            .map(|work| self.run(appends, written, work))
            .buffer_unordered(self.concurrency)
            .collect()
            .await;
        fates.extend(done.into_iter().flatten());
        fates
    }

    async fn run(&self, appends: &[Append], written: &[usize], work: Work) -> Vec<(usize, Fate)> {
        match work {
            Work::Refusal(i) => {
                let a = &appends[i];
                let page = &a.pages[written[i]];
                let fate = match self
                    .put_refusal(&a.account, &page.refusals[0], shared(a, page))
                    .await
                {
                    Ok(()) => Fate::Written,
                    Err(e) => Fate::Failed(e),
                };
                vec![(i, fate)]
            }
            Work::Transaction(group) => self.transact(appends, written, group).await,
        }
    }

    /// One transaction of whole pages; each page's fate, read from the cancellation
    /// reasons if it was cancelled.
    async fn transact(
        &self,
        appends: &[Append],
        written: &[usize],
        group: Vec<Prepared>,
    ) -> Vec<(usize, Fate)> {
        let token = group_token(&group);
        let mut metas = Vec::with_capacity(group.len());
        let mut items = Vec::new();
        for p in group {
            items.extend(p.items);
            metas.push((p.account, p.meaning, p.page_bytes));
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(token)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        let e = match result {
            Ok(out) => {
                self.charge(Units::Write, out.consumed_capacity());
                return metas
                    .into_iter()
                    .map(|(i, ..)| (i, Fate::Written))
                    .collect();
            }
            Err(e) => e,
        };
        let Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
            cancel,
        )) = e.as_service_error()
        else {
            let err = store_error(&e);
            return metas
                .into_iter()
                .map(|(i, ..)| (i, Fate::Failed(AppendError::Store(err.clone()))))
                .collect();
        };
        let reasons = cancel.cancellation_reasons();
        let mut fates = Vec::with_capacity(metas.len());
        let mut at = 0;
        for (i, meaning, page_bytes) in metas {
            let mine = reasons.get(at..at + meaning.len()).unwrap_or(&[]);
            at += meaning.len();
            let a = &appends[i];
            let page = &a.pages[written[i]];
            let fate = self.judge(a, page, &meaning, mine, page_bytes).await;
            fates.push((i, fate));
        }
        fates
    }

    /// What a cancelled transaction means for one of its pages.
    async fn judge(
        &self,
        a: &Append,
        page: &PageWrite,
        meaning: &[Item],
        reasons: &[CancellationReason],
        page_bytes: Option<Vec<u8>>,
    ) -> Fate {
        if reasons.len() != meaning.len() {
            return Fate::Failed(AppendError::Store(StoreError::Unavailable(
                "a cancelled transaction came back without a reason per item".into(),
            )));
        }
        let mut duplicate = None;
        for (reason, what) in reasons.iter().zip(meaning) {
            match (reason.code().unwrap_or("None"), what) {
                ("None", _) => {}
                ("ConditionalCheckFailed", Item::Page) => {
                    return self.page_taken(a, page, page_bytes).await;
                }
                ("ConditionalCheckFailed", Item::Outcome(txn)) => {
                    duplicate.get_or_insert_with(|| txn.clone());
                }
                ("ConditionalCheckFailed", Item::Target(txn)) => {
                    return Fate::Failed(AppendError::TargetReversed(txn.clone()));
                }
                ("TransactionConflict", _) => return Fate::Again,
                ("ThrottlingError" | "ProvisionedThroughputExceeded", _) => {
                    return Fate::Failed(StoreError::Throttled.into());
                }
                (code, _) => {
                    return Fate::Failed(AppendError::Store(StoreError::Unavailable(format!(
                        "{code} {}",
                        reason.message().unwrap_or_default()
                    ))));
                }
            }
        }
        match duplicate {
            // A page of refusals only whose markers are all ours already: it was written.
            Some(_) if page.events.is_empty() && self.refusals_stored(a, page).await => {
                Fate::Written
            }
            Some(txn) => Fate::Failed(AppendError::DuplicateTxn(txn)),
            None => Fate::Again,
        }
    }

    /// The page's key is taken: by this very page of this attempt (a retry of a write that
    /// succeeded), or by another writer's (a lost race: `Conflict` with the account's
    /// current version), a twin attempt's identical page included.
    async fn page_taken(&self, a: &Append, page: &PageWrite, page_bytes: Option<Vec<u8>>) -> Fate {
        let account = &a.account;
        let first = page.events.first().map_or(0, |e| e.version);
        match self.item(account.as_str(), &page_sk(first)).await {
            Ok(Some(item))
                if matches!(
                    (item.get("page"), &page_bytes),
                    (Some(AttributeValue::B(b)), Some(ours)) if b.as_ref() == ours.as_slice()
                ) && get_n::<u64>(&item, "attempt").ok() == Some(a.attempt) =>
            {
                Fate::Written
            }
            Ok(_) => match self.head(account.as_str()).await {
                Ok((tip, _)) => Fate::Failed(AppendError::Conflict {
                    current: tip.version,
                }),
                Err(e) => Fate::Failed(e.into()),
            },
            Err(e) => Fate::Failed(e.into()),
        }
    }

    /// Whether every refusal of `page` is already stored exactly as this page records it,
    /// by this attempt. (A rare path, a retry after a timeout: one read per refusal.)
    async fn refusals_stored(&self, a: &Append, page: &PageWrite) -> bool {
        for r in &page.refusals {
            if !matches!(self.refused_by(&a.account, r, a.attempt).await, Ok(true)) {
                return false;
            }
        }
        true
    }

    /// Whether `refusal` is stored as its txn id's outcome, written by `attempt`.
    async fn refused_by(
        &self,
        account: &AccountId,
        refusal: &Refusal,
        attempt: u64,
    ) -> Result<bool, StoreError> {
        let txn = refusal.command.txn_id();
        let Some(item) = self
            .item(account.as_str(), &marker_sk(txn.as_str()))
            .await?
        else {
            return Ok(false);
        };
        if get_n::<u64>(&item, "attempt").ok() != Some(attempt) {
            return Ok(false);
        }
        Ok(outcome_of(txn, &item, now_secs())? == Some(TxnOutcome::Refused(refusal.clone())))
    }

    /// One item by key, strongly consistent.
    async fn item(
        &self,
        pk: &str,
        sk: &str,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.config.events_table)
            .key("pk", s(pk))
            .key("sk", s(sk))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Read, out.consumed_capacity());
        Ok(out.item().cloned())
    }
}
