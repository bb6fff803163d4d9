//! The quarantine on its table, whatever a record's size: a Kinesis record reaches 1 MiB, a
//! DynamoDB item 400 KB, so the bytes go in chunks of [`CHUNK_BYTES`]. Chunks `1..` are
//! written first (`sk` = sequence number + `#` + index), the head item last (`sk` =
//! sequence number: error, size, chunk count, chunk 0): a record is listed only once it is
//! whole, and a retried put rewrites the same keys. Removal deletes the head first, so a
//! listing never shows a record with chunks missing. Never drops or truncates bytes.
//!
//! Parked accounts share the table: `pk` = `parked#` + account, `sk` = `parked` (no
//! sequence number is a word), written only if absent so the first failure is kept.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};

use super::{DynamoStore, Units, corrupt, get_n, get_s, n, s, store_error};
use crate::ports::{Parked, Quarantine, QuarantineAdmin, Quarantined, StoreError};

/// Bytes per quarantine item: under DynamoDB's 400 KB item limit with room for the keys,
/// the error text and the other attributes.
pub const CHUNK_BYTES: usize = 300 * 1024;
/// Longest error text kept (the rest is cut, marked).
const ERROR_BYTES_MAX: usize = 16 * 1024;
const _: () = assert!(CHUNK_BYTES + ERROR_BYTES_MAX + 4 * 1024 <= 400_000);

/// The sort key of every parked account's item.
const PARKED_SK: &str = "parked";

fn parked_pk(account: &str) -> String {
    format!("parked#{account}")
}

/// A park record as stored. An item that is not whole is still listed (named by its key,
/// its flaw in the error), so one bad item never hides the others from an operator.
fn parked_of(item: &HashMap<String, AttributeValue>) -> Parked {
    let field = |name: &str| get_s(item, name).unwrap_or_default().to_owned();
    let key = get_s(item, "pk")
        .and_then(|pk| pk.strip_prefix("parked#"))
        .unwrap_or_default();
    let mut error = field("error");
    let account = match get_s(item, "account") {
        Some(a) if a == key => a.to_owned(),
        other => {
            error =
                format!("malformed park item (account attribute {other:?}, key {key:?}): {error}");
            key.to_owned()
        }
    };
    let version = get_n(item, "version").unwrap_or_else(|e| {
        error = format!("malformed park item ({e}): {error}");
        0
    });
    Parked {
        account,
        version,
        shard: field("shard"),
        sequence_number: field("seq"),
        error,
    }
}

fn chunk_sk(sequence_number: &str, index: usize) -> String {
    format!("{sequence_number}#{index:04}")
}

fn clipped(error: String) -> String {
    if error.len() <= ERROR_BYTES_MAX {
        return error;
    }
    let mut end = ERROR_BYTES_MAX;
    while !error.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &error[..end])
}

impl DynamoStore {
    /// Every quarantined record, whole (tooling and tests; a paginated scan).
    pub async fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let items = self.scan_quarantine().await?;
        let mut heads: BTreeMap<(String, String), &HashMap<String, AttributeValue>> =
            BTreeMap::new();
        let mut chunks: HashMap<(String, String), BTreeMap<usize, &[u8]>> = HashMap::new();
        for item in &items {
            let shard = get_s(item, "pk").unwrap_or_default().to_owned();
            let sk = get_s(item, "sk").unwrap_or_default();
            if sk == PARKED_SK {
                continue;
            }
            let data = match item.get("data") {
                Some(AttributeValue::B(b)) => b.as_ref(),
                _ => &[][..],
            };
            match sk.rsplit_once('#') {
                Some((seq, index)) if item.get("error").is_none() => {
                    let index = index
                        .parse()
                        .map_err(|_| corrupt(format!("quarantine chunk key {sk:?}")))?;
                    chunks
                        .entry((shard, seq.to_owned()))
                        .or_default()
                        .insert(index, data);
                }
                _ => {
                    heads.insert((shard, sk.to_owned()), item);
                }
            }
        }
        let mut out = Vec::with_capacity(heads.len());
        for ((shard, seq), head) in heads {
            let count: usize = get_n(head, "chunks").unwrap_or(1);
            let size: usize = get_n(head, "size").unwrap_or(0);
            let mut data = match head.get("data") {
                Some(AttributeValue::B(b)) => b.as_ref().to_vec(),
                _ => Vec::new(),
            };
            let rest = chunks.get(&(shard.clone(), seq.clone()));
            for i in 1..count {
                let chunk = rest.and_then(|c| c.get(&i)).ok_or_else(|| {
                    corrupt(format!("quarantined record {shard}/{seq} lacks chunk {i}"))
                })?;
                data.extend_from_slice(chunk);
            }
            if count > 1 && data.len() != size {
                return Err(corrupt(format!(
                    "quarantined record {shard}/{seq}: {} bytes, {size} recorded",
                    data.len()
                )));
            }
            out.push(Quarantined {
                error: get_s(head, "error").unwrap_or_default().to_owned(),
                shard,
                sequence_number: seq,
                data,
            });
        }
        Ok(out)
    }

    /// Every item of the Quarantine table, page after page (the SDK's paginator).
    async fn scan_quarantine(&self) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut items = Vec::new();
        let mut pages = self
            .client
            .scan()
            .table_name(&self.config.quarantine_table)
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let out = page.map_err(|e| store_error(&e))?;
            self.charge(Units::Read, out.consumed_capacity());
            items.extend(out.items().iter().cloned());
        }
        Ok(items)
    }

    async fn put_quarantine_item(
        &self,
        item: HashMap<String, AttributeValue>,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.config.quarantine_table)
            .set_item(Some(item))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map(|out| self.charge(Units::Write, out.consumed_capacity()))
            .map_err(|e| store_error(&e))
    }

    async fn delete_quarantine_item(&self, shard: &str, sk: String) -> Result<(), StoreError> {
        self.client
            .delete_item()
            .table_name(&self.config.quarantine_table)
            .key("pk", s(shard))
            .key("sk", s(sk))
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map(|out| self.charge(Units::Write, out.consumed_capacity()))
            .map_err(|e| store_error(&e))
    }
}

