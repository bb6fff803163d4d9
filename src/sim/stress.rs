//! The seeded stress mode (`tally sim --stress`): the production embedded wiring — the
//! redb store (in memory) with its `spawn_blocking` appends, the in-process stream and its
//! consumers, the projector — on a multi-threaded runtime, hammered by the seed's workload
//! tuned for contention (few accounts, multi-page chunks, many clients). Real threads are
//! not replayable: the workload is, the interleaving is not. This is what reaches races
//! inside the store that one simulated thread cannot (issue 8, defect 1).
//!
//! No faults are injected; the port layer only watches the contracts. Must never: be
//! mistaken for a deterministic run (its reports say so).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::adapters::embedded::EmbeddedStore;
use crate::adapters::embedded::stream::{Consumers, EmbeddedStream, spawn_consumers};
use crate::domain::Snapshot;
use crate::service::command::{CommandOutcome, CommandService, system_clock};
use crate::service::metrics::Metrics;
use crate::service::projector::Projector;
use crate::sim::backend::BackendKind;
use crate::sim::calls::{attempts_of, run_op};
use crate::sim::config::{Config, Faults};
use crate::sim::faults::{Chaos, Faulty};
use crate::sim::history::{Attempt, Outcome, RESUBMITTER, Violation};
use crate::sim::world::Observed;
use crate::sim::{SeedReport, read_stores, snapshots_of, workload};
use crate::sim::{check, verdict};

/// Longest a drain may take before the run reports it.
const DRAIN_LIMIT: Duration = Duration::from_secs(60);

/// The seed's settings, bent towards contention on the append path.
fn tune(mut c: Config) -> Config {
    c.accounts = c.accounts.min(4);
    c.clients = c.clients.max(4);
    c.bulk_share = 0.8;
    c.chunk_max = 70;
    c.shared_ids = c.shared_ids.min(0.1);
    c.faults = Faults::default();
    // The embedded mapping retries a failing record with backoff up to 0.6 s; an account
    // corrupted by a race fails every record, so keep the retries few.
    c.retries_max = c.retries_max.min(2);
    c
}

/// Runs one stress seed.
pub fn run(seed: u64) -> SeedReport {
    let config = tune(Config::from_seed(seed));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let (violations, commands, events) = match runtime {
        Ok(rt) => rt.block_on(stress(config.clone())),
        Err(e) => (vec![Violation::new(None, e.to_string())], 0, 0),
    };
    SeedReport {
        seed,
        config,
        backend: BackendKind::Embedded,
        violations,
        trace: 0,
        commands,
        events,
        injected: Default::default(),
        coverage: Default::default(),
    }
}

/// The production embedded wiring, with the event store behind a contract-watching port.
struct Pipeline {
    store: EmbeddedStore,
    chaos: Arc<Chaos>,
    metrics: Arc<Metrics>,
    projector: Arc<Projector<EmbeddedStore, EmbeddedStore, EmbeddedStore>>,
    consumers: Consumers,
    commands: CommandService<Faulty<EmbeddedStore>, Arc<EmbeddedStream>>,
}

/// What the clients sent and were told, and what went wrong on the way.
#[derive(Default)]
struct Record {
    attempts: Mutex<Vec<Attempt>>,
    notes: Mutex<Vec<Violation>>,
}

impl Record {
    fn add(&self, (attempts, _, notes): (Vec<Attempt>, bool, Vec<Violation>)) {
        lock(&self.attempts).extend(attempts);
        lock(&self.notes).extend(notes);
    }

