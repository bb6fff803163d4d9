//! Workloads shared by the benches: valid, state-carrying event streams over a uniform or
//! Zipf-distributed account mix, packed into records and Lambda Kinesis events.
#![allow(dead_code)] // each bench uses a different part of this module

use aws_lambda_events::event::kinesis::{KinesisEvent, KinesisEventRecord, KinesisRecord};
use tally::codec::bucket::partition_key_of;
use tally::codec::{WireAggregate, WireEvent, WireKind, WirePage, encode_aggregate};

pub use tally::workload::Rng;

#[derive(Clone, Copy, Debug)]
pub enum Mix {
    Uniform,
    /// Zipf with exponent s over the account ranks.
    Zipf(f64),
}

impl Mix {
    pub fn label(self) -> &'static str {
        match self {
            Mix::Uniform => "uniform",
            Mix::Zipf(_) => "zipf1.0",
        }
    }
}

/// Picks account indices by `mix`.
pub struct Picker(tally::workload::Picker);

impl Picker {
    pub fn new(n: usize, mix: Mix) -> Picker {
        Picker(tally::workload::Picker::new(
            n,
            match mix {
                Mix::Uniform => None,
                Mix::Zipf(s) => Some(s),
            },
        ))
    }
    pub fn pick(&self, rng: &mut Rng) -> usize {
        self.0.pick(rng)
    }
}

pub const T0_MS: i64 = 1_793_000_000_000; // late October 2026

/// `events` valid events over `accounts` accounts starting at version 1 each, as
/// (account index, event), in generation order. Deposits and withdrawals that never
/// overdraw, a minute apart, crossing a month boundary.
pub fn events(accounts: usize, events: usize, mix: Mix, seed: u64) -> Vec<(usize, WireEvent)> {
    generate(accounts, events, mix, seed, false)
}

/// One opening deposit per account (in account order), then `events` as [`events`] makes
/// them, continuing each account's balance chain: the first `accounts` entries warm a
/// projector, the rest are the batch to measure.
pub fn events_after_opening(
    accounts: usize,
    events: usize,
    mix: Mix,
    seed: u64,
) -> Vec<(usize, WireEvent)> {
    generate(accounts, events, mix, seed, true)
}

fn generate(
    accounts: usize,
    events: usize,
    mix: Mix,
    seed: u64,
    opening: bool,
) -> Vec<(usize, WireEvent)> {
    let picker = Picker::new(accounts, mix);
    let mut rng = Rng::new(seed);
    let mut state = vec![(0u64, 0i64); accounts];
    let openings = if opening { accounts } else { 0 };
    (0..openings + events)
        .map(|i| {
            let a = if i < openings {
                i
            } else {
                picker.pick(&mut rng)
            };
            let (version, balance) = &mut state[a];
            *version += 1;
            let amount = 1 + rng.below(100_000) as i64;
            let kind = if *balance >= amount && rng.below(4) == 0 {
                *balance -= amount;
                WireKind::Withdrawn { amount }
            } else {
                *balance += amount;
                WireKind::Deposited { amount }
            };
            let at = T0_MS + i as i64 * 60_000;
            (
                a,
                WireEvent {
                    txn_id: format!("txn-{i:010}"),
                    kind,
                    occurred_at: at,
                    recorded_at: at + 5,
                    balance: *balance,
                },
            )
        })
        .collect()
}

pub fn account_name(i: usize) -> String {
    format!("acct-{i:07}")
}

/// Versions of each event, recomputed from generation order.
pub fn with_versions(
    events: &[(usize, WireEvent)],
    accounts: usize,
) -> Vec<(usize, u64, WireEvent)> {
    let mut v = vec![0u64; accounts];
    events
        .iter()
        .map(|(a, e)| {
            v[*a] += 1;
            (*a, v[*a], e.clone())
        })
        .collect()
}

/// Packs events into aggregates of about `per_record` events, each holding events of one
/// bucket only, pages being runs of one account, in generation order within each bucket.
pub fn aggregates(
    events: &[(usize, WireEvent)],
    accounts: usize,
    per_record: usize,
    buckets: u32,
) -> Vec<WireAggregate> {
    aggregates_of(with_versions(events, accounts), per_record, buckets)
}

