//! The event store on the Events table: pages, txn outcome markers and segment summaries.

use std::collections::{BTreeMap, HashMap, HashSet};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnConsumedCapacity, TransactWriteItem, Update,
};
use futures_util::stream::{self, StreamExt};

use super::{
    BATCH_GET_KEYS_MAX, CONCURRENCY_MAX, DynamoStore, Units, built, corrupt, get_n, get_s, n, s,
    store_error,
};
use crate::codec::stored::{decode_outcome, encode_outcome};
use crate::codec::{decode_page, encode_events};
use crate::domain::{
    AccountId, AccountState, Event, EventKind, Money, Page, Refusal, Segment, Timestamp, TxnId,
    TxnOutcome,
};
use crate::ports::{Append, AppendError, Appended, EventStore, PageWrite, StoreError};

fn page_sk(first_version: u64) -> String {
    format!("v#{first_version:020}")
}

/// Segment summaries sort before markers and pages (`s#` < `t#` < `v#`): pages must sort
/// last, as [`DynamoStore::head`] reads the last item of an account.
fn segment_sk(index: u64) -> String {
    format!("s#{index:020}")
}

fn marker_sk(txn: &str) -> String {
    format!("t#{txn}")
}

/// What each item of a page's `TransactWriteItems` stands for, to read
/// `CancellationReasons` by index.
enum Item {
    Page,
    Outcome(TxnId),
    Target(TxnId),
}