    fn note(&self, what: impl Into<String>) {
        lock(&self.notes).push(Violation::new(None, what));
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn pipeline(config: &Config, store: EmbeddedStore) -> Pipeline {
    let chaos = Chaos::new(config.seed, Faults::default());
    chaos.heal();
    let metrics = Arc::new(Metrics::default());
    let stream = EmbeddedStream::new(config.shards, metrics.clone());
    let projector = Arc::new(Projector::new(
        store.clone(),
        store.clone(),
        store.clone(),
        config.cache_entries,
        metrics.clone(),
    ));
    let mapping = crate::adapters::embedded::stream::Mapping {
        batch_size: config.batch_size,
        window: Duration::from_millis(1),
        retries_max: config.retries_max,
    };
    let consumers = spawn_consumers(stream.clone(), projector.clone(), mapping);
    let commands = CommandService::new(
        Faulty::new(store.clone(), chaos.clone()),
        stream,
        config.policy,
        config.buckets,
        system_clock(),
    )
    .with_metrics(metrics.clone());
    Pipeline {
        store,
        chaos,
        metrics,
        projector,
        consumers,
        commands,
    }
}

/// Every client at once, each sending its operations in order.
async fn storm(p: &Pipeline, record: &Arc<Record>, ops: Vec<Vec<workload::Op>>) {
    let tasks: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(client, ops)| {
            let (commands, record) = (p.commands.clone(), record.clone());
            tokio::spawn(async move {
                for (k, op) in ops.iter().enumerate() {
                    let call = (client as u64) << 32 | k as u64;
                    let answer = run_op(&commands, op).await;
                    record.add(attempts_of(client, call, op, Some(answer)));
                }
            })
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            record.note(format!("a client ended abnormally: {e}"));
        }
    }
}

/// Unanswered commands sent again, the stream drained; returns the drained snapshots.
async fn heal(p: &Pipeline, record: &Record, accounts: usize) -> BTreeMap<String, Snapshot> {
    let unanswered: Vec<Attempt> = lock(&record.attempts)
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Unknown(_)))
        .cloned()
        .collect();
    for a in unanswered {
        let op = workload::Op::Single {
            account: a.account,
            command: a.command,
        };
        let answer = run_op(&p.commands, &op).await;
        record.add(attempts_of(RESUBMITTER, u64::MAX, &op, Some(answer)));
    }
    if tokio::time::timeout(DRAIN_LIMIT, p.consumers.drain())
        .await
        .is_err()
    {
        record.note("the stream did not drain within 60 s");
    }
    snapshots_of(&p.store, &p.store, accounts).await
}

/// The backstop, then every answered command sent again.
async fn finish(p: &Pipeline, record: &Record) -> Vec<(Attempt, Outcome)> {
    if let Err(e) = p.projector.catch_up().await {
        record.note(format!("the final catch-up failed: {e}"));
    }
    let answered: Vec<Attempt> = lock(&record.attempts)
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Booked(_) | Outcome::Duplicate(_)))
        .cloned()
        .collect();
    let mut again = Vec::with_capacity(answered.len());
    for a in answered {
        let o = match p
            .commands
            .submit(a.account.clone(), a.command.clone())
            .await
        {
            Ok(CommandOutcome::Duplicate(e)) => Outcome::Duplicate(e),
            Ok(other) => Outcome::Unknown(format!("{other:?}")),
            Err(e) => Outcome::Unknown(e.to_string()),
        };
        again.push((a, o));
    }
    let _ = tokio::time::timeout(DRAIN_LIMIT, p.consumers.drain()).await;
    again
}

async fn stress(config: Config) -> (Vec<Violation>, usize, u64) {
    let store = match EmbeddedStore::in_memory() {
        Ok(s) => s,
        Err(e) => return (vec![Violation::new(None, e.to_string())], 0, 0),
    };
    let p = pipeline(&config, store);
    let ops = workload::generate(&config);
    let n = ops.iter().flatten().count();
    let record = Arc::new(Record::default());
    storm(&p, &record, ops).await;
    let drained = heal(&p, &record, config.accounts).await;
    let resubmissions = finish(&p, &record).await;
    let quarantined = p.store.quarantined().unwrap_or_default();
    let (stored, more) =
        read_stores(&p.store, &p.store, quarantined, drained, config.accounts).await;
    let mut notes = std::mem::take(&mut *lock(&record.notes));
    notes.extend(more);
    notes.extend(lagging(&stored));
    let observed = Observed {
        attempts: std::mem::take(&mut *lock(&record.attempts)),
        resubmissions,
        notes,
        metrics: vec![p.metrics.clone()],
        catch_ups: 2,
        ..Observed::default()
    };
    let events = stored.events.values().map(|e| e.len() as u64).sum();
    let found = check::check(config.policy, &observed, &stored);
    p.consumers.stop().await;
    (verdict::attribute(&p.chaos.breaches(), found), n, events)
}

/// With no fault injected, every account's snapshot must be at its tip once the stream
/// drained (no backstop needed).
fn lagging(stored: &check::Stored) -> Vec<Violation> {
    let mut out = Vec::new();
    for (account, events) in &stored.events {
        let at = stored
            .drained
            .get(account.as_str())
            .map_or(0, |s| s.version);
        if at < events.len() as u64 {
            let v = Violation::new(
                Some(account.as_str()),
                format!(
                    "the stream drained with no fault injected, yet the snapshot is at version {at} of {}",
                    events.len()
                ),
            );
            out.push(v);
        }
    }
    out
}
