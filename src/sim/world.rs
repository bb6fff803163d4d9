//! One simulated run of the whole pipeline: clients → `CommandService` → (faulty) event
//! store and stream → mapping → `Projector` instances → (faulty) snapshot store, with
//! crashes that drop every in-memory thing (the running calls, the caches, the mapping's
//! positions, and on the embedded topology the stream itself) and restarts that run
//! catch-up, as `tally serve` does. Everything runs on one thread in paused tokio time, so
//! the interleaving is decided by the seed alone.
//!
//! Two phases, as in TigerBeetle's VOPR: a storm (the workload under faults), then a
//! heal (faults off, unanswered commands resent, the stream drained, the backstop run),
//! after which every store is read for the checker.
//!
//! Must never: let a call of a crashed incarnation take another step, or read a clock.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::{AccountId, Command, Timestamp};
use crate::ports::StoreError;
use crate::service::command::CommandService;
use crate::service::metrics::Metrics;
use crate::service::projector::Projector;
use crate::sim::backend::Backend;
use crate::sim::calls::{Answer, attempts_of, outcome, run_op};
use crate::sim::config::{Config, Draw, Topology};
use crate::sim::faults::{Chaos, Faulty};
use crate::sim::history::{Attempt, Outcome, RESUBMITTER, Violation};
use crate::sim::mapping::{Acks, Mapping, Settings};
use crate::sim::stream::{SimPublisher, SimStream};
use crate::sim::workload::Op;

type Events<B> = Faulty<<B as Backend>::Events>;
type Snaps<B> = Faulty<<B as Backend>::Snapshots>;
type Quar<B> = Faulty<<B as Backend>::Quarantine>;
type SimProjector<B> = Projector<Events<B>, Snaps<B>, Quar<B>>;

/// Ledger time at the start of every run: 2026-06-01T00:00:00Z, plus simulated time.
const LEDGER_EPOCH_MS: i64 = 1_780_272_000_000;
/// Longest the healed system may take to drain (simulated time).
const DRAIN_LIMIT: Duration = Duration::from_secs(3_600);

/// One process lifetime: its services and its mapping.
struct Incarnation<B: Backend> {
    /// One command service per front end (the API Lambda's concurrent instances, each with
    /// its own per-account turns and tip cache): clients spread over them, so calls on one
    /// account race across processes as they do in production.
    commands: Vec<CommandService<Events<B>, SimPublisher>>,
    instances: Vec<Arc<SimProjector<B>>>,
    mapping: Arc<Mapping<Events<B>, Snaps<B>, Quar<B>>>,
}

/// Everything the checker needs from a finished run.
#[derive(Default)]
pub struct Observed {
    pub attempts: Vec<Attempt>,
    pub resubmissions: Vec<(Attempt, Outcome)>,
    pub notes: Vec<Violation>,
    pub metrics: Vec<Arc<Metrics>>,
    pub acks: Acks,
    pub catch_ups: u64,
    pub crashes: u64,
    pub published: Vec<Vec<u8>>,
    pub poison: std::collections::BTreeSet<u64>,
    /// Events, snapshot versions and quarantined records that landed while their caller
    /// was told the write timed out (so no counter saw them).
    pub silent_events: u64,
    pub silent_versions: u64,
    pub silent_quarantined: u64,
}

/// A run in progress.
pub struct World<B: Backend> {
    pub config: Config,
    pub backend: B,
    pub chaos: Arc<Chaos>,
    stream: Arc<SimStream>,
    acks: Arc<Mutex<Acks>>,
    current: Mutex<Option<Arc<Incarnation<B>>>>,
    crashes_seen: CrashSignal,
    metrics: Mutex<Vec<Arc<Metrics>>>,
    attempts: Mutex<Vec<Attempt>>,
    notes: Mutex<Vec<Violation>>,
    origin: tokio::time::Instant,
    catch_ups: AtomicU64,
    crashes: AtomicU64,
    next_call: AtomicU64,
}

/// Tells the running calls that the process died. Not `tokio::sync::watch`: its waiters
/// are spread over notifiers chosen at random, so their wake order would not replay.
#[derive(Default)]
struct CrashSignal {
    epoch: AtomicU64,
    notify: Notify,
}

