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
    AccountId, AccountState, Command, Decision, Event, Page, Policy, Refusal, Rejection, Timestamp,
    TxnId, TxnOutcome, decide_run,
};
use crate::ports::{
    Append, AppendError, Appended, EventPublisher, EventStore, Load, OutRecord, PageWrite,
    StoreError,
};
use crate::service::locks::Turns;
use crate::service::metrics::Metrics;
use crate::service::tips::Tips;

/// Accounts loaded (tip and outcomes) concurrently by one call, unless the store batches.
pub use crate::ports::LOADS_IN_FLIGHT_MAX;

/// Slices of one call in flight at once (see [`CommandService::with_accounts_per_call`]).
pub const SLICES_IN_FLIGHT_MAX: usize = 4;

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

pub struct CommandService<S, P> {
    store: Arc<S>,
    publisher: Arc<P>,
    policy: Policy,
    buckets: u32,
    clock: Clock,
    backoff: Backoff,
    metrics: Arc<Metrics>,
    tips: Arc<Tips>,
    turns: Arc<Turns>,
    accounts_per_call: usize,
    /// Where single-part calls of [`Self::submit_chunks_spread`] go to be merged with
    /// concurrent ones ([`Self::with_coalescing`]).
    coalesce: Option<tokio::sync::mpsc::UnboundedSender<Coalesced>>,
}

/// One call waiting to be merged with others: its chunks and where its outcomes go.
type Coalesced = (Vec<AccountChunk>, tokio::sync::oneshot::Sender<Submitted>);

/// Most commands merged into one call by [`CommandService::with_coalescing`]: an ingest
/// window's worth.
pub const COALESCED_COMMANDS_MAX: usize = 65_536;

/// Clones share the store, the publisher and the caches (no `S: Clone` needed).
impl<S, P> Clone for CommandService<S, P> {
    fn clone(&self) -> Self {
        CommandService {
            store: self.store.clone(),
            publisher: self.publisher.clone(),
            policy: self.policy,
            buckets: self.buckets,
            clock: self.clock.clone(),
            backoff: self.backoff.clone(),
            metrics: self.metrics.clone(),
            tips: self.tips.clone(),
            turns: self.turns.clone(),
            accounts_per_call: self.accounts_per_call,
            coalesce: self.coalesce.clone(),
        }
    }
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
    /// This plan's attempt (see `Append::attempt`): every retry of its pages carries it.
    attempt: u64,
    /// When it was decided (`Append::decided_at`).
    decided_at: Timestamp,
}

impl Plan {
    /// Cuts decisions into pages of at most [`PAGE_EVENTS_MAX`] entries, in order.
    fn new(decisions: Vec<Decision>, tip_version: u64, decided_at: Timestamp) -> Plan {
        let mut plan = Plan {
            decisions: Vec::new(),
            pages: Vec::new(),
            expected: Vec::new(),
            starts: Vec::new(),
            attempt: crate::entropy::next_u64() | 1,
            decided_at,
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
            store: Arc::new(store),
            publisher: Arc::new(publisher),
            policy,
            buckets: buckets.max(1),
            clock,
            backoff: jittered_backoff(),
            metrics: Arc::default(),
            tips: Arc::default(),
            turns: Arc::default(),
            accounts_per_call: usize::MAX,
            coalesce: None,
        }
    }

    /// Cuts a call's accounts into slices of at most `accounts` that go through
    /// concurrently (at most [`SLICES_IN_FLIGHT_MAX`]), each published as soon as it is
    /// durable: the projector starts on the first accounts of a large bulk call while later
    /// ones are still being appended. For a remote store; the embedded store commits a
    /// call's accounts in one write transaction and is best left at one slice.
    pub fn with_accounts_per_call(mut self, accounts: usize) -> Self {
        self.accounts_per_call = accounts.max(1);
        self
    }

