//! The event store on the Events table: pages and transaction markers.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeValue, Put, ReturnConsumedCapacity, TransactWriteItem, Update,
};
use futures_util::stream::{self, StreamExt};

use super::{
    BATCH_GET_KEYS_MAX, CONCURRENCY_MAX, DynamoStore, Units, built, corrupt, get_n, get_s, n, s,
    store_error,
};
use crate::codec::{WirePage, decode_page, encode_page};
use crate::domain::{
    AccountId, AccountState, Event, EventKind, Money, Page, TxnId, TxnKind, TxnRecord,
};
use crate::ports::{Append, AppendError, EventStore, StoreError, StoredTxn};

fn page_sk(first_version: u64) -> String {
    format!("v#{first_version:020}")
}

fn marker_sk(txn: &str) -> String {
    format!("t#{txn}")
}

fn kind_name(k: TxnKind) -> &'static str {
    match k {
        TxnKind::Deposit => "deposit",
        TxnKind::Withdrawal => "withdrawal",
        TxnKind::Reversal => "reversal",
    }
}

fn marker_of(item: &HashMap<String, AttributeValue>) -> Result<StoredTxn, StoreError> {
    let kind = match get_s(item, "kind") {
        Some("deposit") => TxnKind::Deposit,
        Some("withdrawal") => TxnKind::Withdrawal,
        Some("reversal") => TxnKind::Reversal,
        other => return Err(corrupt(format!("marker kind {other:?}"))),
    };
    let reversed = matches!(item.get("reversed"), Some(AttributeValue::Bool(true)));
    Ok(StoredTxn {
        version: get_n(item, "version")?,
        record: TxnRecord {
            kind,
            delta: Money(get_n(item, "delta")?),
            reversed,
        },
    })
}

impl DynamoStore {
    /// The newest page item of an account whose first version is at most `upto`.
    async fn page_at_or_before(
        &self,
        account: &str,
        upto: u64,
    ) -> Result<Option<HashMap<String, AttributeValue>>, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.config.events_table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
            .expression_attribute_values(":pk", s(account))
            .expression_attribute_values(":a", s(page_sk(0)))
            .expression_attribute_values(":b", s(page_sk(upto)))
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

    /// The newest page item of an account: (last version, balance).
    async fn tip_item(&self, account: &str) -> Result<AccountState, StoreError> {
        match self.page_at_or_before(account, u64::MAX).await? {
            Some(item) => Ok(AccountState {
                version: get_n(&item, "last")?,
                balance: Money(get_n(&item, "balance")?),
            }),
            None => Ok(AccountState::default()),
        }
    }

    async fn markers(
        &self,
        account: &str,
        txns: &[TxnId],
    ) -> Result<HashMap<String, StoredTxn>, StoreError> {
        let mut found = HashMap::new();
        let mut unique: Vec<&str> = txns.iter().map(TxnId::as_str).collect();
        unique.sort_unstable();
        unique.dedup();
        for chunk in unique.chunks(BATCH_GET_KEYS_MAX) {
            let keys = chunk
                .iter()
                .map(|t| {
                    HashMap::from([
                        ("pk".to_owned(), s(account)),
                        ("sk".to_owned(), s(marker_sk(t))),
                    ])
                })
                .collect();
            for item in self.batch_get(&self.config.events_table, keys).await? {
                if let Some(sk) = get_s(&item, "sk").and_then(|k| k.strip_prefix("t#")) {
                    found.insert(sk.to_owned(), marker_of(&item)?);
                }
            }
        }
        Ok(found)
    }