impl CrashSignal {
    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn raise(&self) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once a crash happens after `epoch`.
    async fn after(&self, epoch: u64) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.epoch() != epoch {
                return;
            }
            notified.await;
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl<B: Backend> World<B> {
    /// Call inside the simulation's runtime (it reads the paused clock).
    pub fn new(config: Config, backend: B) -> Arc<World<B>> {
        let chaos = Chaos::new(config.seed, config.faults);
        let stream = SimStream::new(config.shards, chaos.clone());
        Arc::new(World {
            config,
            backend,
            chaos,
            stream,
            acks: Arc::default(),
            current: Mutex::new(None),
            crashes_seen: CrashSignal::default(),
            metrics: Mutex::default(),
            attempts: Mutex::default(),
            notes: Mutex::default(),
            origin: tokio::time::Instant::now(),
            catch_ups: AtomicU64::new(0),
            crashes: AtomicU64::new(0),
            next_call: AtomicU64::new(0),
        })
    }

    pub fn note(&self, v: Violation) {
        lock(&self.notes).push(v);
    }

    fn current(&self) -> Option<Arc<Incarnation<B>>> {
        lock(&self.current).clone()
    }

    fn build(self: &Arc<Self>) -> Arc<Incarnation<B>> {
        let metrics = Arc::new(Metrics::default());
        lock(&self.metrics).push(metrics.clone());
        let events = Faulty::new(self.backend.events(), self.chaos.clone());
        let snapshots = Faulty::new(self.backend.snapshots(), self.chaos.clone());
        let quarantine = Faulty::new(self.backend.quarantine(), self.chaos.clone());
        let instances: Vec<Arc<SimProjector<B>>> = (0..self.config.instances.max(1))
            .map(|_| {
                Arc::new(Projector::new(
                    events.clone(),
                    snapshots.clone(),
                    quarantine.clone(),
                    self.config.cache_entries,
                    metrics.clone(),
                ))
            })
            .collect();
        let origin = self.origin;
        let clock = Arc::new(move || {
            let ms = LEDGER_EPOCH_MS + origin.elapsed().as_millis() as i64;
            Timestamp::from_millis(ms).unwrap_or(Timestamp::MAX)
        });
        let commands = (0..self.config.instances.max(1))
            .map(|_| {
                CommandService::new(
                    events.clone(),
                    SimPublisher(self.stream.clone()),
                    self.config.policy,
                    self.config.buckets,
                    clock.clone(),
                )
                .with_metrics(metrics.clone())
            })
            .collect();
        let settings = Settings {
            batch_size: self.config.batch_size,
            window: Duration::from_millis(self.config.window_ms),
            retries_max: self.config.retries_max,
            parallelization: self.config.parallelization,
        };
        let mapping = Mapping::new(
            self.stream.clone(),
            instances.clone(),
            settings,
            self.chaos.clone(),
            self.acks.clone(),
        );
        Arc::new(Incarnation {
            commands,
            instances,
            mapping,
        })
    }

    /// Starts a process: catch-up (embedded: what the lost stream held), then the mapping.
    pub async fn start(self: &Arc<Self>, catch_up: bool) -> bool {
        for _ in 0..200 {
            let inc = self.build();
            if catch_up {
                self.catch_ups.fetch_add(1, Ordering::Relaxed);
                match inc.instances[0].catch_up().await {
                    Ok(_) => {}
                    Err(StoreError::Throttled | StoreError::Unavailable(_)) => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                    Err(e) => {
                        self.note(Violation::new(
                            None,
                            format!("restart failed: catch-up: {e}"),
                        ));
                        return false;
                    }
                }
            }
            inc.mapping.start();
            *lock(&self.current) = Some(inc);
            return true;
        }
        self.note(Violation::new(
            None,
            "restart failed: catch-up kept failing",
        ));
        false
    }

    /// Kills the process: every running call and task is dropped where it stands.
    fn crash(&self) {
        let old = lock(&self.current).take();
        self.crashes_seen.raise();
        self.crashes.fetch_add(1, Ordering::Relaxed);
        if let Some(inc) = old {
            inc.mapping.stop();
        }
        if self.config.topology == Topology::Embedded {
            self.stream.reset();
        }
    }

    /// Crashes and restarts the process at random moments of the storm.
    pub async fn crasher(self: Arc<Self>) {
        for _ in 0..self.config.faults.crashes {
            let wait = self.chaos.with_rng(|r| r.between(5, 400));
            tokio::time::sleep(Duration::from_millis(wait)).await;
            self.crash();
            let down = self.chaos.with_rng(|r| r.between(1, 50));
            tokio::time::sleep(Duration::from_millis(down)).await;
            let embedded = self.config.topology == Topology::Embedded;
            if !self.start(embedded).await {
                return;
            }
        }
    }

    /// Splits and merges shards during the storm.
    pub async fn resharder(self: Arc<Self>) {
        for _ in 0..self.config.faults.reshards {
            let wait = self.chaos.with_rng(|r| r.between(5, 300));
            tokio::time::sleep(Duration::from_millis(wait)).await;
            self.stream.reshard();
        }
    }

    /// One client: its operations in order, each retried a few times while unanswered.
    pub async fn client(self: Arc<Self>, id: usize, ops: Vec<Op>) {
        for op in &ops {
            let think = self.chaos.with_rng(|r| r.below(20));
            tokio::time::sleep(Duration::from_millis(think)).await;
            for attempt in 0..4u32 {
                let Some(inc) = self.current() else {
                    tokio::time::sleep(Duration::from_millis(25)).await;
                    continue;
                };
                let epoch = self.crashes_seen.epoch();
                let call = self.next_call.fetch_add(1, Ordering::Relaxed);
                let answer = tokio::select! {
                    biased;
                    () = self.crashes_seen.after(epoch) => None,
                    a = run(&inc, id, op) => Some(a),
                };
                drop(inc);
                if self.record(id, call, op, answer) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
            }
        }
    }

    /// Records what a call returned; true if it was answered (no retry needed).
    fn record(&self, client: usize, call: u64, op: &Op, answer: Option<Answer>) -> bool {
        let (attempts, answered, notes) = attempts_of(client, call, op, answer);
        for a in &attempts {
            self.chaos.note(a.outcome_code());
        }
        lock(&self.attempts).extend(attempts);
        lock(&self.notes).extend(notes);
        answered
    }

    /// The heal: faults off, unanswered commands resent, the stream drained. Returns the
    /// snapshots as the drained stream left them (before the backstop).
    pub async fn heal(self: &Arc<Self>) -> Option<BTreeMap<String, crate::domain::Snapshot>> {
        self.chaos.heal();
        if self.current().is_none() && !self.start(true).await {
            return None;
        }
        let inc = self.current()?;
        let unanswered: Vec<(AccountId, Command)> = lock(&self.attempts)
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Unknown(_)))
            .map(|a| (a.account.clone(), a.command.clone()))
            .collect();
        for (account, command) in unanswered {
            let call = self.next_call.fetch_add(1, Ordering::Relaxed);
            let op = Op::Single { account, command };
            let answer = run(&inc, RESUBMITTER, &op).await;
            self.record(RESUBMITTER, call, &op, Some(answer));
        }
        if !self.drain(&inc).await {
            return None;
        }
        Some(self.snapshots().await)
    }

    async fn drain(&self, inc: &Incarnation<B>) -> bool {
        let started = tokio::time::Instant::now();
        while !inc.mapping.drained() {
            if started.elapsed() > DRAIN_LIMIT {
                self.note(Violation::new(
                    None,
                    "the healed stream did not drain within an hour",
                ));
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        true
    }

    /// The backstop once healed, then every answered command sent again: each must come
    /// back as the same event. Stops the mapping.
    pub async fn finish(self: &Arc<Self>) -> Vec<(Attempt, Outcome)> {
        let Some(inc) = self.current() else {
            return Vec::new();
        };
        if let Err(e) = inc.instances[0].catch_up().await {
            self.note(Violation::new(
                None,
                format!("the final catch-up failed: {e}"),
            ));
        }
        let answered: Vec<Attempt> = lock(&self.attempts)
            .iter()
            .filter(|a| matches!(a.outcome, Outcome::Booked(_) | Outcome::Duplicate(_)))
            .cloned()
            .collect();
        let mut again = Vec::with_capacity(answered.len());
        for a in answered {
            let o = inc.commands[0]
                .submit(a.account.clone(), a.command.clone())
                .await;
            again.push((
                a,
                o.map_or_else(|e| Outcome::Unknown(e.to_string()), outcome),
            ));
        }
        self.drain(&inc).await;
        inc.mapping.stop();
        again
    }

    /// Every stored snapshot of an account with events or of the workload.
    pub async fn snapshots(&self) -> BTreeMap<String, crate::domain::Snapshot> {
        crate::sim::snapshots_of(
            &self.backend.events(),
            &self.backend.snapshots(),
            self.config.accounts,
        )
        .await
    }

    pub fn observed(&self, resubmissions: Vec<(Attempt, Outcome)>) -> Observed {
        Observed {
            attempts: std::mem::take(&mut lock(&self.attempts)),
            resubmissions,
            notes: std::mem::take(&mut lock(&self.notes)),
            metrics: lock(&self.metrics).clone(),
            acks: std::mem::take(&mut lock(&self.acks)),
            catch_ups: self.catch_ups.load(Ordering::Relaxed),
            crashes: self.crashes.load(Ordering::Relaxed),
            published: self.stream.published(),
            poison: self.stream.poison(),
            silent_events: self.chaos.silent_events.load(Ordering::Relaxed),
            silent_versions: self.chaos.silent_versions.load(Ordering::Relaxed),
            silent_quarantined: self.chaos.silent_quarantined.load(Ordering::Relaxed),
        }
    }
}

/// Runs `op` of client `client` on that client's front end.
async fn run<B: Backend>(inc: &Incarnation<B>, client: usize, op: &Op) -> Answer {
    run_op(&inc.commands[client % inc.commands.len()], op).await
}
