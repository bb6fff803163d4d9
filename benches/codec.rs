//! One aggregate record (~100 events of a few accounts of one bucket): encode, and decode
//! to usable values, in rkyv (validated access, our format) beside serde_json and bincode
//! on the same events.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use tally::codec::{Decoder, WireAggregate, encode_aggregate};

mod support;

fn sample() -> WireAggregate {
    let evs = support::events(8, 2_000, support::Mix::Zipf(1.0), 11);
    // The first aggregate of ~100 events.
    support::aggregates(&evs, 8, 100, 1).remove(0)
}

fn sum_balances(agg: &WireAggregate) -> i64 {
    agg.pages
        .iter()
        .flat_map(|p| &p.events)
        .map(|e| e.balance)
        .fold(0, i64::wrapping_add)
}

fn bench(c: &mut Criterion) {
    let agg = sample();
    let n: usize = agg.pages.iter().map(|p| p.events.len()).sum();
    let rkyv_bytes = encode_aggregate(&agg).unwrap();
    let json_bytes = serde_json::to_vec(&agg).unwrap();
    let bincode_bytes = bincode::serialize(&agg).unwrap();
    eprintln!(
        "codec sample: {n} events; bytes/event rkyv {:.1}, serde_json {:.1}, bincode {:.1}",
        rkyv_bytes.len() as f64 / n as f64,
        json_bytes.len() as f64 / n as f64,
        bincode_bytes.len() as f64 / n as f64
    );
    let mut g = c.benchmark_group("codec");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("encode/rkyv", |b| {
        b.iter(|| black_box(encode_aggregate(black_box(&agg)).unwrap()))
    });
    g.bench_function("encode/serde_json", |b| {
        b.iter(|| black_box(serde_json::to_vec(black_box(&agg)).unwrap()))
    });
    g.bench_function("encode/bincode", |b| {
        b.iter(|| black_box(bincode::serialize(black_box(&agg)).unwrap()))
    });
    let mut decoder = Decoder::new();
    g.bench_function("decode/rkyv_validated_effects", |b| {
        b.iter(|| {
            let a = decoder.aggregate(black_box(&rkyv_bytes)).unwrap();
            let mut sum = 0i64;
            for page in a.pages.iter() {
                page.account().unwrap();
                for e in page.effects() {
                    sum = sum.wrapping_add(e.unwrap().balance.minor());
                }
            }
            black_box(sum)
        })
    });
    g.bench_function("decode/serde_json", |b| {
        b.iter(|| {
            black_box(sum_balances(
                &serde_json::from_slice::<WireAggregate>(black_box(&json_bytes)).unwrap(),
            ))
        })
    });
    g.bench_function("decode/bincode", |b| {
        b.iter(|| {
            black_box(sum_balances(
                &bincode::deserialize::<WireAggregate>(black_box(&bincode_bytes)).unwrap(),
            ))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