    /// One append as one `TransactWriteItems`.
    async fn append_one(&self, append: &Append) -> Result<(), AppendError> {
        let account = append.account.as_str();
        let page = Page::new(append.account.clone(), append.events.clone()).map_err(corrupt)?;
        let bytes = encode_page(&WirePage::from_page(&page)).map_err(corrupt)?;
        let last = &append.events[append.events.len() - 1];
        let table = &self.config.events_table;
        let mut items = vec![
            TransactWriteItem::builder()
                .put(built(
                    Put::builder()
                        .table_name(table)
                        .item("pk", s(account))
                        .item("sk", s(page_sk(page.first_version())))
                        .item("page", AttributeValue::B(Blob::new(bytes.to_vec())))
                        .item("last", n(last.version))
                        .item("balance", n(last.balance.minor()))
                        .condition_expression("attribute_not_exists(sk)")
                        .build(),
                )?)
                .build(),
        ];
        // What each transaction item stands for, to read CancellationReasons by index.
        let mut meaning: Vec<Option<(bool, TxnId)>> = vec![None];
        let expires_at = self
            .config
            .marker_ttl_secs
            .map(|ttl| last.recorded_at.millis() / 1000 + ttl as i64);
        // A reversal whose target is booked in this same page cannot update that marker
        // (one item, one operation per transaction): the target is written reversed instead.
        let reversed_here: std::collections::HashSet<&str> = append
            .events
            .iter()
            .filter_map(|e| match &e.kind {
                EventKind::Reversed { reverses, .. } => Some(reverses.as_str()),
                _ => None,
            })
            .filter(|t| append.events.iter().any(|e| e.txn_id.as_str() == *t))
            .collect();
        for event in &append.events {
            let record = event
                .txn_record(false)
                .ok_or_else(|| corrupt("event with an impossible delta"))?;
            let mut put = Put::builder()
                .table_name(table)
                .item("pk", s(account))
                .item("sk", s(marker_sk(event.txn_id.as_str())))
                .item("version", n(event.version))
                .item("kind", s(kind_name(record.kind)))
                .item("delta", n(record.delta.minor()))
                .item(
                    "reversed",
                    AttributeValue::Bool(reversed_here.contains(event.txn_id.as_str())),
                )
                .condition_expression("attribute_not_exists(sk)");
            if let Some(at) = expires_at {
                put = put.item("expires_at", n(at));
            }
            items.push(
                TransactWriteItem::builder()
                    .put(built(put.build())?)
                    .build(),
            );
            meaning.push(Some((false, event.txn_id.clone())));
            if let EventKind::Reversed { reverses, .. } = &event.kind
                && !reversed_here.contains(reverses.as_str())
            {
                items.push(
                    TransactWriteItem::builder()
                        .update(built(
                            Update::builder()
                                .table_name(table)
                                .key("pk", s(account))
                                .key("sk", s(marker_sk(reverses.as_str())))
                                .update_expression("SET reversed = :t")
                                .condition_expression("attribute_exists(sk) AND reversed = :f")
                                .expression_attribute_values(":t", AttributeValue::Bool(true))
                                .expression_attribute_values(":f", AttributeValue::Bool(false))
                                .build(),
                        )?)
                        .build(),
                );
                meaning.push(Some((true, reverses.clone())));
            }
        }
        let result = self
            .client
            .transact_write_items()
            .set_transact_items(Some(items))
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
                (Some("ConditionalCheckFailed"), None) => {
                    let current = self.tip_item(account).await?.version;
                    return Err(AppendError::Conflict { current });
                }
                (Some("ConditionalCheckFailed"), Some((false, txn))) => {
                    return Err(AppendError::DuplicateTxn(txn.clone()));
                }
                (Some("ConditionalCheckFailed"), Some((true, txn))) => {
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
        self.tip_item(account.as_str()).await
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<StoredTxn>>), StoreError> {
        let tip = self.tip_item(account.as_str()).await?;
        if tip.version == 0 || txns.is_empty() {
            return Ok((tip, vec![None; txns.len()]));
        }
        let found = self.markers(account.as_str(), txns).await?;
        Ok((
            tip,
            txns.iter()
                .map(|t| found.get(t.as_str()).copied())
                .collect(),
        ))
    }

    async fn txn(&self, account: &AccountId, txn: &TxnId) -> Result<Option<StoredTxn>, StoreError> {
        Ok(self
            .markers(account.as_str(), std::slice::from_ref(txn))
            .await?
            .remove(txn.as_str()))
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Result<(), AppendError>> {
        // Accounts in parallel; one account's pages in order, and once one fails its later
        // pages cannot succeed.
        let mut by_account: HashMap<&str, Vec<usize>> = HashMap::new();
        let mut order: Vec<&str> = Vec::new();
        for (i, a) in appends.iter().enumerate() {
            by_account
                .entry(a.account.as_str())
                .or_insert_with(|| {
                    order.push(a.account.as_str());
                    Vec::new()
                })
                .push(i);
        }
        let groups: Vec<Vec<usize>> = order
            .into_iter()
            .map(|a| by_account.remove(a).unwrap_or_default())
            .collect();
        let appends = &appends;
        let results: Vec<Vec<(usize, Result<(), AppendError>)>> = stream::iter(groups)
            .map(|indexes: Vec<usize>| async move {
                let mut out = Vec::with_capacity(indexes.len());
                let mut failed = false;
                for i in indexes {
                    let result = if failed {
                        Err(AppendError::Conflict {
                            current: appends[i].expected_version,
                        })
                    } else {
                        self.append_one(&appends[i]).await
                    };
                    failed |= result.is_err();
                    out.push((i, result));
                }
                out
            })
            .buffer_unordered(CONCURRENCY_MAX)
            .collect()
            .await;
        let mut results: Vec<(usize, Result<(), AppendError>)> =
            results.into_iter().flatten().collect();
        results.sort_unstable_by_key(|(i, _)| *i);
        results.into_iter().map(|(_, r)| r).collect()
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
