//! The items one page writes on the Events table, for `append`: the page item, one outcome
//! marker per entry, each reversal target's flag, with their conditions, and the page's
//! `ClientRequestToken`. Builds requests only; sends nothing.

use std::collections::HashSet;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};

use super::append::Prepared;
use super::events::{marker_sk, page_sk};
use super::{DynamoStore, built, corrupt, n, s};
use crate::codec::encode_events;
use crate::codec::stored::encode_outcome;
use crate::domain::{AccountId, EventKind, TxnId, TxnOutcome};
use crate::ports::{PageWrite, StoreError};

/// What each item of a page's `TransactWriteItems` stands for, to read
/// `CancellationReasons` by index.
pub(super) enum Item {
    Page,
    Outcome(TxnId),
    Target(TxnId),
}

/// What every item of one page's write shares.
#[derive(Debug, Clone, Copy)]
pub(super) struct Written {
    /// Seconds of ledger time the marker TTL counts from.
    pub(super) now: i64,
    /// The caller's `Append::attempt`, stored on the page item and on refusal markers so
    /// that only the same attempt's retry is taken for a write it made.
    pub(super) attempt: u64,
}

/// `ClientRequestToken` of a page: a digest of everything the page writes (table included:
/// tokens are shared by every table of an AWS account and region) and of the attempt, so a
/// retry of the same attempt is recognised by DynamoDB (for 10 minutes) and anything else,
/// a byte-identical page from another caller included, is not.
pub(super) fn request_token(
    table: &str,
    account: &str,
    expected: u64,
    page: &PageWrite,
    attempt: u64,
) -> String {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(table.as_bytes());
    h.update([0]);
    h.update(account.as_bytes());
    h.update(expected.to_le_bytes());
    h.update(attempt.to_le_bytes());
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
    /// The condition a new outcome marker is written under: no marker, or (with a TTL) only
    /// an expired one.
    fn fresh_marker(&self) -> &'static str {
        if self.config.marker_ttl_secs.is_some() {
            "attribute_not_exists(sk) OR expires_at <= :now"
        } else {
            "attribute_not_exists(sk)"
        }
    }

    /// A marker's put. A refusal carries the attempt that decided it: a refusal's retry must
    /// tell its own marker from a twin attempt's identical one.
    pub(super) fn marker_put(
        &self,
        account: &str,
        txn: &TxnId,
        outcome: &TxnOutcome,
        written: Written,
    ) -> Result<Put, StoreError> {
        let Written { now, attempt } = written;
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
        match reversed {
            Some(reversed) => put = put.item("reversed", AttributeValue::Bool(reversed)),
            None => put = put.item("attempt", n(attempt)),
        }
        if let Some(ttl) = self.config.marker_ttl_secs {
            put = put
                .item("expires_at", n(now.saturating_add_unsigned(ttl)))
                .expression_attribute_values(":now", n(now));
        }
        built(put.build())
    }

    /// The items of one page's transaction, and what each stands for.
    pub(super) fn page_items(
        &self,
        account: &AccountId,
        page: &PageWrite,
        written: Written,
    ) -> Result<Prepared, StoreError> {
        let now = written.now;
        let table = &self.config.events_table;
        let pk = account.as_str();
        let mut items = Vec::new();
        let mut meaning = Vec::new();
        let mut page_bytes = None;
        if let (Some(first), Some(last)) = (page.events.first(), page.events.last()) {
            let bytes = encode_events(account, &page.events)
                .map_err(corrupt)?
                .to_vec();
            page_bytes = Some(bytes.clone());
            let put = Put::builder()
                .table_name(table)
                .item("pk", s(pk))
                .item("sk", s(page_sk(first.version)))
                .item("page", AttributeValue::B(Blob::new(bytes)))
                .item("last", n(last.version))
                .item("balance", n(last.balance.minor()))
                .item("attempt", n(written.attempt))
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
            let put = self.marker_put(pk, &event.txn_id, &outcome, written)?;
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
            let outcome = TxnOutcome::Refused(refusal.clone());
            let put = self.marker_put(pk, txn, &outcome, written)?;
            items.push(TransactWriteItem::builder().put(put).build());
            meaning.push(Item::Outcome(txn.clone()));
        }
        Ok(Prepared {
            account: 0,
            items,
            meaning,
            page_bytes,
            token: String::new(),
        })
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
}