impl Quarantine for DynamoStore {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        let size = record.data.len();
        let mut parts = record.data.chunks(CHUNK_BYTES);
        let first = parts.next().unwrap_or_default().to_vec();
        let mut count = 1;
        for (i, chunk) in parts.enumerate() {
            count = i + 2;
            self.put_quarantine_item(HashMap::from([
                ("pk".to_owned(), s(&record.shard)),
                ("sk".to_owned(), s(chunk_sk(&record.sequence_number, i + 1))),
                ("data".to_owned(), AttributeValue::B(Blob::new(chunk))),
            ]))
            .await?;
        }
        self.put_quarantine_item(HashMap::from([
            ("pk".to_owned(), s(record.shard)),
            ("sk".to_owned(), s(record.sequence_number)),
            ("data".to_owned(), AttributeValue::B(Blob::new(first))),
            ("error".to_owned(), s(clipped(record.error))),
            ("size".to_owned(), n(size)),
            ("chunks".to_owned(), n(count)),
        ]))
        .await
    }

    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        self.park_item(parked).await
    }

    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        self.parked_item(account).await
    }
}

impl DynamoStore {
    async fn park_item(&self, parked: Parked) -> Result<bool, StoreError> {
        let item = HashMap::from([
            ("pk".to_owned(), s(parked_pk(&parked.account))),
            ("sk".to_owned(), s(PARKED_SK)),
            ("account".to_owned(), s(parked.account)),
            ("version".to_owned(), n(parked.version)),
            ("shard".to_owned(), s(parked.shard)),
            ("seq".to_owned(), s(parked.sequence_number)),
            ("error".to_owned(), s(clipped(parked.error))),
        ]);
        let out = self
            .client
            .put_item()
            .table_name(&self.config.quarantine_table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await;
        match out {
            Ok(out) => {
                self.charge(Units::Write, out.consumed_capacity());
                Ok(true)
            }
            Err(e) => match e.as_service_error() {
                Some(
                    aws_sdk_dynamodb::operation::put_item::PutItemError::ConditionalCheckFailedException(_),
                ) => Ok(false),
                _ => Err(store_error(&e)),
            },
        }
    }

    async fn parked_item(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        let out = self
            .client
            .get_item()
            .table_name(&self.config.quarantine_table)
            .key("pk", s(parked_pk(account)))
            .key("sk", s(PARKED_SK))
            .consistent_read(true)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Read, out.consumed_capacity());
        Ok(out.item().map(parked_of))
    }
}

impl QuarantineAdmin for DynamoStore {
    async fn list(&self) -> Result<Vec<Quarantined>, StoreError> {
        self.quarantined().await
    }

    async fn parked_list(&self) -> Result<Vec<Parked>, StoreError> {
        let items = self.scan_quarantine().await?;
        let mut out = items
            .iter()
            .filter(|item| get_s(item, "sk") == Some(PARKED_SK))
            .map(parked_of)
            .collect::<Vec<_>>();
        out.sort_by(|a, b| a.account.cmp(&b.account));
        Ok(out)
    }

    async fn unpark(&self, account: &str) -> Result<(), StoreError> {
        self.delete_quarantine_item(&parked_pk(account), PARKED_SK.to_owned())
            .await
    }

    async fn remove(&self, shard: &str, sequence_number: &str) -> Result<(), StoreError> {
        let head = self
            .client
            .delete_item()
            .table_name(&self.config.quarantine_table)
            .key("pk", s(shard))
            .key("sk", s(sequence_number))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .return_consumed_capacity(ReturnConsumedCapacity::Total)
            .send()
            .await
            .map_err(|e| store_error(&e))?;
        self.charge(Units::Write, head.consumed_capacity());
        let count: usize = head
            .attributes()
            .map(|a| get_n(a, "chunks").unwrap_or(1))
            .unwrap_or(1);
        for i in 1..count {
            self.delete_quarantine_item(shard, chunk_sk(sequence_number, i))
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A park item that is not whole is still listed, by its key, with its flaw: one bad
    /// item must never hide the others from `tally parked list|redrive`.
    #[test]
    fn a_malformed_park_item_is_listed_by_its_key_with_its_flaw() {
        let item = HashMap::from([
            ("pk".to_owned(), s("parked#noacct")),
            ("sk".to_owned(), s(PARKED_SK)),
            ("version".to_owned(), s("zz")),
            ("error".to_owned(), s("why")),
        ]);
        let p = parked_of(&item);
        assert_eq!((p.account.as_str(), p.version), ("noacct", 0));
        assert!(p.error.contains("malformed park item"), "{}", p.error);
        assert!(p.error.ends_with("why"), "{}", p.error);
        let whole = HashMap::from([
            ("pk".to_owned(), s("parked#a")),
            ("account".to_owned(), s("a")),
            ("version".to_owned(), n(7)),
            ("error".to_owned(), s("why")),
        ]);
        assert_eq!(
            (parked_of(&whole).version, parked_of(&whole).error.as_str()),
            (7, "why")
        );
    }
}
