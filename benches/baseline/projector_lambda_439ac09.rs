//! Baseline for `benches/projector_batch.rs`: the projector Lambda's path as it was at commit
//! 439ac09, before the projector's input became transport-neutral. Not a bench target of
//! this checkout: `benches/baseline/run.sh` copies it into a worktree of that commit.
//!
//! Then the `projector` binary received `LambdaEvent<KinesisEvent>`: lambda_runtime
//! deserialized the payload into `aws_lambda_events::KinesisEvent` (through
//! `serde_path_to_error`) and the handler called `Projector::handle(event)`. Same inputs,
//! warm cache, sink store and CPU-time measurement as the current bench.

use std::hint::black_box;
use std::sync::Arc;

use aws_lambda_events::event::kinesis::KinesisEvent;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use tally::adapters::embedded::EmbeddedStore;
use tally::service::metrics::Metrics;
use tally::service::projector::Projector;

mod support;
use support::{CpuTime, Mix, Sink};

const ACCOUNTS: usize = 10_000;

type OldProjector = Projector<EmbeddedStore, Sink, EmbeddedStore>;

/// What lambda_runtime did with an invocation body before calling the old handler.
fn runtime_deserialize(body: &[u8]) -> KinesisEvent {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).unwrap()
}

fn warm_projector(
    store: &EmbeddedStore,
    warm: &[u8],
    rt: &tokio::runtime::Runtime,
) -> (OldProjector, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let projector = Projector::new(
        store.clone(),
        Sink,
        store.clone(),
        ACCOUNTS * 2,
        metrics.clone(),
    );
    let response = rt.block_on(projector.handle(runtime_deserialize(warm)));
    assert!(response.batch_item_failures.is_empty());
    (projector, metrics)
}

fn bench(c: &mut Criterion<CpuTime>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = EmbeddedStore::in_memory().unwrap();
    for (shape, events, per_record, buckets) in
        [("single", 10_000, 1, 1024), ("aggregated", 60_000, 100, 64)]
    {
        for mix in [Mix::Uniform, Mix::Zipf(1.0)] {
            let input = support::lambda_input(ACCOUNTS, events, per_record, buckets, mix);
            let mut g = c.benchmark_group(format!("projector_batch/{shape}/{}", mix.label()));
            g.sample_size(20);
            let unit = if shape == "single" {
                input.records
            } else {
                input.events
            };
            g.throughput(Throughput::Elements(unit as u64));
            g.bench_function("baseline_439ac09_handler", |b| {
                b.iter_batched_ref(
                    || {
                        let (p, m) = warm_projector(&store, &input.warm, &rt);
                        (p, m, runtime_deserialize(&input.json))
                    },
                    |(projector, metrics, event)| {
                        let response = rt.block_on(projector.handle(std::mem::take(event)));
                        assert!(response.batch_item_failures.is_empty());
                        // The old projector dropped groups its cache evicted; this input
                        // fits the cache, so every event must still be projected.
                        let projected = metrics
                            .events_projected
                            .load(std::sync::atomic::Ordering::Relaxed);
                        assert_eq!(projected as usize, ACCOUNTS + events);
                    },
                    BatchSize::PerIteration,
                )
            });
            g.bench_function("baseline_439ac09_runtime_and_handler", |b| {
                b.iter_batched_ref(
                    || warm_projector(&store, &input.warm, &rt),
                    |(projector, _)| {
                        let event = runtime_deserialize(black_box(&input.json));
                        let response = rt.block_on(projector.handle(event));
                        assert!(response.batch_item_failures.is_empty());
                    },
                    BatchSize::PerIteration,
                )
            });
            g.finish();
        }
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = bench
}
criterion_main!(benches);
