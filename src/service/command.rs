//! The write side: load the account's tip, `decide`, append conditionally with bounded
//! optimistic retry, and only then publish. Idempotent per transaction id: a repeated id
//! returns the original outcome and appends nothing.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use crate::codec::bucket::{bucket, partition_key};
use crate::codec::{WirePage, encode_records};
use crate::domain::limits::{
    APPEND_RETRIES_MAX, PAGE_EVENTS_MAX, RECORD_BYTES_MAX, RETRY_DELAY_MS_MAX,
};
use crate::domain::{
    AccountId, AccountState, Command, Event, EventKind, Page, Policy, Rejection, Timestamp, TxnId,
    decide,
};
use crate::ports::{
    Append, AppendError, EventPublisher, EventStore, OutRecord, StoreError, StoredTxn,
};
use crate::service::metrics::Metrics;

/// What happened to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Newly booked.
    Booked(Event),
    /// The transaction id was already booked on this account: here is the original event.
    Duplicate(Event),
    Rejected(Rejection),
}

/// Why some commands have no outcome. Whatever was booked before the failure stays booked
/// (and is published); resubmitting the same commands is safe, as a booked transaction id
/// comes back as a duplicate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("gave up after {0} conflicting concurrent writes to the account")]
    Contended(u32),
}

/// Commands of one account, decided in order.
#[derive(Debug, Clone)]
pub struct AccountChunk {
    pub account: AccountId,
    pub commands: Vec<Command>,
}

/// Exponential backoff with full jitter: up to 1 ms, 2 ms, 4 ms, … capped at
/// [`RETRY_DELAY_MS_MAX`]. The jitter comes from [`crate::entropy`], so a simulation
/// replays it from its seed.
pub(crate) fn retry_delay(attempt: u32) -> std::time::Duration {
    let ceiling = (1u64 << attempt.min(16)).min(RETRY_DELAY_MS_MAX);
    std::time::Duration::from_micros(crate::entropy::next_u64() % (ceiling * 1_000) + 1)
}

/// Backend failures worth another attempt: a throttled or unreachable backend may answer
/// the next call; corrupt data will not change.
pub(crate) fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Throttled | StoreError::Unavailable(_))
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

