//! The projector Lambda's handler, exactly as the `projector` binary calls it:
//! `KinesisHandler::handle(payload JSON bytes)` → partial-batch response, on a warm instance
//! (every account of the batch in the snapshot cache, as after a previous batch). Snapshot
//! writes go to a sink store (support::Sink), so the figure is the projector's own CPU; on
//! AWS the writes are DynamoDB calls.
//!
//! - `handler`: the function the binary calls, payload bytes in, response out;
//! - `runtime_and_handler`: the same preceded by what lambda_runtime does with the body
//!   before the handler runs (`serde_path_to_error` over `serde_json`, into a borrowed-then-
//!   boxed `RawValue`), i.e. the whole invocation inside the process;
//! - with `STAGES=1`, its stages alone: reading the event JSON into a record batch, then
//!   decoding and grouping, then folding.
//!
//! Inputs: 10,000 records of one event each, and aggregated records of ~100 events each
//! (60,000 events); uniform and Zipf(1.0) account mixes over 10,000 accounts. The baseline
//! (the code before the transport-neutral projector) is measured by `benches/baseline/run.sh`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::value::RawValue;
use tally::adapters::embedded::EmbeddedStore;
use tally::codec::batch::RecordBatch;
use tally::codec::kinesis::read_event;
use tally::domain::Snapshot;
use tally::lambda::KinesisHandler;
use tally::service::metrics::Metrics;
use tally::service::projector::{Projector, fold_group, group};

mod support;

/// The allocator the `projector` binary uses.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use support::{CpuTime, Mix, Sink};

const ACCOUNTS: usize = 10_000;

type Handler = KinesisHandler<EmbeddedStore, Sink, EmbeddedStore>;

/// A handler whose cache holds every account (it projected `warm`), and its metrics.
fn warm_handler(
    store: &EmbeddedStore,
    warm: &[u8],
    rt: &tokio::runtime::Runtime,
) -> (Handler, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::default());
    let handler = KinesisHandler::new(Projector::new(
        store.clone(),
        Sink,
        store.clone(),
        ACCOUNTS * 2,
        metrics.clone(),
    ));
    let response = rt.block_on(handler.handle(warm)).unwrap();
    assert!(response.batch_item_failures.is_empty());
    (handler, metrics)
}

/// What lambda_runtime does with an invocation body before calling the handler.
fn runtime_deserialize(body: &[u8]) -> Box<RawValue> {
    let mut json = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut json).unwrap()
}

fn stages(g: &mut criterion::BenchmarkGroup<'_, CpuTime>, json: &[u8]) {
    let mut batch = RecordBatch::new();
    g.bench_function("stage_read_event", |b| {
        b.iter(|| {
            read_event(json, &mut batch).unwrap();
            black_box(batch.len())
        })
    });
    g.bench_function("stage_read_group", |b| {
        b.iter(|| {
            read_event(json, &mut batch).unwrap();
            black_box(group(&batch).effects.len())
        })
    });
    g.bench_function("stage_read_group_fold", |b| {
        b.iter(|| {
            read_event(json, &mut batch).unwrap();
            let grouped = group(&batch);
            let applied: u32 = grouped
                .groups
                .iter()
                .map(|gr| fold_group(Snapshot::default(), grouped.effects_of(gr)).applied)
                .sum();
            black_box(applied)
        })
    });
    g.bench_function("stage_runtime_raw_value", |b| {
        b.iter(|| black_box(runtime_deserialize(json).get().len()))
    });
}

/// The measured call, by name, for `valgrind --tool=callgrind --toggle-collect=*measured*`.
#[inline(never)]
fn measured(handler: &Handler, json: &[u8], rt: &tokio::runtime::Runtime) -> usize {
    let response = rt.block_on(handler.handle(json)).unwrap();
    response.batch_item_failures.len()
}

/// `PROFILE=single/uniform` (or another shape/mix): warm a handler, make the measured call
/// once, and exit; for an instruction profile under callgrind.
fn profile_once(which: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = EmbeddedStore::in_memory().unwrap();
    let (shape, mix) = which.split_once('/').expect("PROFILE=shape/mix");
    let (events, per_record, buckets) = match shape {
        "single" => (10_000, 1, 1024),
        _ => (60_000, 100, 64),
    };
    let mix = if mix == "uniform" {
        Mix::Uniform
    } else {
        Mix::Zipf(1.0)
    };
    let input = support::lambda_input(ACCOUNTS, events, per_record, buckets, mix);
    if std::env::var_os("DUMP").is_some() {
        std::fs::write("/tmp/event.json", &input.json).unwrap();
    }
    let (handler, _) = warm_handler(&store, &input.warm, &rt);
    assert_eq!(black_box(measured(&handler, &input.json, &rt)), 0);
}

fn bench(c: &mut Criterion<CpuTime>) {
    if let Ok(which) = std::env::var("PROFILE") {
        return profile_once(&which);
    }
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
            eprintln!(
                "{shape}/{}: {} records, {} events, JSON {:.1} MB",
                mix.label(),
                input.records,
                input.events,
                input.json.len() as f64 / 1e6,
            );
            let mut g = c.benchmark_group(format!("projector_batch/{shape}/{}", mix.label()));
            g.sample_size(20);
            let unit = if shape == "single" {
                input.records
            } else {
                input.events
            };
            g.throughput(Throughput::Elements(unit as u64));
            if std::env::var_os("STAGES").is_some() {
                stages(&mut g, &input.json);
            }
            let check = |metrics: &Metrics| {
                let projected = metrics
                    .events_projected
                    .load(std::sync::atomic::Ordering::Relaxed);
                assert_eq!(
                    projected as usize,
                    ACCOUNTS + events,
                    "every event projected"
                );
            };
            g.bench_function("handler", |b| {
                b.iter_batched_ref(
                    || warm_handler(&store, &input.warm, &rt),
                    |(handler, metrics)| {
                        let response = rt.block_on(handler.handle(&input.json)).unwrap();
                        assert!(response.batch_item_failures.is_empty());
                        check(metrics);
                    },
                    BatchSize::PerIteration,
                )
            });
            g.bench_function("runtime_and_handler", |b| {
                b.iter_batched_ref(
                    || warm_handler(&store, &input.warm, &rt),
                    |(handler, _)| {
                        let payload = runtime_deserialize(&input.json);
                        let response = rt
                            .block_on(handler.handle(payload.get().as_bytes()))
                            .unwrap();
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
