//! The write side: load each account's tip and txn outcomes, decide the run of commands
//! (`domain::decide_run`), append the resulting pages conditionally, and only then publish.
//!
//! One txn id, one outcome, forever: a booked id comes back as the original event, a refused
//! one as the original refusal, the same id for a different request as `Reused`; nothing is
//! decided twice. Must never: publish an event before it is durable, answer for a command
//! whose outcome is not durable, or return an error that hides what was booked (booked pages
//! are always published and returned).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{self, StreamExt};

use crate::codec::bucket::{bucket, partition_key};
use crate::codec::{WirePage, encode_records};
use crate::domain::limits::{
    APPEND_RETRIES_MAX, PAGE_EVENTS_MAX, RECORD_BYTES_MAX, RETRY_DELAY_MS_MAX,
};
use crate::domain::{
    AccountId, Command, Decision, Event, Page, Policy, Refusal, Rejection, Timestamp, TxnId,
    TxnOutcome, decide_run,
};
use crate::ports::{
    Append, AppendError, Appended, EventPublisher, EventStore, OutRecord, PageWrite, StoreError,
};
use crate::service::metrics::Metrics;

/// Accounts loaded (tip and outcomes) concurrently by one call.
pub const LOADS_IN_FLIGHT_MAX: usize = 16;

/// What happened to one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandOutcome {
    /// Newly booked.
    Booked(Event),
    /// The txn id was booked before with this same request: the original event.
    Duplicate(Event),
    /// Newly refused by the rules; recorded as the id's outcome.
    Refused(Rejection),
    /// The txn id was refused before with this same request: the original refusal.
    ReplayedRefusal(Refusal),
    /// The txn id already has an outcome for a different request (`field` differs).
    Reused {
        field: &'static str,
        original: Box<TxnOutcome>,
    },
    /// Refused before reaching the ledger (an amount outside the policy): not recorded.
    Invalid(Rejection),
}

impl CommandOutcome {
    fn of(decision: Decision) -> CommandOutcome {
        match decision {
            Decision::Booked(e) => CommandOutcome::Booked(e),
            Decision::Refused(r) => CommandOutcome::Refused(r.rejection),
            Decision::Invalid(r) => CommandOutcome::Invalid(r),
            Decision::Replayed(TxnOutcome::Booked { event, .. }) => {
                CommandOutcome::Duplicate(event)
            }
            Decision::Replayed(TxnOutcome::Refused(r)) => CommandOutcome::ReplayedRefusal(r),
            Decision::Reused { field, original } => CommandOutcome::Reused { field, original },
        }
    }
}

/// Why some commands have no outcome. Whatever was booked before the failure stays booked
/// (and is published); resubmitting the same commands is safe, as every decided id comes
/// back with its outcome.
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

/// What [`CommandService::submit_chunks`] did: per chunk, the outcomes of its first commands
/// in order — all of them unless `error` is set, in which case the rest have no outcome yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submitted {
    pub outcomes: Vec<Vec<CommandOutcome>>,
    pub error: Option<CommandError>,
}

impl Submitted {
    /// Every outcome, or the error if some commands have none (what was booked is then only
    /// in `outcomes`: prefer matching on the fields where that matters).
    pub fn into_result(self) -> Result<Vec<Vec<CommandOutcome>>, CommandError> {
        match self.error {
            None => Ok(self.outcomes),
            Some(e) => Err(e),
        }
    }
}

/// Backend failures worth another attempt: a throttled or unreachable backend may answer
/// the next call; corrupt data will not change.
pub(crate) fn transient(e: &StoreError) -> bool {
    matches!(e, StoreError::Throttled | StoreError::Unavailable(_))
}

/// A source of ledger time; injected so tests and the simulator control it.
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The pause before retry `attempt` (1, 2, …); injected so the simulator can seed it.
pub type Backoff = Arc<dyn Fn(u32) -> Duration + Send + Sync>;

/// The wall clock, as ledger time.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Timestamp::from_millis(ms).unwrap_or(Timestamp::MAX)
    })
}

