//! The event store on the Events table: reads of pages, txn outcome markers and segment
//! summaries, and the port impl (appends, and the summaries they complete, are in `append`).

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use futures_util::stream::{self, StreamExt};

use super::{BATCH_GET_KEYS_MAX, DynamoStore, Units, corrupt, get_n, get_s, s, store_error};
use crate::codec::decode_page;
use crate::codec::stored::decode_outcome;
use crate::domain::{
    AccountId, AccountState, Event, Money, Page, Segment, Timestamp, TxnId, TxnOutcome,
};
use crate::ports::{Append, Appended, EventStore, Load, Loaded, StoreError};

pub(super) fn page_sk(first_version: u64) -> String {
    format!("v#{first_version:020}")
}

/// Segment summaries sort before markers and pages (`s#` < `t#` < `v#`): pages must sort
/// last, as [`DynamoStore::head`] reads the last item of an account.
pub(super) fn segment_sk(index: u64) -> String {
    format!("s#{index:020}")
}

pub(super) fn marker_sk(txn: &str) -> String {
    format!("t#{txn}")
}

/// A marker item's outcome: the shared encoding in `o`, with the live `reversed` flag (the
/// only attribute that ever changes) read from its own attribute. `None` for an item whose
/// TTL has passed: an expired marker DynamoDB has not deleted yet counts as deleted.
pub(super) fn outcome_of(
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

pub(super) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
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
    pub(super) async fn head(&self, account: &str) -> Result<(AccountState, bool), StoreError> {
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

    /// The port's `load_many`: the tips not known, one query each (concurrently); then the
    /// markers of every account that may have any, 100 keys per `BatchGetItem` whatever
    /// their accounts (concurrently).
    async fn load_all(&self, loads: Vec<Load>) -> Vec<Result<Loaded, StoreError>> {
        let loads_ref = &loads;
        let heads: Vec<Result<(AccountState, bool, bool), StoreError>> =
            stream::iter(0..loads.len())
                .map(|i| async move {
                    let l = &loads_ref[i];
                    match l.known {
                        // A known tip means the account exists: its markers are worth reading.
                        Some(tip) => Ok((tip, true, false)),
                        None => self
                            .head(l.account.as_str())
                            .await
                            .map(|(tip, any)| (tip, any, true)),
                    }
                })
                .buffered(self.concurrency)
                .collect()
                .await;
        let mut keys: Vec<(&str, &TxnId)> = loads
            .iter()
            .zip(&heads)
            .filter(|(_, h)| matches!(h, Ok((_, true, _))))
            .flat_map(|(l, _)| l.txns.iter().map(|t| (l.account.as_str(), t)))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        let found = self.markers(&keys).await;
        loads
            .iter()
            .zip(heads)
            .map(|(l, head)| {
                let (tip, any, fresh) = head?;
                let outcomes = match (&found, any) {
                    (_, false) => vec![None; l.txns.len()],
                    (Ok(found), true) => l
                        .txns
                        .iter()
                        .map(|t| found.get(&(l.account.as_str(), t)).cloned())
                        .collect(),
                    (Err(e), true) => return Err(e.clone()),
                };
                Ok(Loaded {
                    tip,
                    fresh,
                    outcomes,
                })
            })
            .collect()
    }

    /// The outcomes stored under `keys` (account, txn), in `BatchGetItem`s of up to 100 keys.
    async fn markers<'a>(
        &self,
        keys: &[(&'a str, &'a TxnId)],
    ) -> Result<HashMap<(&'a str, &'a TxnId), TxnOutcome>, StoreError> {
        let now = now_secs();
        let requests: Vec<Vec<HashMap<String, AttributeValue>>> = keys
            .chunks(BATCH_GET_KEYS_MAX)
            .map(|chunk| {
                chunk
                    .iter()
                    .map(|(account, t)| {
                        HashMap::from([
                            ("pk".to_owned(), s(*account)),
                            ("sk".to_owned(), s(marker_sk(t.as_str()))),
                        ])
                    })
                    .collect()
            })
            .collect();
        let table = &self.config.events_table;
        let calls: Vec<Result<Vec<HashMap<String, AttributeValue>>, StoreError>> =
            stream::iter(requests)
                .map(|keys| self.batch_get(table, keys))
                .buffer_unordered(self.concurrency)
                .collect()
                .await;
        let wanted: HashMap<(&str, &str), (&'a str, &'a TxnId)> = keys
            .iter()
            .map(|&(a, t)| ((a, t.as_str()), (a, t)))
            .collect();
        let mut found = HashMap::new();
        for items in calls {
            for item in items? {
                let (Some(account), Some(raw)) = (
                    get_s(&item, "pk"),
                    get_s(&item, "sk").and_then(|k| k.strip_prefix("t#")),
                ) else {
                    continue;
                };
                let Some(&(a, t)) = wanted.get(&(account, raw)) else {
                    continue;
                };
                if let Some(o) = outcome_of(t, &item, now)? {
                    found.insert((a, t), o);
                }
            }
        }
        Ok(found)
    }

    pub(super) async fn outcomes(
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

    async fn load_many(&self, loads: Vec<Load>) -> Vec<Result<Loaded, StoreError>> {
        self.load_all(loads).await
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
        self.append_all(&appends).await
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
