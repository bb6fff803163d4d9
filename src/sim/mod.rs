//! `tally sim`: a deterministic simulator of the whole pipeline, in the spirit of
//! TigerBeetle's VOPR and FoundationDB's simulation testing. One `u64` seed decides the
//! workload, the pipeline's settings, every fault and the interleaving of every task; the
//! same seed on the same commit replays the same run, and a failure prints the one command
//! that reproduces it.
//!
//! The real services run under test — `CommandService`, `ingest`, the `Projector` and its
//! catch-up, `audit::verify` — over either in-memory models of the DynamoDB tables (the
//! port contracts of DESIGN.md) or the real embedded store, behind a port layer that
//! injects faults ([`faults`]), with a Kinesis-like stream ([`stream`]) and Lambda's event
//! source mapping ([`mapping`]). A run is a storm then a heal ([`world`]); the checker
//! ([`check`]) judges the stores against the reference model ([`reference`]) and what the
//! clients were told. [`stress`] runs the real embedded backend on real threads (not
//! replayable, seeded workload) to reach races a single thread cannot.
//!
//! Must never: be reachable from the services (it only drives them), or read a clock or
//! entropy that the seed does not decide.

pub mod backend;
pub mod calls;
pub mod check;
pub mod config;
pub mod faults;
pub mod history;
pub mod mapping;
pub mod model;
pub mod reference;
pub mod runner;
pub mod stream;
pub mod stress;
pub mod verdict;
pub mod views;
pub mod workload;
pub mod world;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::ports::{EventStore, SnapshotStore};
use crate::service::audit;
use crate::sim::backend::{Backend, BackendKind, Embedded, Models};
use crate::sim::check::Stored;
use crate::sim::config::Config;
use crate::sim::history::Violation;
use crate::sim::world::World;

pub use runner::{SimArgs, main};

/// How a seed is run.
#[derive(Debug, Clone, Copy, Default)]
pub struct Options {
    /// `None`: the seed chooses (a third of the seeds run on the embedded store).
    pub backend: Option<BackendKind>,
}

/// What one seed did.
#[derive(Debug, Clone)]
pub struct SeedReport {
    pub seed: u64,
    pub config: Config,
    pub backend: BackendKind,
    pub violations: Vec<Violation>,
    /// A fingerprint of everything that happened: equal for two runs of one seed.
    pub trace: u64,
    pub commands: usize,
    pub events: u64,
    pub injected: BTreeMap<&'static str, u64>,
    /// What the run exercised (outcomes by kind, resends, files, crashes, give-ups…), so
    /// a budget's totals show the paths were taken.
    pub coverage: BTreeMap<&'static str, u64>,
}

impl SeedReport {
    /// What fails this seed: every violation (no open defect is exempt).
    pub fn failures(&self) -> Vec<&Violation> {
        self.violations.iter().collect()
    }
}

/// The backend a seed runs on unless told.
pub fn backend_of(seed: u64) -> BackendKind {
    if seed % 3 == 2 {
        BackendKind::Embedded
    } else {
        BackendKind::Model
    }
}

/// Runs one seed on this thread: a current-thread runtime in paused time.
pub fn run_seed(seed: u64, options: Options) -> SeedReport {
    match options.backend.unwrap_or_else(|| backend_of(seed)) {
        BackendKind::Model => run_on(seed, BackendKind::Model, || Ok(Models::default())),
        BackendKind::Embedded => run_on(seed, BackendKind::Embedded, || {
            Embedded::in_memory().map_err(|e| format!("cannot open the embedded store: {e}"))
        }),
    }
}

/// Runs one seed on the stores `make` opens (tests use it to run a deliberately broken
/// store and prove the checker notices).
pub fn run_on<B: Backend>(
    seed: u64,
    kind: BackendKind,
    make: impl FnOnce() -> Result<B, String>,
) -> SeedReport {
    let config = Config::from_seed(seed);
    crate::entropy::seed_thread(Some(seed));
    runner::capture_panics(true);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build();
    let result = runtime.map_err(|e| e.to_string()).and_then(|rt| {
        let run = std::panic::AssertUnwindSafe(async {
            match make() {
                Ok(backend) => simulate(config.clone(), backend).await,
                Err(e) => Err(e),
            }
        });
        std::panic::catch_unwind(|| rt.block_on(run))
            .unwrap_or_else(|p| Err(runner::panic_text(&p)))
    });
    let panics = runner::capture_panics(false);
    crate::entropy::seed_thread(None);
    let mut report = result.unwrap_or_else(|e| Outcome {
        violations: vec![Violation::new(None, e)],
        ..Outcome::default()
    });
    for p in panics {
        report
            .violations
            .push(Violation::new(None, format!("panic: {p}")));
    }
    SeedReport {
        seed,
        config,
        backend: kind,
        violations: report.violations,
        trace: report.trace,
        commands: report.commands,
        events: report.events,
        injected: report.injected,
        coverage: report.coverage,
    }
}

#[derive(Default)]
struct Outcome {
    violations: Vec<Violation>,
    trace: u64,
    commands: usize,
    events: u64,
    injected: BTreeMap<&'static str, u64>,
    coverage: BTreeMap<&'static str, u64>,
}

