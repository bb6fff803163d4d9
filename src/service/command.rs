//! The write side: load the account's tip, `decide`, append conditionally with bounded
//! optimistic retry, and only then publish. Idempotent per transaction id: a repeated id
//! returns the original outcome and appends nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::codec::bucket::{bucket, partition_key};
use crate::codec::{WirePage, encode_records};
use crate::domain::limits::{APPEND_RETRIES_MAX, PAGE_EVENTS_MAX, RECORD_BYTES_MAX};
use crate::domain::{
    AccountId, AccountState, Command, Event, EventKind, Page, Policy, Rejection, Timestamp, TxnId,
    decide,
};
use crate::ports::{
    Append, AppendError, EventPublisher, EventStore, OutRecord, StoreError, StoredTxn,
};

/// What happened to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Newly booked.
    Booked(Event),
    /// The transaction id was already booked on this account: here is the original event.
    Duplicate(Event),
    Rejected(Rejection),
}

/// Why commands could not be processed at all (nothing was half-done).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gave up after {0} conflicting concurrent writes to the account")]
    Contended(u32),
}

/// Commands of one account, decided in order. At most [`PAGE_EVENTS_MAX`] of them.
#[derive(Debug, Clone)]
pub struct AccountChunk {
    pub account: AccountId,
    pub commands: Vec<Command>,
}

/// A source of ledger time; injected so tests control it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The wall clock, as ledger time.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Timestamp::from_millis(ms).unwrap_or(Timestamp::MAX)
    })
}

pub struct CommandService<S, P> {
    store: S,
    publisher: P,
    policy: Policy,
    buckets: u32,
    clock: Clock,
}

/// One chunk's decisions before the append.
struct Decided {
    outcomes: Vec<Option<CommandOutcome>>,
    /// Versions of original events to fetch for duplicate outcomes (index, version).
    duplicates: Vec<(usize, u64)>,
    tip: AccountState,
    events: Vec<Event>,
    /// Outcome index of each event.
    event_slots: Vec<usize>,
}

impl<S: EventStore, P: EventPublisher> CommandService<S, P> {
    pub fn new(store: S, publisher: P, policy: Policy, buckets: u32, clock: Clock) -> Self {
        CommandService {
            store,
            publisher,
            policy,
            buckets: buckets.max(1),
            clock,
        }
    }

    pub fn store(&self) -> &S {
        &self.store
    }

    /// One command.
    pub async fn submit(
        &self,
        account: AccountId,
        command: Command,
    ) -> Result<CommandOutcome, CommandError> {
        let mut out = self
            .submit_chunks(vec![AccountChunk {
                account,
                commands: vec![command],
            }])
            .await?;
        Ok(out
            .pop()
            .and_then(|mut v| v.pop())
            .expect("one chunk of one command gives one outcome"))
    }

    /// Many accounts at once (each at most once), each chunk's commands in order. All pages
    /// go to the store in one call; losers of a race are reloaded and decided again.
    pub async fn submit_chunks(
        &self,
        chunks: Vec<AccountChunk>,
    ) -> Result<Vec<Vec<CommandOutcome>>, CommandError> {
        debug_assert!(chunks.iter().all(|c| c.commands.len() <= PAGE_EVENTS_MAX));
        let mut results: Vec<Option<Vec<CommandOutcome>>> = vec![None; chunks.len()];
        let mut pending: Vec<usize> = (0..chunks.len()).collect();
        let mut booked: Vec<Page> = Vec::new();
        for _attempt in 0..=APPEND_RETRIES_MAX {
            if pending.is_empty() {
                break;
            }
            let mut decided = Vec::with_capacity(pending.len());
            for &i in &pending {
                decided.push(self.decide_chunk(&chunks[i]).await?);
            }
            let appends: Vec<(usize, Append)> = pending
                .iter()
                .zip(&decided)
                .filter(|(_, d)| !d.events.is_empty())
                .map(|(&i, d)| {
                    (
                        i,
                        Append {
                            account: chunks[i].account.clone(),
                            expected_version: d.tip.version,
                            events: d.events.clone(),
                        },
                    )
                })
                .collect();
            let (slots, appends): (Vec<usize>, Vec<Append>) = appends.into_iter().unzip();
            let mut append_results: HashMap<usize, Result<(), AppendError>> = slots
                .iter()
                .copied()
                .zip(self.store.append(appends.clone()).await)
                .collect();
            let mut retry = Vec::new();
            for (&i, mut d) in pending.iter().zip(decided) {
                match append_results.remove(&i).unwrap_or(Ok(())) {
                    Ok(()) => {
                        for (event, &slot) in d.events.iter().zip(&d.event_slots) {
                            d.outcomes[slot] = Some(CommandOutcome::Booked(event.clone()));
                        }
                        if !d.events.is_empty() {
                            booked.push(
                                Page::new(chunks[i].account.clone(), d.events.clone())
                                    .map_err(|e| StoreError::Corrupt(e.to_string()))?,
                            );
                        }
                        results[i] = Some(self.finish(&chunks[i].account, d).await?);
                    }
                    Err(AppendError::Store(e)) => return Err(e.into()),
                    Err(
                        AppendError::Conflict { .. }
                        | AppendError::DuplicateTxn(_)
                        | AppendError::TargetReversed(_),
                    ) => retry.push(i),
                }
            }
            pending = retry;
        }
        if !pending.is_empty() {
            return Err(CommandError::Contended(APPEND_RETRIES_MAX));
        }
        self.publish(&booked).await;
        Ok(results.into_iter().map(|r| r.unwrap_or_default()).collect())
    }