/// Exponential backoff with full jitter: up to 1 ms, 2 ms, 4 ms, … capped at
/// [`RETRY_DELAY_MS_MAX`]. Racers that retry at once collide again.
pub fn jittered_backoff() -> Backoff {
    Arc::new(retry_delay)
}

/// The jitter comes from [`crate::entropy`], so a simulation replays it from its seed.
pub(crate) fn retry_delay(attempt: u32) -> Duration {
    let ceiling = (1u64 << attempt.min(16)).min(RETRY_DELAY_MS_MAX);
    Duration::from_micros(crate::entropy::next_u64() % (ceiling * 1_000) + 1)
}

#[derive(Clone)]
pub struct CommandService<S, P> {
    store: S,
    publisher: P,
    policy: Policy,
    buckets: u32,
    clock: Clock,
    backoff: Backoff,
    metrics: Arc<Metrics>,
}

/// One chunk's decisions that are not final yet, and the pages that make them final.
#[derive(Debug, Clone)]
struct Plan {
    /// Decisions of the chunk's commands from the first one without an outcome.
    decisions: Vec<Decision>,
    pages: Vec<PageWrite>,
    /// Per page: the version it expects the account at (for a page with events), and the
    /// index in `decisions` of its first entry. Decisions before a page's first entry are
    /// final once every earlier page is written.
    expected: Vec<u64>,
    starts: Vec<usize>,
}

impl Plan {
    /// Cuts decisions into pages of at most [`PAGE_EVENTS_MAX`] entries, in order.
    fn new(decisions: Vec<Decision>, tip_version: u64) -> Plan {
        let mut plan = Plan {
            decisions: Vec::new(),
            pages: Vec::new(),
            expected: Vec::new(),
            starts: Vec::new(),
        };
        let mut version = tip_version;
        for (i, d) in decisions.iter().enumerate() {
            let full = plan.pages.last().is_none_or(|p| p.len() >= PAGE_EVENTS_MAX);
            if matches!(d, Decision::Booked(_) | Decision::Refused(_)) && full {
                plan.pages.push(PageWrite::default());
                plan.expected.push(version);
                plan.starts.push(i);
            }
            match d {
                Decision::Booked(e) => {
                    version = e.version;
                    if let Some(p) = plan.pages.last_mut() {
                        p.events.push(e.clone());
                    }
                }
                Decision::Refused(r) => {
                    if let Some(p) = plan.pages.last_mut() {
                        p.refusals.push(r.clone());
                    }
                }
                _ => {}
            }
        }
        plan.decisions = decisions;
        plan
    }

    /// How many decisions are final once the first `pages` pages are written.
    fn final_after(&self, pages: usize) -> usize {
        self.starts
            .get(pages)
            .copied()
            .unwrap_or(self.decisions.len())
    }

    /// Drops the first `pages` pages and the decisions they made final.
    fn advance(&mut self, pages: usize) -> (Vec<Decision>, Vec<PageWrite>) {
        let n = self.final_after(pages);
        let decided: Vec<Decision> = self.decisions.drain(..n).collect();
        let written: Vec<PageWrite> = self.pages.drain(..pages).collect();
        self.expected.drain(..pages);
        self.starts.drain(..pages);
        self.starts.iter_mut().for_each(|s| *s -= n);
        (decided, written)
    }
}

/// What to do with a chunk after an append round.
enum Next {
    Done,
    /// Same pages again (a transient failure: they may even have been written).
    Retry(StoreError),
    /// Reload and decide again (lost a race).
    Redecide,
    Fail(CommandError),
}

impl<S: EventStore, P: EventPublisher> CommandService<S, P> {
    pub fn new(store: S, publisher: P, policy: Policy, buckets: u32, clock: Clock) -> Self {
        CommandService {
            store,
            publisher,
            policy,
            buckets: buckets.max(1),
            clock,
            backoff: jittered_backoff(),
            metrics: Arc::default(),
        }
    }

