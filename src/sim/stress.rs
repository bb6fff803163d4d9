//! The seeded stress mode (`tally sim --stress`): the production embedded wiring — the
//! redb store (in memory) with its `spawn_blocking` appends, the in-process stream and its
//! consumers, the projector — on a multi-threaded runtime, hammered by the seed's workload
//! tuned for contention (few accounts, multi-page chunks, many clients). Real threads are
//! not replayable: the workload is, the interleaving is not. This is what reaches races
//! inside the store that one simulated thread cannot (issue 8, defect 1).
//!
//! No faults are injected; the port layer only watches the contracts. Must never: be
//! mistaken for a deterministic run (its reports say so).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::adapters::embedded::EmbeddedStore;
use crate::adapters::embedded::stream::{EmbeddedStream, spawn_consumers};
use crate::service::command::{CommandService, system_clock};
use crate::service::metrics::Metrics;
use crate::service::projector::Projector;
use crate::sim::backend::BackendKind;
use crate::sim::check;
use crate::sim::config::{Config, Faults};
use crate::sim::faults::{Chaos, Faulty};
use crate::sim::history::{Attempt, Class, Outcome, RESUBMITTER, Violation};
use crate::sim::world::{Observed, attempts_of, run_op};
use crate::sim::{Options, SeedReport, read_stores, snapshots_of, workload};

/// The seed's settings, bent towards contention on the append path.
fn tune(mut c: Config) -> Config {
    c.accounts = c.accounts.min(4);
    c.clients = c.clients.max(4);
    c.bulk_share = 0.8;
    c.chunk_max = 70;
    c.shared_ids = c.shared_ids.min(0.1);
    c.faults = Faults::default();
    c
}

/// Runs one stress seed.
pub fn run(seed: u64, options: Options) -> SeedReport {
    let config = tune(Config::from_seed(seed));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let (violations, commands, events) = match runtime {
        Ok(rt) => rt.block_on(stress(config.clone(), options)),
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
    }
}

async fn stress(config: Config, options: Options) -> (Vec<Violation>, usize, u64) {
    let store = match EmbeddedStore::in_memory() {
        Ok(s) => s,
        Err(e) => return (vec![Violation::new(None, e.to_string())], 0, 0),
    };
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
    let ops = workload::generate(&config);
    let n = ops.iter().flatten().count();
    let attempts: Arc<Mutex<Vec<Attempt>>> = Arc::default();
    let notes: Arc<Mutex<Vec<Violation>>> = Arc::default();
    let tasks: Vec<_> = ops
        .into_iter()
        .enumerate()
        .map(|(client, ops)| {
            let (commands, attempts, notes) = (commands.clone(), attempts.clone(), notes.clone());
            tokio::spawn(async move {
                for (k, op) in ops.iter().enumerate() {
                    let call = (client as u64) << 32 | k as u64;
                    let answer = run_op(&commands, op).await;
                    let (a, _, v) = attempts_of(client, call, op, Some(answer));
                    attempts
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(a);
                    notes
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .extend(v);
                }
            })
        })
        .collect();
    for t in tasks {
        if let Err(e) = t.await {
            push(
                &notes,
                Violation::new(None, format!("a client ended abnormally: {e}")),
            );
        }
    }
    let unanswered: Vec<Attempt> = copy(&attempts)
        .into_iter()
        .filter(|a| matches!(a.outcome, Outcome::Unknown(_)))
        .collect();
    for a in unanswered {
        let op = workload::Op::Single {
            account: a.account,
            command: a.command,
        };
        let (more, _, v) = attempts_of(
            RESUBMITTER,
            u64::MAX,
            &op,
            Some(run_op(&commands, &op).await),
        );
        attempts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(more);
        notes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(v);
    }
    consumers.drain().await;
    let drained = snapshots_of(&store, &store, config.accounts).await;
    if let Err(e) = projector.catch_up().await {
        push(
            &notes,
            Violation::new(None, format!("the final catch-up failed: {e}")),
        );
    }
    let mut resubmissions = Vec::new();
    for a in copy(&attempts) {
        if matches!(a.outcome, Outcome::Booked(_) | Outcome::Duplicate(_)) {
            let again = commands.submit(a.account.clone(), a.command.clone()).await;
            let o = match again {
                Ok(crate::service::command::CommandOutcome::Duplicate(e)) => Outcome::Duplicate(e),
                Ok(other) => Outcome::Unknown(format!("{other:?}")),
                Err(e) => Outcome::Unknown(e.to_string()),
            };
            resubmissions.push((a, o));
        }
    }
    consumers.drain().await;
    consumers.stop().await;
    let (stored, more) = read_stores(
        &store,
        &store,
        store.quarantined().unwrap_or_default(),
        drained,
        config.accounts,
    )
    .await;
    let mut all_notes = take(&notes);
    all_notes.extend(more);
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
            all_notes.push(if config.cache_entries < config.accounts {
                v.class(Class::KnownCacheEviction)
            } else {
                v
            });
        }
    }
    let observed = Observed {
        attempts: take(&attempts),
        resubmissions,
        notes: all_notes,
        metrics: vec![metrics],
        acks: Default::default(),
        catch_ups: 2,
        crashes: 0,
        published: Vec::new(),
        poison: Default::default(),
        silent_events: 0,
        silent_versions: 0,
        silent_quarantined: 0,
    };
    let events = stored.events.values().map(|e| e.len() as u64).sum();
    let found = check::check(config.policy, &observed, &stored, options.issue10);
    (check::attribute(&chaos.breaches(), found), n, events)
}

fn take<T>(m: &Mutex<Vec<T>>) -> Vec<T> {
    std::mem::take(&mut *m.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
}

fn push(m: &Mutex<Vec<Violation>>, v: Violation) {
    m.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(v);
}

fn copy<T: Clone>(m: &Mutex<Vec<T>>) -> Vec<T> {
    m.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}