/// [`aggregates`] of events whose versions are given.
pub fn aggregates_of(
    events: Vec<(usize, u64, WireEvent)>,
    per_record: usize,
    buckets: u32,
) -> Vec<WireAggregate> {
    let mut by_bucket: std::collections::BTreeMap<String, Vec<(usize, u64, WireEvent)>> =
        Default::default();
    for e in events {
        by_bucket
            .entry(partition_key_of(&account_name(e.0), buckets))
            .or_default()
            .push(e);
    }
    let mut out = Vec::new();
    for (_, evs) in by_bucket {
        for chunk in evs.chunks(per_record) {
            // Pages: for each account in the chunk (first-appearance order), its events in order.
            let mut order: Vec<usize> = Vec::new();
            let mut pages: std::collections::HashMap<usize, WirePage> = Default::default();
            for (a, v, e) in chunk {
                let page = pages.entry(*a).or_insert_with(|| {
                    order.push(*a);
                    WirePage {
                        account: account_name(*a),
                        first_version: *v,
                        events: Vec::new(),
                    }
                });
                page.events.push(e.clone());
            }
            out.push(WireAggregate {
                pages: order.iter().map(|a| pages.remove(a).unwrap()).collect(),
            });
        }
    }
    out
}

/// The Kinesis event Lambda would deliver for these record payloads, with every field
/// a real event has.
pub fn kinesis_event(payloads: &[Vec<u8>], partition_keys: &[String]) -> KinesisEvent {
    let mut event = KinesisEvent::default();
    event.records = payloads
        .iter()
        .zip(partition_keys)
        .enumerate()
        .map(|(i, (data, key))| {
            let seq = format!("4959033827149025660855969253836157109592157598913{i:07}");
            let mut kinesis = KinesisRecord::default();
            *kinesis.data = data.clone();
            kinesis.partition_key = key.clone();
            kinesis.sequence_number = seq.clone();
            kinesis.kinesis_schema_version = Some("1.0".into());
            let mut r = KinesisEventRecord::default();
            r.aws_region = Some("eu-west-1".into());
            r.event_id = Some(format!("shardId-000000000006:{seq}"));
            r.event_name = Some("aws:kinesis:record".into());
            r.event_source = Some("aws:kinesis".into());
            r.event_source_arn =
                Some("arn:aws:kinesis:eu-west-1:123456789012:stream/tally-events".into());
            r.event_version = Some("1.0".into());
            r.invoke_identity_arn = Some("arn:aws:iam::123456789012:role/tally-projector".into());
            r.kinesis = kinesis;
            r
        })
        .collect();
    event
}

/// rkyv record payloads and partition keys for aggregates.
pub fn rkyv_payloads(aggs: &[WireAggregate], buckets: u32) -> (Vec<Vec<u8>>, Vec<String>) {
    aggs.iter()
        .map(|a| {
            (
                encode_aggregate(a).unwrap().to_vec(),
                partition_key_of(&a.pages[0].account, buckets),
            )
        })
        .unzip()
}

/// serde_json record payloads (the baseline format) for the same aggregates.
pub fn json_payloads(aggs: &[WireAggregate], buckets: u32) -> (Vec<Vec<u8>>, Vec<String>) {
    aggs.iter()
        .map(|a| {
            (
                serde_json::to_vec(a).unwrap(),
                partition_key_of(&a.pages[0].account, buckets),
            )
        })
        .unzip()
}

/// A snapshot store that accepts every write and stores nothing: the projector's own CPU
/// cost without a backend's (on AWS the write is a network call to DynamoDB). Reads answer
/// "never written".
#[derive(Clone, Default)]
pub struct Sink;

impl tally::ports::SnapshotStore for Sink {
    async fn get_many(
        &self,
        accounts: Vec<String>,
    ) -> Result<Vec<Option<tally::domain::Snapshot>>, tally::ports::StoreError> {
        Ok(vec![None; accounts.len()])
    }