    /// Counts appended events into shared metrics.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Replaces the retry pause (the simulator seeds it).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
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
            .await;
        match (out.error, out.outcomes.pop().and_then(|mut v| v.pop())) {
            (_, Some(outcome)) => Ok(outcome),
            (Some(e), None) => Err(e),
            (None, None) => unreachable!("a chunk without error has every outcome"),
        }
    }

    /// Many accounts at once (each at most once), each chunk's commands in order, chunks
    /// of any length, all accounts' pages in one store call per round. If an account's page
    /// loses a race, its earlier pages stand and the rest of its commands are reloaded and
    /// decided again; if the backend fails transiently, the same pages are sent again (a
    /// page that was in fact written is recognised by the store). Both with jittered
    /// backoff, bounded by [`APPEND_RETRIES_MAX`]. Whatever was booked is published and its
    /// outcome returned, even alongside an error.
    pub async fn submit_chunks(&self, chunks: Vec<AccountChunk>) -> Submitted {
        let mut booked: Vec<Page> = Vec::new();
        let submitted = self.book(&chunks, &mut booked).await;
        Metrics::add(
            &self.metrics.events_appended,
            booked.iter().map(|p| p.events().len() as u64).sum(),
        );
        self.publish(&booked).await;
        submitted
    }

    /// The plan/append/settle rounds of [`Self::submit_chunks`]; fills `booked` with the
    /// pages it stored.
    async fn book(&self, chunks: &[AccountChunk], booked: &mut Vec<Page>) -> Submitted {
        let mut done: Vec<Vec<CommandOutcome>> = chunks
            .iter()
            .map(|c| Vec::with_capacity(c.commands.len()))
            .collect();
        let mut plans: Vec<Option<Plan>> = vec![None; chunks.len()];
        let mut pending: Vec<usize> = (0..chunks.len())
            .filter(|&i| !chunks[i].commands.is_empty())
            .collect();
        // Why the last retry was needed: what to report if the retries run out.
        let mut last_failure = CommandError::Contended(APPEND_RETRIES_MAX);
        let mut attempts = 0;
        while !pending.is_empty() {
            if attempts > APPEND_RETRIES_MAX {
                return Submitted {
                    outcomes: done,
                    error: Some(last_failure),
                };
            }
            if attempts > 0 {
                tokio::time::sleep((self.backoff)(attempts)).await;
            }
            attempts += 1;
            let mut retry = Vec::new();
            let mut fatal = None;
            let unplanned: Vec<usize> = pending
                .iter()
                .copied()
                .filter(|&i| plans[i].is_none())
                .collect();
            for (i, planned) in self.plan_all(chunks, &done, &unplanned).await {
                match planned {
                    Ok(plan) => plans[i] = Some(plan),
                    Err(e) if transient(&e) => last_failure = CommandError::Store(e),
                    Err(e) => {
                        fatal.get_or_insert(CommandError::Store(e));
                    }
                }
            }
            retry.extend(pending.iter().copied().filter(|&i| plans[i].is_none()));
            let results = self.append_planned(chunks, &plans, &pending).await;
            for (i, result) in results {
                let plan = plans[i].as_mut().expect("planned chunks have a plan");
                match settle(&chunks[i].account, plan, result, &mut done[i], booked) {
                    Next::Done => plans[i] = None,
                    Next::Retry(e) => {
                        last_failure = CommandError::Store(e);
                        retry.push(i);
                    }
                    Next::Redecide => {
                        plans[i] = None;
                        last_failure = CommandError::Contended(APPEND_RETRIES_MAX);
                        retry.push(i);
                    }
                    Next::Fail(e) => {
                        plans[i] = None;
                        fatal.get_or_insert(e);
                    }
                }
            }
            // Every account's stored pages are in `booked` (and get published) before a
            // failure that retrying cannot fix is returned.
            if fatal.is_some() {
                return Submitted {
                    outcomes: done,
                    error: fatal,
                };
            }
            pending = retry;
        }
        Submitted {
            outcomes: done,
            error: None,
        }
    }

    /// One store call with the pages of every planned chunk of `pending`; one result per
    /// planned chunk (a chunk whose plan writes nothing, only replays, settles without one).
    async fn append_planned(
        &self,
        chunks: &[AccountChunk],
        plans: &[Option<Plan>],
        pending: &[usize],
    ) -> Vec<(usize, Appended)> {
        let (writing, settled): (Vec<usize>, Vec<usize>) = pending
            .iter()
            .copied()
            .filter(|&i| plans[i].is_some())
            .partition(|&i| plans[i].as_ref().is_some_and(|p| !p.pages.is_empty()));
        let appends = writing
            .iter()
            .filter_map(|&i| {
                let plan = plans[i].as_ref()?;
                Some(Append {
                    account: chunks[i].account.clone(),
                    expected_version: plan.expected.first().copied().unwrap_or(0),
                    pages: plan.pages.clone(),
                })
            })
            .collect();
        let mut results = self.store.append(appends).await.into_iter();
        let mut out: Vec<(usize, Appended)> = writing
            .into_iter()
            .map(|i| {
                let r = results.next().unwrap_or_else(|| {
                    Appended::failed(AppendError::Store(StoreError::Unavailable(
                        "the store returned fewer results than appends".into(),
                    )))
                });
                (i, r)
            })
            .collect();
        out.extend(settled.into_iter().map(|i| {
            let nothing = Appended {
                pages: 0,
                error: None,
            };
            (i, nothing)
        }));
        out
    }

    /// Loads and decides the undecided rest of each chunk in `which`, accounts concurrently
    /// (at most [`LOADS_IN_FLIGHT_MAX`] loads in flight).
    async fn plan_all(
        &self,
        chunks: &[AccountChunk],
        done: &[Vec<CommandOutcome>],
        which: &[usize],
    ) -> Vec<(usize, Result<Plan, StoreError>)> {
        let now = (self.clock)();
        stream::iter(which.iter().copied())
            .map(|i| {
                let commands = &chunks[i].commands[done[i].len()..];
                async move { (i, self.plan(&chunks[i].account, commands, now).await) }
            })
            .buffered(LOADS_IN_FLIGHT_MAX)
            .collect()
            .await
    }

    /// Decides `commands` against the stored tip and outcomes, without writing.
    async fn plan(
        &self,
        account: &AccountId,
        commands: &[Command],
        now: Timestamp,
    ) -> Result<Plan, StoreError> {
        let mut ids: Vec<TxnId> = Vec::with_capacity(commands.len() * 2);
        for c in commands {
            ids.push(c.txn_id().clone());
            ids.extend(c.reverses().cloned());
        }
        let (tip, found) = self.store.load(account, &ids).await?;
        let mut outcomes: HashMap<TxnId, TxnOutcome> = ids
            .into_iter()
            .zip(found)
            .filter_map(|(id, o)| Some((id, o?)))
            .collect();
        let (decisions, _) = decide_run(tip, &mut outcomes, commands, now, &self.policy);
        Ok(Plan::new(decisions, tip.version))
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

/// Takes what one account's append wrote: the decisions it made final become outcomes, the
/// pages it wrote go to `booked`; says what to do with the rest.
fn settle(
    account: &AccountId,
    plan: &mut Plan,
    result: Appended,
    done: &mut Vec<CommandOutcome>,
    booked: &mut Vec<Page>,
) -> Next {
    let written = result.pages.min(plan.pages.len());
    let (decided, pages) = plan.advance(written);
    done.extend(decided.into_iter().map(CommandOutcome::of));
    let events: Vec<Event> = pages.into_iter().flat_map(|p| p.events).collect();
    if !events.is_empty() {
        match Page::new(account.clone(), events) {
            Ok(page) => booked.push(page),
            Err(e) => return Next::Fail(StoreError::Corrupt(e.to_string()).into()),
        }
    }
    match result.error {
        None if plan.pages.is_empty() => {
            // Decisions after the last page (replays, reuses) are final too.
            let (rest, _) = plan.advance(0);
            done.extend(rest.into_iter().map(CommandOutcome::of));
            Next::Done
        }
        None => Next::Fail(
            StoreError::Unavailable(format!(
                "the store wrote {written} of {} pages of {account} without an error",
                written + plan.pages.len()
            ))
            .into(),
        ),
        Some(AppendError::Store(e)) if transient(&e) => Next::Retry(e),
        Some(AppendError::Store(e)) => Next::Fail(e.into()),
        Some(
            AppendError::Conflict { .. }
            | AppendError::DuplicateTxn(_)
            | AppendError::TargetReversed(_),
        ) => Next::Redecide,
    }
}
