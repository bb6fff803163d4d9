//! DynamoDB behind the ports, with the layout of DESIGN.md:
//!
//! - Events table, `pk` = account, `sk`:
//!   - `v#<first version, 20 digits>`: a page (`page` = the encoded page, `last`, `balance`),
//!     written with `attribute_not_exists(sk)`: two writers deciding on the same tip collide
//!     on the same key, which is the optimistic lock;
//!   - `t#<txn id>`: the transaction marker (`version`, `kind`, `delta`, `reversed`,
//!     optional `expires_at` TTL), written in the same `TransactWriteItems`, also with
//!     `attribute_not_exists(sk)`; a reversal flips its target's `reversed` under the
//!     condition that it is still false.
//! - Balances table, `pk` = account, plain readable attributes, one conditional `PutItem`
//!   per account per batch with `ReturnValuesOnConditionCheckFailure=ALL_OLD`.
//! - Quarantine table, `pk` = shard, `sk` = sequence number, `data`, `error`.
//!
//! Every call asks for `ReturnConsumedCapacity=TOTAL` and adds the units to the shared
//! [`Metrics`] (what the cost table in BENCHMARKS.md is measured with, and what CloudWatch
//! sees per invocation). Appends of different accounts, and snapshot writes, run
//! concurrently (at most [`CONCURRENCY_MAX`] in flight); one account's pages go in order.
//!
//! Every SDK error becomes a port error here: conditional failures become `Conflict` /
//! `DuplicateTxn` / `TargetReversed` (read from `CancellationReasons`), throttling becomes
//! `Throttled`, the rest `Unavailable`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, ConsumedCapacity, KeySchemaElement, KeyType,
    KeysAndAttributes, Put, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
    ScalarAttributeType, TransactWriteItem, Update,
};
use futures_util::stream::{self, StreamExt};

use super::AwsConfig;
use crate::codec::time::parse_rfc3339;
use crate::codec::{WirePage, decode_page, encode_page};
use crate::domain::{
    AccountId, AccountState, Event, EventKind, Money, Month, Page, Snapshot, Timestamp, TxnId,
    TxnKind, TxnRecord,
};
use crate::ports::{
    Append, AppendError, EventStore, Quarantine, Quarantined, SnapshotError, SnapshotPut,
    SnapshotStore, StoreError, StoredTxn,
};
use crate::service::metrics::{Metrics, milli_units};

/// Keys per `BatchGetItem` call (the service's limit).
const BATCH_GET_KEYS_MAX: usize = 100;
/// Rounds of retrying `UnprocessedKeys` before giving up as throttled.
const UNPROCESSED_RETRIES_MAX: u32 = 8;
/// Requests one store call keeps in flight (accounts appended, snapshots written).
pub const CONCURRENCY_MAX: usize = 16;

/// The DynamoDB adapter; cheap to clone (the client and the metrics are shared).
#[derive(Clone)]
pub struct DynamoStore {
    client: Client,
    config: AwsConfig,
    metrics: Arc<Metrics>,
}

/// Which counter a call's consumed capacity goes to.
#[derive(Clone, Copy)]
enum Units {
    Read,
    Write,
}

fn page_sk(first_version: u64) -> String {
    format!("v#{first_version:020}")
}

fn marker_sk(txn: &str) -> String {
    format!("t#{txn}")
}

