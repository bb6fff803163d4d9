//! The projector's pure hot path on a realistic Lambda input: the Kinesis event JSON bytes
//! (data base64, every field Lambda sends) → decoded → grouped by account → folded → the
//! list of snapshot writes. Side by side:
//!
//! - `ours`: lean borrowed JSON reader + base64 into an aligned arena + checksummed,
//!   validated rkyv read in place + fold;
//! - `ours_via_lambda_events`: the same after deserializing `aws_lambda_events::KinesisEvent`
//!   (what a `LambdaEvent<KinesisEvent>` handler receives);
//! - `baseline_serde`: `aws_lambda_events::KinesisEvent` + serde_json record payloads
//!   grouped into owned strings and vectors: the plain serde path.
//!
//! Inputs: 10,000 records of one event each, and aggregated records of ~100 events each
//! (60,000 events, which keeps the JSON under Lambda's 6 MB payload limit); uniform and
//! Zipf(1.0) account mixes over 10,000 accounts.

use std::collections::HashMap;
use std::hint::black_box;

use aws_lambda_events::event::kinesis::KinesisEvent;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tally::codec::WireAggregate;
use tally::codec::kinesis::{Arena, KinesisBatch};
use tally::domain::{Effect, Money, Snapshot, Timestamp};
use tally::service::projector::{SnapshotCache, fold_group, group, plan};

mod support;
use support::Mix;

const ACCOUNTS: usize = 10_000;

struct Input {
    json: Vec<u8>,
    records: usize,
    events: usize,
}

fn input(mix: Mix, events: usize, per_record: usize, buckets: u32, payload_json: bool) -> Input {
    let evs = support::events(ACCOUNTS, events, mix, 42);
    let aggs = support::aggregates(&evs, ACCOUNTS, per_record, buckets);
    let (payloads, keys) = if payload_json {
        support::json_payloads(&aggs, buckets)
    } else {
        support::rkyv_payloads(&aggs, buckets)
    };
    let json = serde_json::to_vec(&support::kinesis_event(&payloads, &keys)).unwrap();
    Input {
        json,
        records: aggs.len(),
        events,
    }
}

fn warm_cache() -> SnapshotCache {
    let mut cache = SnapshotCache::new(ACCOUNTS * 2);
    for a in 0..ACCOUNTS {
        cache.commit(&support::account_name(a), Snapshot::default());
    }
    cache
}

#[inline(never)]
/// Our path; returns the number of writes (and checks the fold saw every event).
fn ours(json: &[u8], arena: &mut Arena, cache: &SnapshotCache, events: usize) -> usize {
    let batch = KinesisBatch::parse(json).unwrap();
    arena.fill(&batch);
    let grouped = group(arena);
    let p = plan(&grouped, cache);
    assert_eq!(p.applied as usize, events);
    p.writes.len()
}

fn ours_via_lambda_events(
    json: &[u8],
    arena: &mut Arena,
    cache: &SnapshotCache,
    events: usize,
) -> usize {
    let event: KinesisEvent = serde_json::from_slice(json).unwrap();
    arena.clear();
    for r in &event.records {
        arena.push_bytes(&r.kinesis.data);
    }
    let grouped = group(arena);
    let p = plan(&grouped, cache);
    assert_eq!(p.applied as usize, events);
    p.writes.len()
}

/// The plain serde path: owned everything, same grouping and fold semantics.
fn baseline_serde(json: &[u8], cache: &SnapshotCache, events: usize) -> usize {
    let event: KinesisEvent = serde_json::from_slice(json).unwrap();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut groups: Vec<(String, usize, Vec<Effect>)> = Vec::new();
    for (i, r) in event.records.iter().enumerate() {
        let agg: WireAggregate = serde_json::from_slice(&r.kinesis.data).unwrap();
        for page in agg.pages {
            let g = *index.entry(page.account.clone()).or_insert_with(|| {
                groups.push((page.account.clone(), i, Vec::new()));
                groups.len() - 1
            });
            for (k, e) in page.events.iter().enumerate() {
                let delta = match e.kind {
                    tally::codec::WireKind::Deposited { amount } => amount,
                    tally::codec::WireKind::Withdrawn { amount } => -amount,
                    tally::codec::WireKind::Reversed { delta, .. } => delta,
                };
                groups[g].2.push(Effect {
                    version: page.first_version + k as u64,
                    delta: Money(delta),
                    occurred_at: Timestamp::from_millis(e.occurred_at).unwrap(),
                    recorded_at: Timestamp::from_millis(e.recorded_at).unwrap(),
                    balance: Money(e.balance),
                });
            }
        }
    }
    let mut writes = Vec::new();
    let mut applied = 0usize;
    for (account, first, effects) in &groups {
        let start = cache.get(account).unwrap();
        let fold = fold_group(start, effects);
        applied += fold.applied as usize;
        writes.push((account.clone(), start.version, fold.snapshot, *first));
    }
    assert_eq!(applied, events);
    writes.len()
}

fn bench(c: &mut Criterion) {
    let cache = warm_cache();
    let mut arena = Arena::default();
    for (shape, events, per_record, buckets) in
        [("single", 10_000, 1, 1024), ("aggregated", 60_000, 100, 64)]
    {
        for mix in [Mix::Uniform, Mix::Zipf(1.0)] {
            let ours_in = input(mix, events, per_record, buckets, false);
            let base_in = input(mix, events, per_record, buckets, true);
            eprintln!(
                "{shape}/{}: {} records, {} events, JSON {:.1} MB (rkyv) / {:.1} MB (serde_json payloads)",
                mix.label(),
                ours_in.records,
                ours_in.events,
                ours_in.json.len() as f64 / 1e6,
                base_in.json.len() as f64 / 1e6
            );
            let mut g = c.benchmark_group(format!("projector_batch/{shape}/{}", mix.label()));
            g.sample_size(20);
            let unit = if shape == "single" {
                ours_in.records
            } else {
                ours_in.events
            };
            g.throughput(Throughput::Elements(unit as u64));
            if std::env::var_os("STAGES").is_some() {
                g.bench_function("stage_parse", |b| {
                    b.iter(|| black_box(KinesisBatch::parse(&ours_in.json).unwrap().records.len()))
                });
                g.bench_function("stage_parse_base64", |b| {
                    b.iter(|| {
                        let batch = KinesisBatch::parse(&ours_in.json).unwrap();
                        arena.fill(&batch);
                        black_box(arena.len())
                    })
                });
                g.bench_function("stage_parse_base64_group", |b| {
                    b.iter(|| {
                        let batch = KinesisBatch::parse(&ours_in.json).unwrap();
                        arena.fill(&batch);
                        black_box(group(&arena).effects.len())
                    })
                });
            }
            g.bench_function("ours", |b| {
                b.iter(|| black_box(ours(&ours_in.json, &mut arena, &cache, events)))
            });
            g.bench_function("ours_via_lambda_events", |b| {
                b.iter(|| {
                    black_box(ours_via_lambda_events(
                        &ours_in.json,
                        &mut arena,
                        &cache,
                        events,
                    ))
                })
            });
            g.bench_function("baseline_serde", |b| {
                b.iter(|| black_box(baseline_serde(&base_in.json, &cache, events)))
            });
            g.finish();
        }
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