    /// Remembers the tips its own appends leave, for up to `entries_max` accounts (0: off),
    /// so the next command of an account skips reading its tip where the store allows
    /// ([`Load::known`]). For a long-lived process that books the same accounts again and
    /// again (a bulk ingest, an API instance); a tip another writer moved on costs one
    /// conflict and a reload.
    pub fn with_tip_cache(mut self, entries_max: usize) -> Self {
        self.tips = Arc::new(Tips::new(entries_max));
        self
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
    ///
    /// Calls of this service (and its clones) on the same accounts take turns (see
    /// [`crate::service::locks`]). With [`Self::with_accounts_per_call`], the chunks are
    /// cut into slices of accounts that go through concurrently, each published as soon
    /// as it is durable.
    pub async fn submit_chunks(&self, chunks: Vec<AccountChunk>) -> Submitted {
        let _turns = self.turns.take(chunks.iter().map(|c| &c.account)).await;
        self.submit_taken(chunks).await
    }

    /// [`Self::submit_chunks`] once the turns of the chunks' accounts are held.
    async fn submit_taken(&self, mut chunks: Vec<AccountChunk>) -> Submitted {
        if chunks.len() <= self.accounts_per_call {
            return self.submit_slice(chunks).await;
        }
        let mut slices = Vec::with_capacity(chunks.len() / self.accounts_per_call + 1);
        while !chunks.is_empty() {
            let rest = chunks.split_off(self.accounts_per_call.min(chunks.len()));
            slices.push(std::mem::replace(&mut chunks, rest));
        }
        let parts: Vec<Submitted> = stream::iter(slices)
            .map(|slice| self.submit_slice(slice))
            .buffered(SLICES_IN_FLIGHT_MAX)
            .collect()
            .await;
        let mut all = Submitted {
            outcomes: Vec::new(),
            error: None,
        };
        for part in parts {
            all.outcomes.extend(part.outcomes);
            all.error = all.error.or(part.error);
        }
        all
    }

    /// One slice: book, then publish what was booked.
    async fn submit_slice(&self, chunks: Vec<AccountChunk>) -> Submitted {
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
                let account = &chunks[i].account;
                let before = booked.len();
                let next = settle(account, plan, result, &mut done[i], booked);
                if let Some(last) = booked[before..].last().and_then(|p| p.events().last()) {
                    self.tips.put(
                        account,
                        AccountState {
                            version: last.version,
                            balance: last.balance,
                        },
                    );
                }
                if !matches!(next, Next::Done) {
                    self.tips.forget(account);
                }
                match next {
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
                    attempt: plan.attempt,
                    decided_at: plan.decided_at,
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

    /// Loads (one [`EventStore::load_many`]) and decides the undecided rest of each chunk in
    /// `which`. A tip from the cache is trusted only by plans whose every page carries
    /// events: those are written only at the version they were decided on, so a stale tip
    /// ends in a conflict and a reload. A plan with a page of refusals only (written without a
    /// version condition) is decided again on a tip read now.
    async fn plan_all(
        &self,
        chunks: &[AccountChunk],
        done: &[Vec<CommandOutcome>],
        which: &[usize],
    ) -> Vec<(usize, Result<Plan, StoreError>)> {
        let mut out = Vec::with_capacity(which.len());
        let mut reread = Vec::new();
        let loaded = self.load_rests(chunks, done, which, true).await;
        for (&i, l) in which.iter().zip(loaded) {
            match l {
                Ok((fresh, plan)) if !fresh && plan.pages.iter().any(|p| p.events.is_empty()) => {
                    reread.push(i);
                }
                Ok((_, plan)) => out.push((i, Ok(plan))),
                Err(e) => out.push((i, Err(e))),
            }
        }
        if !reread.is_empty() {
            let loaded = self.load_rests(chunks, done, &reread, false).await;
            out.extend(
                reread
                    .iter()
                    .copied()
                    .zip(loaded.into_iter().map(|l| l.map(|(_, p)| p))),
            );
        }
        out
    }

    /// Loads the undecided rest of each chunk in `which` (tips from the cache if `cached`)
    /// and decides it without writing; whether each tip was read now, and the plan.
    async fn load_rests(
        &self,
        chunks: &[AccountChunk],
        done: &[Vec<CommandOutcome>],
        which: &[usize],
        cached: bool,
    ) -> Vec<Result<(bool, Plan), StoreError>> {
        let now = (self.clock)();
        let loads = which
            .iter()
            .map(|&i| {
                let account = &chunks[i].account;
                let mut txns = Vec::new();
                for c in &chunks[i].commands[done[i].len()..] {
                    txns.push(c.txn_id().clone());
                    txns.extend(c.reverses().cloned());
                }
                Load {
                    account: account.clone(),
                    txns,
                    known: if cached { self.tips.get(account) } else { None },
                }
            })
            .collect::<Vec<_>>();
        let ids: Vec<Vec<TxnId>> = loads.iter().map(|l| l.txns.clone()).collect();
        let loaded = self.store.load_many(loads).await;
        which
            .iter()
            .zip(ids)
            .zip(loaded)
            .map(|((&i, ids), l)| {
                let l = l?;
                if l.fresh {
                    self.tips.put(&chunks[i].account, l.tip);
                }
                let mut outcomes: HashMap<TxnId, TxnOutcome> = ids
                    .into_iter()
                    .zip(l.outcomes)
                    .filter_map(|(id, o)| Some((id, o?)))
                    .collect();
                let commands = &chunks[i].commands[done[i].len()..];
                let (decisions, _) = decide_run(l.tip, &mut outcomes, commands, now, &self.policy);
                Ok((l.fresh, Plan::new(decisions, l.tip.version, now)))
            })
            .collect()
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

impl<S: EventStore, P: EventPublisher> CommandService<S, P> {
    /// [`Self::submit_chunks`] cut into `parts` account-disjoint slices of about equal
    /// command counts, each booked and published on its own task: on a multi-threaded
    /// runtime one slice is decided while the store writes another (the embedded store's
    /// group commit takes the slices waiting for it in one transaction). Outcomes are those
    /// of `submit_chunks`: every account is in one slice, its commands decided in order.
    /// The turns of all the accounts are held until the last slice is done, even if the
    /// caller stops waiting. Each slice is submitted as `submit_chunks` submits a call
    /// (cut again by [`Self::with_accounts_per_call`] if set); one part is `submit_chunks`.
    pub async fn submit_chunks_spread(&self, chunks: Vec<AccountChunk>, parts: usize) -> Submitted {
        if parts <= 1 {
            return match &self.coalesce {
                Some(queue) => coalesced(queue, chunks).await,
                None => self.submit_chunks(chunks).await,
            };
        }
        let held = Arc::new(self.turns.take(chunks.iter().map(|c| &c.account)).await);
        let n = chunks.len();
        // In account order, so each slice's writes fall in one key range of the store's
        // tables: a slice's commit rewrites that range's pages, not pages all over them.
        let mut numbered: Vec<(usize, AccountChunk)> = chunks.into_iter().enumerate().collect();
        numbered.sort_unstable_by(|a, b| a.1.account.cmp(&b.1.account));
        let tasks: Vec<_> = split_by_commands(numbered, parts)
            .into_iter()
            .map(|slice| {
                let (service, held) = (self.clone(), held.clone());
                let (places, slice): (Vec<usize>, Vec<AccountChunk>) = slice.into_iter().unzip();
                let task = tokio::spawn(async move {
                    let submitted = service.submit_taken(slice).await;
                    drop(held);
                    submitted
                });
                (places, task)
            })
            .collect();
        let mut all = Submitted {
            outcomes: vec![Vec::new(); n],
            error: None,
        };
        for (places, task) in tasks {
            let part = task.await.unwrap_or_else(|e| Submitted {
                outcomes: Vec::new(),
                error: Some(CommandError::Store(StoreError::Unavailable(format!(
                    "a booking task stopped: {e}"
                )))),
            });
            for (place, outcomes) in places.into_iter().zip(part.outcomes) {
                all.outcomes[place] = outcomes;
            }
            all.error = all.error.or(part.error);
        }
        all
    }
}

impl<S: EventStore, P: EventPublisher> CommandService<S, P> {
    /// Merges concurrent single-part calls of [`Self::submit_chunks_spread`] (HTTP bulk
    /// bodies) into one call, in arrival order, up to [`COALESCED_COMMANDS_MAX`] commands:
    /// bodies that share accounts otherwise wait for each other's turns, one body per
    /// durable commit. A merged call decides an account's commands in arrival order, so
    /// each caller gets the outcomes it would get had the calls run one after another in
    /// that order (a txn id in two merged bodies: the first books it, the second is its
    /// duplicate). Spawns the task that merges (call inside a Tokio runtime); it ends when
    /// the last clone of the service is dropped.
    pub fn with_coalescing(mut self) -> Self {
        let (queue, calls) = tokio::sync::mpsc::unbounded_channel();
        let mut merger = self.clone();
        merger.coalesce = None;
        tokio::spawn(merge_calls(merger, calls));
        self.coalesce = Some(queue);
        self
    }
}

async fn coalesced(
    queue: &tokio::sync::mpsc::UnboundedSender<Coalesced>,
    chunks: Vec<AccountChunk>,
) -> Submitted {
    let (reply, answer) = tokio::sync::oneshot::channel();
    let gone = || Submitted {
        outcomes: Vec::new(),
        error: Some(CommandError::Store(StoreError::Unavailable(
            "the bulk merging task stopped".into(),
        ))),
    };
    if queue.send((chunks, reply)).is_err() {
        return gone();
    }
    answer.await.unwrap_or_else(|_| gone())
}

/// Takes the calls waiting, merges them, books them in one call (spread over slices when
/// large), and answers each with its own part.
async fn merge_calls<S: EventStore, P: EventPublisher>(
    service: CommandService<S, P>,
    mut calls: tokio::sync::mpsc::UnboundedReceiver<Coalesced>,
) {
    while let Some(first) = calls.recv().await {
        let commands = |c: &Coalesced| c.0.iter().map(|c| c.commands.len()).sum::<usize>();
        let mut size = commands(&first);
        let mut batch = vec![first];
        while size < COALESCED_COMMANDS_MAX {
            match calls.try_recv() {
                Ok(call) => {
                    size += commands(&call);
                    batch.push(call);
                }
                Err(_) => break,
            }
        }
        // Each call's chunk `c` is merged chunk `at`, commands `from..from + len`.
        let mut merged: Vec<AccountChunk> = Vec::new();
        let mut index: HashMap<AccountId, usize> = HashMap::new();
        let mut places: Vec<Vec<(usize, usize, usize)>> = Vec::with_capacity(batch.len());
        let mut replies = Vec::with_capacity(batch.len());
        for (chunks, reply) in batch {
            let mut mine = Vec::with_capacity(chunks.len());
            for chunk in chunks {
                let at = *index.entry(chunk.account.clone()).or_insert_with(|| {
                    merged.push(AccountChunk {
                        account: chunk.account.clone(),
                        commands: Vec::new(),
                    });
                    merged.len() - 1
                });
                let from = merged[at].commands.len();
                mine.push((at, from, chunk.commands.len()));
                merged[at].commands.extend(chunk.commands);
            }
            places.push(mine);
            replies.push(reply);
        }
        let parts = crate::service::ingest::parts_for(size);
        let submitted = Box::pin(service.submit_chunks_spread(merged, parts)).await;
        for (mine, reply) in places.into_iter().zip(replies) {
            let mut complete = true;
            let outcomes: Vec<Vec<CommandOutcome>> = mine
                .iter()
                .map(|&(at, from, len)| {
                    let have = submitted.outcomes.get(at).map_or(&[][..], |o| &o[..]);
                    let part = have.get(from..).unwrap_or_default();
                    let part = &part[..len.min(part.len())];
                    complete &= part.len() == len;
                    part.to_vec()
                })
                .collect();
            // The failure is this call's only if some of its commands have no outcome.
            let error = submitted.error.clone().filter(|_| !complete);
            let _ = reply.send(Submitted { outcomes, error }); // a caller that left
        }
    }
}

/// `chunks` in order, cut into at most `parts` runs of about equal command counts (a chunk
/// is never split).
fn split_by_commands(
    chunks: Vec<(usize, AccountChunk)>,
    parts: usize,
) -> Vec<Vec<(usize, AccountChunk)>> {
    let total: usize = chunks.iter().map(|(_, c)| c.commands.len()).sum();
    let per = total.div_ceil(parts.max(1)).max(1);
    let mut out = Vec::with_capacity(parts.max(1));
    let mut slice = Vec::new();
    let mut size = 0;
    for chunk in chunks {
        size += chunk.1.commands.len();
        slice.push(chunk);
        if size >= per {
            out.push(std::mem::take(&mut slice));
            size = 0;
        }
    }
    if !slice.is_empty() {
        out.push(slice);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(name: &str, commands: usize) -> AccountChunk {
        let at = Timestamp::from_millis(1_793_523_600_000).expect("a valid time");
        AccountChunk {
            account: AccountId::new(name).expect("a valid id"),
            commands: (0..commands)
                .map(|i| Command::Deposit {
                    txn_id: TxnId::new(format!("{name}-{i}")).expect("a valid id"),
                    amount: crate::domain::Money(1),
                    occurred_at: at,
                })
                .collect(),
        }
    }

    /// Slices keep every chunk once, in order, none empty, and at most `parts` of them.
    #[test]
    fn slices_cover_the_chunks_in_order() {
        let sizes = [5, 1, 1, 9, 2, 2, 2, 30, 1, 1, 4];
        for parts in [1, 2, 3, 4, 7, 11, 50] {
            let chunks: Vec<(usize, AccountChunk)> = sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| (i, chunk(&format!("a{i}"), n)))
                .collect();
            let slices = split_by_commands(chunks, parts);
            assert!(
                !slices.is_empty() && slices.len() <= parts,
                "{parts}: {}",
                slices.len()
            );
            assert!(slices.iter().all(|s| !s.is_empty()));
            let names: Vec<String> = slices
                .iter()
                .flatten()
                .map(|(_, c)| c.account.to_string())
                .collect();
            let expected: Vec<String> = (0..sizes.len()).map(|i| format!("a{i}")).collect();
            assert_eq!(names, expected, "parts {parts}");
        }
        assert!(split_by_commands(Vec::new(), 4).is_empty());
    }
}