fn s(v: impl Into<String>) -> AttributeValue {
    AttributeValue::S(v.into())
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

/// Maps any SDK error: throttling codes to `Throttled`, everything else to `Unavailable`.
fn store_error<E: ProvideErrorMetadata + std::fmt::Debug, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> StoreError {
    let code = e
        .as_service_error()
        .and_then(ProvideErrorMetadata::code)
        .unwrap_or_default();
    match code {
        "ProvisionedThroughputExceededException"
        | "ThrottlingException"
        | "RequestLimitExceeded" => StoreError::Throttled,
        _ => StoreError::Unavailable(format!(
            "{code} {}",
            e.as_service_error()
                .and_then(ProvideErrorMetadata::message)
                .unwrap_or(&format!("{e:?}"))
        )),
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn get_n<T: std::str::FromStr>(
    item: &HashMap<String, AttributeValue>,
    name: &str,
) -> Result<T, StoreError> {
    match item.get(name) {
        Some(AttributeValue::N(v)) => v
            .parse()
            .map_err(|_| corrupt(format!("attribute {name}: {v:?} is not a number"))),
        _ => Err(corrupt(format!("attribute {name} missing or not a number"))),
    }
}

fn get_s<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> Option<&'a str> {
    match item.get(name) {
        Some(AttributeValue::S(v)) => Some(v),
        _ => None,
    }
}

fn built<T>(r: Result<T, aws_sdk_dynamodb::error::BuildError>) -> Result<T, StoreError> {
    r.map_err(|e| StoreError::Unavailable(format!("request could not be built: {e}")))
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
    pub fn new(client: Client, config: AwsConfig) -> DynamoStore {
        DynamoStore {
            client,
            config,
            metrics: Arc::default(),
        }
    }

    /// Counts consumed capacity into shared metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> DynamoStore {
        self.metrics = metrics;
        self
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn charge<'a>(&self, units: Units, consumed: impl IntoIterator<Item = &'a ConsumedCapacity>) {
        let total: f64 = consumed
            .into_iter()
            .filter_map(ConsumedCapacity::capacity_units)
            .sum();
        let counter = match units {
            Units::Read => &self.metrics.read_capacity_milli,
            Units::Write => &self.metrics.write_capacity_milli,
        };
        Metrics::add(counter, milli_units(total));
    }

    /// Creates the three tables (on-demand) if they do not exist: for emulators and tests;
    /// in AWS the SAM template owns them.
    pub async fn create_tables(&self) -> Result<(), StoreError> {
        let tables = [
            (&self.config.events_table, true),
            (&self.config.balances_table, false),
            (&self.config.quarantine_table, true),
        ];
        for (name, with_sort) in tables {
            let (hash, range) = ("pk", "sk");
            let mut req = self
                .client
                .create_table()
                .table_name(name)
                .billing_mode(BillingMode::PayPerRequest)
                .attribute_definitions(built(
                    AttributeDefinition::builder()
                        .attribute_name(hash)
                        .attribute_type(ScalarAttributeType::S)
                        .build(),
                )?)
                .key_schema(built(
                    KeySchemaElement::builder()
                        .attribute_name(hash)
                        .key_type(KeyType::Hash)
                        .build(),
                )?);
            if with_sort {
                req = req
                    .attribute_definitions(built(
                        AttributeDefinition::builder()
                            .attribute_name(range)
                            .attribute_type(ScalarAttributeType::S)
                            .build(),
                    )?)
                    .key_schema(built(
                        KeySchemaElement::builder()
                            .attribute_name(range)
                            .key_type(KeyType::Range)
                            .build(),
                    )?);
            }
            match req.send().await {
                Ok(_) => {}
                Err(e)
                    if e.as_service_error().and_then(ProvideErrorMetadata::code)
                        == Some("ResourceInUseException") => {}
                Err(e) => return Err(store_error(&e)),
            }
        }
        Ok(())
    }

    /// The newest page item of an account: (last version, balance).
    async fn tip_item(&self, account: &str) -> Result<AccountState, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.config.events_table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :v)")
            .expression_attribute_values(":pk", s(account))
            .expression_attribute_values(":v", s("v#"))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Read, out.consumed_capacity());
        match out.items().first() {
            Some(item) => Ok(AccountState {
                version: get_n(item, "last")?,
                balance: Money(get_n(item, "balance")?),
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

    /// `BatchGetItem` with consistent reads, retrying unprocessed keys.
    async fn batch_get(
        &self,
        table: &str,
        mut keys: Vec<HashMap<String, AttributeValue>>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        for attempt in 0..=UNPROCESSED_RETRIES_MAX {
            if keys.is_empty() {
                return Ok(items);
            }
            if attempt > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(10 << attempt.min(6))).await;
            }
            let request = built(
                KeysAndAttributes::builder()
                    .set_keys(Some(std::mem::take(&mut keys)))
                    .consistent_read(true)
                    .build(),
            )?;
            let out = self
                .client
                .batch_get_item()
                .request_items(table, request)
                .return_consumed_capacity(ReturnConsumedCapacity::Total)
                .send()
                .await
                .map_err(|e| store_error(&e))?;
            self.charge(Units::Read, out.consumed_capacity());
            if let Some(found) = out.responses().and_then(|r| r.get(table)) {
                items.extend(found.iter().cloned());
            }
            if let Some(rest) = out.unprocessed_keys().and_then(|u| u.get(table)) {
                keys = rest.keys().to_vec();
            }
        }
        Err(StoreError::Throttled)
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
        let mut out: Vec<Option<Result<(), AppendError>>> = vec![None; appends.len()];
        for (i, result) in results.into_iter().flatten() {
            out[i] = Some(result);
        }
        out.into_iter()
            .map(|r| r.expect("every append has a result"))
            .collect()
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        // The page holding `from` starts at or before it.
        let out = self
            .client
            .query()
            .table_name(&self.config.events_table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :a AND :b")
            .expression_attribute_values(":pk", s(account.as_str()))
            .expression_attribute_values(":a", s(page_sk(0)))
            .expression_attribute_values(":b", s(page_sk(from.max(1))))
            .scan_index_forward(false)
            .limit(1)
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Read, out.consumed_capacity());
        let start = out
            .items()
            .first()
            .and_then(|i| get_s(i, "sk"))
            .map_or_else(|| page_sk(0), str::to_owned);
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

fn snapshot_item(account: &str, s_: &Snapshot) -> HashMap<String, AttributeValue> {
    let mut item = HashMap::from([
        ("pk".to_owned(), s(account)),
        ("version".to_owned(), n(s_.version)),
        ("balance".to_owned(), n(s_.balance.minor())),
        ("month_balance".to_owned(), n(s_.month_balance)),
        ("credit_total".to_owned(), n(s_.credit_total)),
        ("credit_count".to_owned(), n(s_.credit_count)),
        ("debit_total".to_owned(), n(s_.debit_total)),
        ("debit_count".to_owned(), n(s_.debit_count)),
    ]);
    if let Some(m) = s_.month {
        item.insert("month".to_owned(), s(m.to_string()));
    }
    if let Some(t) = s_.last_occurred_at {
        item.insert("last_occurred_at".to_owned(), s(t.to_string()));
    }
    if let Some(t) = s_.updated_at {
        item.insert("updated_at".to_owned(), s(t.to_string()));
    }
    item
}

fn snapshot_of(item: &HashMap<String, AttributeValue>) -> Result<Snapshot, StoreError> {
    let time = |name: &str| -> Result<Option<Timestamp>, StoreError> {
        get_s(item, name)
            .map(|t| parse_rfc3339(t).map_err(corrupt))
            .transpose()
    };
    let month = match get_s(item, "month") {
        Some(m) => {
            let (y, mo) = m
                .split_once('-')
                .ok_or_else(|| corrupt(format!("month {m:?}")))?;
            let parsed = y
                .parse()
                .ok()
                .zip(mo.parse().ok())
                .and_then(|(y, mo)| Month::new(y, mo));
            Some(parsed.ok_or_else(|| corrupt(format!("month {m:?}")))?)
        }
        None => None,
    };
    Ok(Snapshot {
        version: get_n(item, "version")?,
        balance: Money(get_n(item, "balance")?),
        month,
        month_balance: get_n(item, "month_balance")?,
        credit_total: get_n(item, "credit_total")?,
        credit_count: get_n(item, "credit_count")?,
        debit_total: get_n(item, "debit_total")?,
        debit_count: get_n(item, "debit_count")?,
        last_occurred_at: time("last_occurred_at")?,
        updated_at: time("updated_at")?,
    })
}

impl SnapshotStore for DynamoStore {
    async fn get(&self, account: &str) -> Result<Option<Snapshot>, StoreError> {
        Ok(self
            .get_many(vec![account.to_owned()])
            .await?
            .pop()
            .flatten())
    }

    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        let mut found: HashMap<String, Snapshot> = HashMap::new();
        let mut unique: Vec<&String> = accounts.iter().collect();
        unique.sort_unstable();
        unique.dedup();
        for chunk in unique.chunks(BATCH_GET_KEYS_MAX) {
            let keys = chunk
                .iter()
                .map(|a| HashMap::from([("pk".to_owned(), s(a.as_str()))]))
                .collect();
            for item in self.batch_get(&self.config.balances_table, keys).await? {
                let account = get_s(&item, "pk")
                    .ok_or_else(|| corrupt("balance without pk"))?
                    .to_owned();
                found.insert(account, snapshot_of(&item)?);
            }
        }
        Ok(accounts.iter().map(|a| found.get(a).copied()).collect())
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        let puts = &puts;
        stream::iter(0..puts.len())
            .map(|i| self.put_one(&puts[i]))
            .buffered(CONCURRENCY_MAX)
            .collect()
            .await
    }
}

impl DynamoStore {
    /// One conditional snapshot write; a lost condition returns the stored item.
    async fn put_one(&self, put: &SnapshotPut) -> Result<(), SnapshotError> {
        let mut req = self
            .client
            .put_item()
            .table_name(&self.config.balances_table)
            .set_item(Some(snapshot_item(&put.account, &put.snapshot)))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total);
        req = if put.expected_version == 0 {
            req.condition_expression("attribute_not_exists(pk)")
        } else {
            req.condition_expression("version = :v")
                .expression_attribute_values(":v", n(put.expected_version))
        };
        match req.send().await {
            Ok(out) => {
                self.charge(Units::Write, out.consumed_capacity());
                Ok(())
            }
            Err(e) => match e.as_service_error() {
                Some(
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(c),
                ) => match c.item().map(snapshot_of).transpose() {
                    Ok(current) => Err(SnapshotError::Conflict {
                        current: current.map(Box::new),
                    }),
                    Err(err) => Err(SnapshotError::Store(err)),
                },
                _ => Err(SnapshotError::Store(store_error(&e))),
            },
        }
    }
}

impl DynamoStore {
    /// Every quarantined record (tooling and tests; a scan).
    pub async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let out = self
            .client
            .scan()
            .table_name(&self.config.quarantine_table)
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        Ok(out
            .items()
            .iter()
            .map(|i| Quarantined {
                shard: get_s(i, "pk").unwrap_or_default().to_owned(),
                sequence_number: get_s(i, "sk").unwrap_or_default().to_owned(),
                data: match i.get("data") {
                    Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
                    _ => Vec::new(),
                },
                error: get_s(i, "error").unwrap_or_default().to_owned(),
            })
            .collect())
    }
}

impl Quarantine for DynamoStore {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.config.quarantine_table)
            .item("pk", s(record.shard))
            .item("sk", s(record.sequence_number))
            .item("data", AttributeValue::B(Blob::new(record.data)))
            .item("error", s(record.error))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map(|out| self.charge(Units::Write, out.consumed_capacity()))
            .map_err(|e| store_error(&e))
    }
}