    /// Decides a chunk against the stored tip and markers, without writing.
    async fn decide_chunk(&self, chunk: &AccountChunk) -> Result<Decided, CommandError> {
        let account = &chunk.account;
        let mut ids: Vec<TxnId> = Vec::with_capacity(chunk.commands.len() * 2);
        for c in &chunk.commands {
            ids.push(c.txn_id().clone());
            ids.extend(c.reverses().cloned());
        }
        let (tip, found) = self.store.load(account, &ids).await?;
        // Stored markers, overlaid below by what this chunk decides.
        let mut local: HashMap<&str, StoredTxn> = HashMap::new();
        for (id, marker) in ids.iter().zip(found) {
            if let Some(m) = marker {
                local.insert(id.as_str(), m);
            }
        }
        let mut state = tip;
        let mut d = Decided {
            outcomes: vec![None; chunk.commands.len()],
            duplicates: Vec::new(),
            tip,
            events: Vec::new(),
            event_slots: Vec::new(),
        };
        let now = (self.clock)();
        for (slot, command) in chunk.commands.iter().enumerate() {
            let txn = command.txn_id();
            let known = local.get(txn.as_str()).copied();
            if let Some(original) = known {
                match d.events.iter().find(|e| e.version == original.version) {
                    Some(e) => d.outcomes[slot] = Some(CommandOutcome::Duplicate(e.clone())),
                    None => d.duplicates.push((slot, original.version)),
                }
                continue;
            }
            let target = command
                .reverses()
                .and_then(|t| local.get(t.as_str()).copied());
            match decide(
                &state,
                command,
                target.as_ref().map(|t| &t.record),
                now,
                &self.policy,
            ) {
                Ok(events) => {
                    for event in events {
                        if let (EventKind::Reversed { .. }, Some(reverses), Some(mut t)) =
                            (&event.kind, command.reverses(), target)
                        {
                            t.record.reversed = true;
                            local.insert(reverses.as_str(), t);
                        }
                        let record = event
                            .txn_record(false)
                            .expect("decided events have valid deltas");
                        local.insert(
                            txn.as_str(),
                            StoredTxn {
                                version: event.version,
                                record,
                            },
                        );
                        state = AccountState::after(&event);
                        d.event_slots.push(slot);
                        d.events.push(event);
                    }
                }
                Err(rejection) => d.outcomes[slot] = Some(CommandOutcome::Rejected(rejection)),
            }
        }
        Ok(d)
    }

    /// Fills duplicate outcomes with the original events.
    async fn finish(
        &self,
        account: &AccountId,
        mut d: Decided,
    ) -> Result<Vec<CommandOutcome>, CommandError> {
        for (slot, version) in std::mem::take(&mut d.duplicates) {
            let original = self
                .store
                .read(account, version, version)
                .await?
                .pop()
                .ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "marker of {account} points at missing version {version}"
                    ))
                })?;
            d.outcomes[slot] = Some(CommandOutcome::Duplicate(original));
        }
        Ok(d.outcomes
            .into_iter()
            .map(|o| o.expect("every command has an outcome"))
            .collect())
    }

    /// Publishes booked pages, aggregated by bucket. A failure is logged, not returned: the
    /// events are stored, and gap fill or catch-up brings them to the snapshots.
    async fn publish(&self, pages: &[Page]) {
        if pages.is_empty() {
            return;
        }
        let mut by_bucket: BTreeMap<u32, Vec<WirePage>> = BTreeMap::new();
        for page in pages {
            by_bucket
                .entry(bucket(page.account.as_str(), self.buckets))
                .or_default()
                .push(WirePage::from_page(page));
        }
        let mut records = Vec::new();
        for (b, pages) in by_bucket {
            match encode_records(&pages, RECORD_BYTES_MAX) {
                Ok(encoded) => records.extend(encoded.into_iter().map(|data| OutRecord {
                    partition_key: partition_key(b),
                    data: data.to_vec(),
                })),
                Err(e) => {
                    tracing::error!(error = %e, "encoding stream records failed; catch-up will project them")
                }
            }
        }
        if let Err(e) = self.publisher.publish(records).await {
            tracing::warn!(error = %e, "publish failed after retries; catch-up will project the events");
        }
    }
}