async fn simulate<B: Backend>(config: Config, backend: B) -> Result<Outcome, String> {
    let policy = config.policy;
    let ops = workload::generate(&config);
    let commands = ops.iter().flatten().count();
    let world = World::new(config, backend);
    if !world.start(true).await {
        return Err("the first start failed".into());
    }
    let mut tasks: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(i, ops)| tokio::spawn(world.clone().client(i, ops)))
        .collect();
    tasks.push(tokio::spawn(world.clone().crasher()));
    tasks.push(tokio::spawn(world.clone().resharder()));
    for t in tasks {
        if let Err(e) = t.await {
            world.note(Violation::new(
                None,
                format!("a task ended abnormally: {e}"),
            ));
        }
    }
    let drained = match world.heal().await {
        Some(d) => d,
        None => world.snapshots().await,
    };
    let resubmissions = world.finish().await;
    let stored = read(&world, drained).await;
    let observed = world.observed(resubmissions);
    let found = check::check(policy, &observed, &stored);
    let coverage = coverage(&observed);
    let violations = verdict::attribute(&world.chaos.breaches(), found);
    let events: u64 = stored.events.values().map(|e| e.len() as u64).sum();
    world.chaos.note(events);
    for s in stored.snapshots.values() {
        world.chaos.note(s.version ^ s.balance.minor() as u64);
    }
    if let (Some(log), Some(path)) = (world.chaos.take_log(), std::env::var_os("TALLY_SIM_LOG")) {
        let _ = std::fs::write(path, log.join("\n"));
    }
    Ok(Outcome {
        violations,
        trace: world.chaos.trace(),
        commands,
        events,
        injected: world.chaos.injected(),
        coverage,
    })
}

/// Everything the stores hold, read through their ports (no faults).
async fn read<B: Backend>(
    world: &Arc<World<B>>,
    drained: BTreeMap<String, crate::domain::Snapshot>,
) -> Stored {
    let (stored, notes) = read_stores(
        &world.backend.events(),
        &world.backend.snapshots(),
        world.backend.quarantined(),
        drained,
        world.config.accounts,
    )
    .await;
    for n in notes {
        world.note(n);
    }
    for p in world.backend.parked() {
        world.note(Violation::new(
            Some(&p.account),
            format!(
                "parked at version {} ({}/{}): {}; a workload's events always fold",
                p.version, p.shard, p.sequence_number, p.error
            ),
        ));
    }
    stored
}

/// Reads every account's events, every snapshot, and runs `verify`.
pub async fn read_stores<E: EventStore, S: SnapshotStore>(
    store: &E,
    snapshots: &S,
    quarantined: Vec<crate::ports::Quarantined>,
    drained: BTreeMap<String, crate::domain::Snapshot>,
    accounts: usize,
) -> (Stored, Vec<Violation>) {
    let mut events = BTreeMap::new();
    let mut notes = Vec::new();
    let fail = |e: String| Violation::new(None, format!("reading the event store failed: {e}"));
    match store.accounts(None, usize::MAX).await {
        Ok(list) => {
            for (account, tip) in list {
                match store.read(&account, 1, tip).await {
                    Ok(e) => {
                        events.insert(account, e);
                    }
                    Err(e) => notes.push(fail(format!("{account}: {e}"))),
                }
            }
        }
        Err(e) => notes.push(fail(e.to_string())),
    }
    let verify = audit::verify(store, snapshots)
        .await
        .map_err(|e| e.to_string());
    let stored = Stored {
        events,
        drained,
        snapshots: snapshots_of(store, snapshots, accounts).await,
        quarantined,
        verify,
    };
    (stored, notes)
}

/// Every stored snapshot of an account with events or of the workload (`a0`…).
pub async fn snapshots_of<E: EventStore, S: SnapshotStore>(
    store: &E,
    snapshots: &S,
    accounts: usize,
) -> BTreeMap<String, crate::domain::Snapshot> {
    let mut names: Vec<String> = (0..accounts).map(|i| format!("a{i}")).collect();
    if let Ok(stored) = store.accounts(None, usize::MAX).await {
        names.extend(stored.into_iter().map(|(a, _)| a.to_string()));
    }
    names.sort();
    names.dedup();
    let found = snapshots.get_many(names.clone()).await.unwrap_or_default();
    names
        .into_iter()
        .zip(found)
        .filter_map(|(n, s)| Some((n, s?)))
        .collect()
}

/// Counts of what a run exercised.
fn coverage(o: &world::Observed) -> BTreeMap<&'static str, u64> {
    use crate::sim::history::Outcome;
    let mut c: BTreeMap<&'static str, u64> = BTreeMap::new();
    for a in &o.attempts {
        let kind = match &a.outcome {
            Outcome::Booked(_) => "booked",
            Outcome::Duplicate(_) => "duplicate",
            Outcome::Rejected(_) => "refused",
            Outcome::ReplayedRefusal(_) => "replayed refusal",
            Outcome::Reused { .. } => "reused id",
            Outcome::Invalid(_) => "invalid",
            Outcome::Unknown(why) if why == "bulk file" => "via file",
            Outcome::Unknown(_) => "unanswered",
        };
        *c.entry(kind).or_default() += 1;
    }
    c.insert("sent again", o.resubmissions.len() as u64);
    c.insert("crashes", o.crashes);
    c.insert("catch-ups", o.catch_ups);
    c.insert("batches", o.acks.batches);
    c.insert("records given up", o.acks.given_up);
    c.insert("poison acknowledged", o.acks.poison.len() as u64);
    c
}