/// A marker item's outcome: the shared encoding in `o`, with the live `reversed` flag (the
/// only attribute that ever changes) read from its own attribute. `None` for an item whose
/// TTL has passed: an expired marker DynamoDB has not deleted yet counts as deleted.
fn outcome_of(
    txn: &TxnId,
    item: &HashMap<String, AttributeValue>,
    now_secs: i64,
) -> Result<Option<TxnOutcome>, StoreError> {
    if let Some(AttributeValue::N(at)) = item.get("expires_at")
        && at.parse::<i64>().is_ok_and(|at| at <= now_secs)
    {
        return Ok(None);
    }
    let bytes = match item.get("o") {
        Some(AttributeValue::B(b)) => b.as_ref(),
        _ => return Err(corrupt(format!("marker {txn} without its outcome"))),
    };
    let mut outcome = decode_outcome(txn, bytes).map_err(corrupt)?;
    if let TxnOutcome::Booked { reversed, .. } = &mut outcome {
        *reversed = matches!(item.get("reversed"), Some(AttributeValue::Bool(true)));
    }
    Ok(Some(outcome))
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// `ClientRequestToken` of a page: a digest of everything the page writes (table included:
/// tokens are shared by every table of an AWS account and region), so a retry of the same
/// page is recognised by DynamoDB (for 10 minutes) and anything else is not.
fn request_token(table: &str, account: &str, expected: u64, page: &PageWrite) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(table.as_bytes());
    h.update([0]);
    h.update(account.as_bytes());
    h.update(expected.to_le_bytes());
    // The encoded outcome leaves out its txn id (the key it is stored under): add it.
    for e in &page.events {
        h.update(e.txn_id.as_str().as_bytes());
        h.update(encode_outcome(&TxnOutcome::Booked {
            event: e.clone(),
            reversed: false,
        }));
    }
    for r in &page.refusals {
        h.update(r.command.txn_id().as_str().as_bytes());
        h.update(encode_outcome(&TxnOutcome::Refused(r.clone())));
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

impl DynamoStore {
    /// The newest page item of an account whose first version is at most `upto`.
    async fn page_at_or_before(
        &self,
        account: &str,
        upto: u64,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        self.last_item(account, Some(upto)).await
    }

    /// The account's last item by sort key: with `upto`, among its pages up to that first
    /// version; without, among all its items (pages sort after markers, so this is the
    /// newest page, else a marker, else nothing).
    async fn last_item(
        &self,
        account: &str,
        upto: Option<u64>,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let mut q = self
            .client
            .query()
            .table_name(&self.config.events_table)
            .expression_attribute_values(":pk", s(account));
        q = match upto {
            Some(upto) => q
                .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":a", s(page_sk(0)))
                .expression_attribute_values(":b", s(page_sk(upto))),
            None => q.key_condition_expression("pk = :pk"),
        };
        let out = q
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Read, out.consumed_capacity());
        Ok(out.items().first().cloned())
    }

    /// The account's tip, and whether it has any item at all (an account with no events
    /// may still have refused txn ids). One query.
    async fn head(&self, account: &str) -> Result<(AccountState, bool), StoreError> {
        match self.last_item(account, None).await? {
            Some(item) if get_s(&item, "sk").is_some_and(|k| k.starts_with("v#")) => Ok((
                AccountState {
                    version: get_n(&item, "last")?,
                    balance: Money(get_n(&item, "balance")?),
                },
                true,
            )),
            Some(_) => Ok((AccountState::default(), true)),
            None => Ok((AccountState::default(), false)),
        }
    }

    async fn outcomes(
        &self,
        account: &str,
        txns: &[TxnId],
    ) -> Result<HashMap<TxnId, TxnOutcome>, StoreError> {
        let mut found = HashMap::new();
        let mut unique: Vec<&TxnId> = txns.iter().collect();
        unique.sort_unstable();
        unique.dedup();
        let now = now_secs();
        for chunk in unique.chunks(BATCH_GET_KEYS_MAX) {
            let keys = chunk
                .iter()
                .map(|t| {
                    HashMap::from([
                        ("pk".to_owned(), s(account)),
                        ("sk".to_owned(), s(marker_sk(t.as_str()))),
                    ])
                })
                .collect();
            for item in self.batch_get(&self.config.events_table, keys).await? {
                let Some(raw) = get_s(&item, "sk").and_then(|k| k.strip_prefix("t#")) else {
                    continue;
                };
                let txn = TxnId::new(raw).map_err(corrupt)?;
                if let Some(o) = outcome_of(&txn, &item, now)? {
                    found.insert(txn, o);
                }
            }
        }
        Ok(found)
    }

    /// The condition a new outcome marker is written under: no marker, or (with a TTL) only
    /// an expired one.
    fn fresh_marker(&self) -> &'static str {
        if self.config.marker_ttl_secs.is_some() {
            "attribute_not_exists(sk) OR expires_at <= :now"
        } else {
            "attribute_not_exists(sk)"
        }
    }

    fn marker_put(
        &self,
        account: &str,
        txn: &TxnId,
        outcome: &TxnOutcome,
        now: i64,
    ) -> Result<Put, StoreError> {
        let (label, version, reversed) = match outcome {
            TxnOutcome::Booked { event, reversed } => ("booked", event.version, Some(*reversed)),
            TxnOutcome::Refused(r) => ("refused", r.version, None),
        };
        let mut put = Put::builder()
            .table_name(&self.config.events_table)
            .item("pk", s(account))
            .item("sk", s(marker_sk(txn.as_str())))
            .item("outcome", s(label))
            .item("version", n(version))
            .item("o", AttributeValue::B(Blob::new(encode_outcome(outcome))))
            .condition_expression(self.fresh_marker());
        if let Some(reversed) = reversed {
            put = put.item("reversed", AttributeValue::Bool(reversed));
        }
        if let Some(ttl) = self.config.marker_ttl_secs {
            put = put
                .item("expires_at", n(now.saturating_add_unsigned(ttl)))
                .expression_attribute_values(":now", n(now));
        }
        built(put.build())
    }

    /// One page as one `TransactWriteItems` (the marker rule of `domain::record` as item
    /// conditions: each outcome put only where none exists, each reversal's target flipped
    /// only while booked and unreversed), or, for a single refusal, one conditional `PutItem`.
    async fn append_page(
        &self,
        account: &AccountId,
        expected: u64,
        page: &PageWrite,
    ) -> Result<(), AppendError> {
        // Seconds of ledger time the TTL counts from, fixed by the page so a retry is identical.
        let now = page
            .events
            .first()
            .map(|e| e.recorded_at.millis() / 1000)
            .unwrap_or_else(now_secs);
        page.check_shape(expected)?;
        if page.events.is_empty() && page.refusals.len() == 1 {
            return self.put_refusal(account, &page.refusals[0], now).await;
        }
        let (items, meaning) = self.page_items(account, page, now)?;
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
            .client_request_token(request_token(
                &self.config.events_table,
                account.as_str(),
                expected,
                page,
            ))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        let e = match result {
            Ok(out) => {
                self.charge(Units::Write, out.consumed_capacity());
                return Ok(());
            }
            Err(e) => e,
        };
        let Some(aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError::TransactionCanceledException(
            cancel,
        )) = e.as_service_error()
        else {
            return Err(AppendError::Store(store_error(&e)));
        };
        for (reason, what) in cancel.cancellation_reasons().iter().zip(&meaning) {
            match (reason.code(), what) {
                (Some("ConditionalCheckFailed"), Item::Page) => {
                    let current = self.head(account.as_str()).await?.0.version;
                    return Err(AppendError::Conflict { current });
                }
                (Some("ConditionalCheckFailed"), Item::Outcome(txn)) => {
                    return Err(AppendError::DuplicateTxn(txn.clone()));
                }
                (Some("ConditionalCheckFailed"), Item::Target(txn)) => {
                    return Err(AppendError::TargetReversed(txn.clone()));
                }
                (Some("ThrottlingError" | "ProvisionedThroughputExceeded"), _) => {
                    return Err(StoreError::Throttled.into());
                }
                _ => {}
            }
        }
        Err(AppendError::Store(store_error(&e)))
    }

    /// One account's pages in order, stopping at the first that fails; then the summaries
    /// of the segments its pages completed.
    async fn append_account(&self, a: &Append) -> Appended {
        let mut expected = a.expected_version;
        let mut result = Appended {
            pages: a.pages.len(),
            error: None,
        };
        for (i, page) in a.pages.iter().enumerate() {
            if let Err(e) = self.append_page(&a.account, expected, page).await {
                result = Appended {
                    pages: i,
                    error: Some(e),
                };
                break;
            }
            if let Some(last) = page.events.last() {
                expected = last.version;
            }
        }
        for index in Segment::completed(a.expected_version, expected) {
            if let Err(e) = self.put_segment(&a.account, index).await {
                // Best effort: a missing summary only makes point-in-time reads of this
                // account read the segment's events instead.
                tracing::warn!(account = %a.account, index, error = %e, "segment summary not written");
            }
        }
        result
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

    /// The items of one page's transaction, and what each stands for.
    fn page_items(
        &self,
        account: &AccountId,
        page: &PageWrite,
        now: i64,
    ) -> Result<(Vec<TransactWriteItem>, Vec<Item>), StoreError> {
        let table = &self.config.events_table;
        let pk = account.as_str();
        let mut items = Vec::new();
        let mut meaning = Vec::new();
        if let (Some(first), Some(last)) = (page.events.first(), page.events.last()) {
            let bytes = encode_events(account, &page.events).map_err(corrupt)?;
            let put = Put::builder()
                .table_name(table)
                .item("pk", s(pk))
                .item("sk", s(page_sk(first.version)))
                .item("page", AttributeValue::B(Blob::new(bytes.to_vec())))
                .item("last", n(last.version))
                .item("balance", n(last.balance.minor()))
                .condition_expression("attribute_not_exists(sk)");
            items.push(
                TransactWriteItem::builder()
                    .put(built(put.build())?)
                    .build(),
            );
            meaning.push(Item::Page);
        }
        // A reversal whose target is booked in this same page cannot update that marker
        // (one operation per item per transaction): the target is written reversed instead.
        let reversed_here: HashSet<&TxnId> = page
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Reversed { reverses, .. } => Some(reverses),
                _ => None,
            })
            .filter(|t| page.events.iter().any(|e| &e.txn_id == *t))
            .collect();
        for event in &page.events {
            let outcome = TxnOutcome::Booked {
                event: event.clone(),
                reversed: reversed_here.contains(&event.txn_id),
            };
            let put = self.marker_put(pk, &event.txn_id, &outcome, now)?;
            items.push(TransactWriteItem::builder().put(put).build());
            meaning.push(Item::Outcome(event.txn_id.clone()));
            if let EventKind::Reversed { reverses, .. } = &event.kind
                && !reversed_here.contains(reverses)
            {
                items.push(
                    TransactWriteItem::builder()
                        .update(self.target_update(pk, reverses, now)?)
                        .build(),
                );
                meaning.push(Item::Target(reverses.clone()));
            }
        }
        for refusal in &page.refusals {
            let txn = refusal.command.txn_id();
            let put = self.marker_put(pk, txn, &TxnOutcome::Refused(refusal.clone()), now)?;
            items.push(TransactWriteItem::builder().put(put).build());
            meaning.push(Item::Outcome(txn.clone()));
        }
        Ok((items, meaning))
    }

    /// Flips a reversal target's flag, only while it is a live, unexpired booking.
    fn target_update(&self, pk: &str, target: &TxnId, now: i64) -> Result<Update, StoreError> {
        let mut condition =
            "attribute_exists(sk) AND outcome = :booked AND reversed = :f".to_owned();
        let mut update = Update::builder()
            .table_name(&self.config.events_table)
            .key("pk", s(pk))
            .key("sk", s(marker_sk(target.as_str())))
            .update_expression("SET reversed = :t")
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .expression_attribute_values(":f", AttributeValue::Bool(false))
            .expression_attribute_values(":booked", s("booked"));
        if self.config.marker_ttl_secs.is_some() {
            condition.push_str(" AND (attribute_not_exists(expires_at) OR expires_at > :now)");
            update = update.expression_attribute_values(":now", n(now));
        }
        built(update.condition_expression(condition).build())
    }

    /// A page of exactly one refusal: a conditional `PutItem` (1 write unit instead of a
    /// transaction's 2). A retry after a timeout finds its own identical marker and succeeds.
    async fn put_refusal(
        &self,
        account: &AccountId,
        refusal: &Refusal,
        now: i64,
    ) -> Result<(), AppendError> {
        let txn = refusal.command.txn_id();
        let outcome = TxnOutcome::Refused(refusal.clone());
        let put = self.marker_put(account.as_str(), txn, &outcome, now)?;
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
                let stored = self
                    .outcomes(account.as_str(), std::slice::from_ref(txn))
                    .await?
                    .remove(txn);
                if stored.as_ref() == Some(&outcome) {
                    Ok(())
                } else {
                    Err(AppendError::DuplicateTxn(txn.clone()))
                }
            }
            Err(e) => Err(AppendError::Store(store_error(&e))),
        }
    }

    async fn pages(
        &self,
        account: &str,
        from_sk: String,
        to_sk: String,
    ) -> Result<Vec<Page>, StoreError> {
        let mut pages = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .query()
                .table_name(&self.config.events_table)
                .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
                .expression_attribute_values(":pk", s(account))
                .expression_attribute_values(":a", s(from_sk.clone()))
                .expression_attribute_values(":b", s(to_sk.clone()))
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            self.charge(Units::Read, out.consumed_capacity());
            for item in out.items() {
                match item.get("page") {
                    Some(AttributeValue::B(b)) => {
                        pages.push(decode_page(b.as_ref()).map_err(corrupt)?)
                    }
                    _ => return Err(corrupt("page item without bytes")),
                }
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(pages),
            }
        }
    }
}

