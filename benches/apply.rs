//! The hot fold: events onto a snapshot already in cache. Target ≤ 5 ns/event.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tally::domain::{Effect, Event, Snapshot, apply, apply_effect};

mod support;
use support::CpuTime;

fn effects(n: usize) -> Vec<Event> {
    let pages = support::aggregates(&support::events(1, n, support::Mix::Uniform, 7), 1, n, 1);
    pages[0].pages[0]
        .events
        .iter()
        .enumerate()
        .map(|(i, e)| to_event(i as u64 + 1, e))
        .collect()
}

fn to_event(version: u64, e: &tally::codec::WireEvent) -> Event {
    tally::codec::WirePage {
        account: "acct".into(),
        first_version: version,
        events: vec![e.clone()],
    }
    .pipe_event()
}

trait PipeEvent {
    fn pipe_event(self) -> Event;
}

impl PipeEvent for tally::codec::WirePage {
    fn pipe_event(self) -> Event {
        let bytes = tally::codec::encode_page(&self).unwrap();
        tally::codec::decode_page(&bytes)
            .unwrap()
            .into_events()
            .remove(0)
    }
}

fn bench(c: &mut Criterion<CpuTime>) {
    const N: usize = 10_000;
    let events = effects(N);
    let fx: Vec<Effect> = events.iter().map(|e| e.effect().unwrap()).collect();
    let mut g = c.benchmark_group("apply");
    g.throughput(Throughput::Elements(N as u64));
    g.bench_function("apply_effect/10k", |b| {
        b.iter_batched_ref(
            Snapshot::default,
            |s| {
                for e in &fx {
                    black_box(apply_effect(s, *e).unwrap());
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("fold_group/10k", |b| {
        b.iter(|| {
            black_box(tally::service::projector::fold_group(
                Snapshot::default(),
                black_box(&fx),
            ))
        })
    });
    g.bench_function("apply_event/10k", |b| {
        b.iter_batched_ref(
            Snapshot::default,
            |s| {
                for e in &events {
                    black_box(apply(s, e).unwrap());
                }
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(CpuTime);
    targets = bench
}
criterion_main!(benches);