    async fn put_many(
        &self,
        puts: Vec<tally::ports::SnapshotPut>,
    ) -> Vec<Result<(), tally::ports::SnapshotError>> {
        vec![Ok(()); puts.len()]
    }
}

/// A Lambda Kinesis event's JSON: a warming batch (one opening event per account, one
/// record each) and the batch to measure (`events` events in records of ~`per_record`).
pub struct LambdaInput {
    pub warm: Vec<u8>,
    pub json: Vec<u8>,
    pub records: usize,
    pub events: usize,
}

pub fn lambda_input(
    accounts: usize,
    events: usize,
    per_record: usize,
    buckets: u32,
    mix: Mix,
) -> LambdaInput {
    let all = with_versions(&events_after_opening(accounts, events, mix, 42), accounts);
    let (opening, rest) = all.split_at(accounts);
    let json_of = |aggs: &[WireAggregate]| {
        let (payloads, keys) = rkyv_payloads(aggs, buckets);
        serde_json::to_vec(&kinesis_event(&payloads, &keys)).unwrap()
    };
    let aggs = aggregates_of(rest.to_vec(), per_record, buckets);
    LambdaInput {
        warm: json_of(&aggregates_of(opening.to_vec(), 1, buckets)),
        json: json_of(&aggs),
        records: aggs.len(),
        events,
    }
}

/// Criterion measurement of the benchmark thread's own CPU time
/// (`CLOCK_THREAD_CPUTIME_ID`), not wall time: the machines these run on are shared (other
/// builds take the cores), and time spent descheduled is not the code's cost. Everything a
/// measured iteration does runs on this thread (the handler runs on a current-thread
/// runtime), so nothing is missed.
pub struct CpuTime;

fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

impl criterion::measurement::Measurement for CpuTime {
    type Intermediate = u64;
    type Value = u64;

    fn start(&self) -> u64 {
        thread_cpu_ns()
    }
    fn end(&self, start: u64) -> u64 {
        thread_cpu_ns().saturating_sub(start)
    }
    fn add(&self, a: &u64, b: &u64) -> u64 {
        a + b
    }
    fn zero(&self) -> u64 {
        0
    }
    fn to_f64(&self, ns: &u64) -> f64 {
        *ns as f64
    }
    fn formatter(&self) -> &dyn criterion::measurement::ValueFormatter {
        &CpuTimeFormatter
    }
}

struct CpuTimeFormatter;

impl criterion::measurement::ValueFormatter for CpuTimeFormatter {
    fn scale_values(&self, ns: f64, values: &mut [f64]) -> &'static str {
        let (factor, unit) = match ns {
            n if n < 1e3 => (1.0, "ns"),
            n if n < 1e6 => (1e-3, "µs"),
            n if n < 1e9 => (1e-6, "ms"),
            _ => (1e-9, "s"),
        };
        values.iter_mut().for_each(|v| *v *= factor);
        unit
    }

    fn scale_throughputs(
        &self,
        ns: f64,
        throughput: &criterion::Throughput,
        values: &mut [f64],
    ) -> &'static str {
        let per_iter = match *throughput {
            criterion::Throughput::Elements(n)
            | criterion::Throughput::ElementsAndBytes { elements: n, .. } => n as f64,
            criterion::Throughput::Bytes(n) | criterion::Throughput::BytesDecimal(n) => n as f64,
            criterion::Throughput::Bits(n) => n as f64,
        };
        let per_second = per_iter * 1e9 / ns;
        let (factor, unit) = match per_second {
            r if r < 1e3 => (1.0, "elem/s (cpu)"),
            r if r < 1e6 => (1e-3, "Kelem/s (cpu)"),
            r if r < 1e9 => (1e-6, "Melem/s (cpu)"),
            _ => (1e-9, "Gelem/s (cpu)"),
        };
        values
            .iter_mut()
            .for_each(|v| *v = per_iter * 1e9 / *v * factor);
        unit
    }

    fn scale_for_machines(&self, _values: &mut [f64]) -> &'static str {
        "ns"
    }
}
