//! Whole-table listings for audits (`tally verify` / `tally replay` on AWS): a parallel
//! `Scan` of the Events table's page items (`Segment` / `TotalSegments`), every segment
//! paged concurrently. A scan reads (and bills) the whole table, markers included; it is an
//! operator's tool, never on a request path.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnConsumedCapacity};
use futures_util::future::try_join_all;

use super::{DynamoStore, Units, corrupt, get_n, get_s, s, store_error};
use crate::domain::AccountId;
use crate::ports::StoreError;

/// Most segments of one parallel scan (DynamoDB allows 1,000,000; more than the client can
/// keep busy buys nothing).
pub const SCAN_SEGMENTS_MAX: u32 = 64;

impl DynamoStore {
    /// Every account that has events, once each, with its newest version, in no particular
    /// order: `segments` scans of the Events table run concurrently. Memory grows with the
    /// number of accounts (about 100 bytes each).
    pub async fn scan_accounts(&self, segments: u32) -> Result<Vec<(AccountId, u64)>, StoreError> {
        let segments = segments.clamp(1, SCAN_SEGMENTS_MAX);
        let found = try_join_all((0..segments).map(|i| self.scan_segment(i, segments))).await?;
        // An account's items all hash to one segment, so the segments never overlap.
        let mut all = Vec::with_capacity(found.iter().map(HashMap::len).sum());
        for segment in found {
            for (account, newest) in segment {
                all.push((AccountId::new(account).map_err(corrupt)?, newest));
            }
        }
        Ok(all)
    }

    async fn scan_segment(
        &self,
        segment: u32,
        segments: u32,
    ) -> Result<HashMap<String, u64>, StoreError> {
        let mut newest: HashMap<String, u64> = HashMap::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let out = self
                .client
                .scan()
                .table_name(&self.config.events_table)
                .segment(segment as i32)
                .total_segments(segments as i32)
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
                let account = get_s(item, "pk").ok_or_else(|| corrupt("page without pk"))?;
                let last: u64 = get_n(item, "last")?;
                match newest.get_mut(account) {
                    Some(v) => *v = (*v).max(last),
                    None => {
                        newest.insert(account.to_owned(), last);
                    }
                }
            }
            match out.last_evaluated_key() {
                Some(k) => start = Some(k.clone()),
                None => return Ok(newest),
            }
        }
    }
}