impl EventStore for DynamoStore {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        Ok(self.head(account.as_str()).await?.0)
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        let (tip, any) = self.head(account.as_str()).await?;
        if !any || txns.is_empty() {
            return Ok((tip, vec![None; txns.len()]));
        }
        let mut found = self.outcomes(account.as_str(), txns).await?;
        Ok((tip, txns.iter().map(|t| found.remove(t)).collect()))
    }

    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        Ok(self
            .outcomes(account.as_str(), std::slice::from_ref(txn))
            .await?
            .remove(txn))
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        // Accounts concurrently; one account's pages in order, stopping at the first failure.
        let appends = &appends;
        stream::iter(0..appends.len())
            .map(|i| self.append_account(&appends[i]))
            .buffered(CONCURRENCY_MAX)
            .collect()
            .await
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        // The page holding `from` starts at or before it.
        let start = self
            .page_at_or_before(account.as_str(), from.max(1))
            .await?
            .and_then(|item| get_s(&item, "sk").map(str::to_owned))
            .unwrap_or_else(|| page_sk(0));
        let pages = self.pages(account.as_str(), start, page_sk(to)).await?;
        Ok(pages
            .into_iter()
            .flat_map(Page::into_events)
            .filter(|e| e.version >= from && e.version <= to)
            .collect())
    }

    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<Segment>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.config.events_table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
            .expression_attribute_values(":pk", s(account.as_str()))
            .expression_attribute_values(":a", s(segment_sk(from)))
            .expression_attribute_values(":b", s(segment_sk(u64::MAX)))
            .limit(i32::try_from(limit).unwrap_or(i32::MAX).max(1))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Read, out.consumed_capacity());
        out.items()
            .iter()
            .map(|item| {
                let index = get_s(item, "sk")
                    .and_then(|k| k.strip_prefix("s#"))
                    .and_then(|k| k.parse().ok())
                    .ok_or_else(|| corrupt("segment without an index"))?;
                let time = |name| {
                    Timestamp::from_millis(get_n(item, name)?)
                        .ok_or_else(|| corrupt(format!("segment {name} out of range")))
                };
                Ok(Segment {
                    index,
                    earliest: time("earliest")?,
                    latest: time("latest")?,
                    net: get_n(item, "net")?,
                })
            })
            .collect()
    }

    async fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, u64)>, StoreError> {
        // A full scan of page items: fine for catch-up and audits on modest tables; a large
        // deployment would keep an account index instead.
        let mut newest: BTreeMap<String, u64> = BTreeMap::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.config.events_table)
                .filter_expression("begins_with(sk, :v)")
                .expression_attribute_values(":v", s("v#"))
                .projection_expression("pk, #l")
                .expression_attribute_names("#l", "last")
                .consistent_read(true)
                .set_exclusive_start_key(start.take())
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            self.charge(Units::Read, out.consumed_capacity());
            for item in out.items() {
                let account = get_s(item, "pk")
                    .ok_or_else(|| corrupt("page without pk"))?
                    .to_owned();
                let last: u64 = get_n(item, "last")?;
                let v = newest.entry(account).or_default();
                *v = (*v).max(last);
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => break,
            }
        }
        newest
            .into_iter()
            .filter(|(a, _)| after.is_none_or(|after| a.as_str() > after.as_str()))
            .take(limit)
            .map(|(a, v)| Ok((AccountId::new(a).map_err(corrupt)?, v)))
            .collect()
    }
}