#[derive(Clone)]
pub struct CommandService<S, P> {
    store: S,
    publisher: P,
    policy: Policy,
    buckets: u32,
    clock: Clock,
    metrics: Arc<Metrics>,
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
            metrics: Arc::default(),
        }
    }

    /// Counts appended events into shared metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
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

    /// Many accounts at once (each at most once), each chunk's commands in order, chunks
    /// of any length. Events go to the store in pages of at most [`PAGE_EVENTS_MAX`], all in
    /// one call; the store applies an account's pages in order. If an account's later page
    /// loses a race, or the backend throttles it, its earlier pages stand and the rest of
    /// its commands are reloaded and decided again with jittered backoff (bounded by
    /// [`APPEND_RETRIES_MAX`]). Whatever was booked is published, even when this returns an
    /// error; an error means some commands have no outcome, and resubmitting them is safe
    /// (a booked transaction id comes back as a duplicate).
    pub async fn submit_chunks(
        &self,
        chunks: Vec<AccountChunk>,
    ) -> Result<Vec<Vec<CommandOutcome>>, CommandError> {
        let mut booked: Vec<Page> = Vec::new();
        let result = self.book(&chunks, &mut booked).await;
        Metrics::add(
            &self.metrics.events_appended,
            booked.iter().map(|p| p.events().len() as u64).sum(),
        );
        self.publish(&booked).await;
        result
    }

    /// The decide/append/retry loop of [`Self::submit_chunks`]; fills `booked` with the
    /// pages it stored.
    async fn book(
        &self,
        chunks: &[AccountChunk],
        booked: &mut Vec<Page>,
    ) -> Result<Vec<Vec<CommandOutcome>>, CommandError> {
        let mut done: Vec<Vec<CommandOutcome>> = chunks
            .iter()
            .map(|c| Vec::with_capacity(c.commands.len()))
            .collect();
        let mut pending: Vec<usize> = (0..chunks.len())
            .filter(|&i| !chunks[i].commands.is_empty())
            .collect();
        // Why the last retry was needed: what to report if the retries run out.
        let mut last_failure = CommandError::Contended(APPEND_RETRIES_MAX);
        let mut attempts = 0;
        while !pending.is_empty() {
            if attempts > APPEND_RETRIES_MAX {
                return Err(last_failure);
            }
            if attempts > 0 {
                // Racers that retry at once collide again: back off with jitter.
                tokio::time::sleep(retry_delay(attempts)).await;
            }
            attempts += 1;
            let mut retry = Vec::new();
            let mut decided = Vec::with_capacity(pending.len());
            let mut appends = Vec::new();
            for &i in &pending {
                let start = done[i].len();
                let d = match self
                    .decide_chunk(&chunks[i].account, &chunks[i].commands[start..])
                    .await
                {
                    Ok(d) => d,
                    Err(CommandError::Store(e)) if transient(&e) => {
                        last_failure = CommandError::Store(e);
                        retry.push(i);
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                let mut expected_version = d.tip.version;
                for page in d.events.chunks(PAGE_EVENTS_MAX) {
                    appends.push(Append {
                        account: chunks[i].account.clone(),
                        expected_version,
                        events: page.to_vec(),
                    });
                    expected_version = page[page.len() - 1].version;
                }
                decided.push((i, d));
            }
            let mut results = self.store.append(appends).await.into_iter();
            let mut fatal: Option<CommandError> = None;
            for (i, mut d) in decided {
                let pages = d.events.len().div_ceil(PAGE_EVENTS_MAX);
                let mut stored_pages = 0;
                let mut lost = false;
                for result in results.by_ref().take(pages) {
                    match result {
                        Ok(()) if !lost => stored_pages += 1,
                        Ok(()) => {}
                        Err(AppendError::Store(e)) if transient(&e) => {
                            last_failure = CommandError::Store(e);
                            lost = true;
                        }
                        Err(AppendError::Store(e)) => {
                            fatal.get_or_insert(e.into());
                            lost = true;
                        }
                        Err(
                            AppendError::Conflict { .. }
                            | AppendError::DuplicateTxn(_)
                            | AppendError::TargetReversed(_),
                        ) => {
                            last_failure = CommandError::Contended(APPEND_RETRIES_MAX);
                            lost = true;
                        }
                    }
                }
                let stored_events = (stored_pages * PAGE_EVENTS_MAX).min(d.events.len());
                // Decisions up to the last stored event's command are final; with no stored
                // event and a lost race, nothing is (they were made on a stale tip).
                let final_commands = if !lost {
                    d.outcomes.len()
                } else if stored_events == 0 {
                    0
                } else {
                    d.event_slots[stored_events - 1] + 1
                };
                for (event, &slot) in d.events.iter().zip(&d.event_slots).take(stored_events) {
                    d.outcomes[slot] = Some(CommandOutcome::Booked(event.clone()));
                }
                if stored_events > 0 {
                    let page = Page::new(
                        chunks[i].account.clone(),
                        d.events[..stored_events].to_vec(),
                    )
                    .map_err(|e| StoreError::Corrupt(e.to_string()))?;
                    booked.push(page);
                }
                d.outcomes.truncate(final_commands);
                d.duplicates.retain(|(slot, _)| *slot < final_commands);
                match self.finish(&chunks[i].account, d).await {
                    Ok(outcomes) => done[i].extend(outcomes),
                    Err(e) => {
                        fatal.get_or_insert(e);
                    }
                }
                if done[i].len() < chunks[i].commands.len() {
                    retry.push(i);
                }
            }
            // Every account's stored pages are in `booked` (and get published) before a
            // failure that retrying cannot fix is returned.
            if let Some(e) = fatal {
                return Err(e);
            }
            pending = retry;
        }
        Ok(done)
    }

    /// Decides a chunk against the stored tip and markers, without writing.
    async fn decide_chunk(
        &self,
        account: &AccountId,
        commands: &[Command],
    ) -> Result<Decided, CommandError> {
        let mut ids: Vec<TxnId> = Vec::with_capacity(commands.len() * 2);
        for c in commands {
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
            outcomes: vec![None; commands.len()],
            duplicates: Vec::new(),
            tip,
            events: Vec::new(),
            event_slots: Vec::new(),
        };
        let now = (self.clock)();
        for (slot, command) in commands.iter().enumerate() {
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
        let n = records.len() as u64;
        match self.publisher.publish(records).await {
            Ok(()) => Metrics::add(&self.metrics.records_published, n),
            Err(e) => {
                tracing::warn!(error = %e, "publish failed after retries; catch-up will project the events")
            }
        }
    }
}
