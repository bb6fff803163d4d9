//! The snapshot store on the Balances table.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{
    AttributeValue, ReturnConsumedCapacity, ReturnValuesOnConditionCheckFailure,
};
use futures_util::stream::{self, StreamExt};

use super::{BATCH_GET_KEYS_MAX, DynamoStore, Units, corrupt, get_n, get_s, n, s, store_error};
use crate::codec::time::parse_rfc3339;
use crate::domain::{Money, Month, Snapshot, Timestamp};
use crate::ports::{SnapshotError, SnapshotPut, SnapshotStore, StoreError};

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
            .buffered(self.concurrency)
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
