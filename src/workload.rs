//! `tally gen`: a realistic, reproducible workload file. Accounts follow a uniform or Zipf
//! mix; about 60 % deposits, 30 % withdrawals (some bounce for lack of funds), 8 %
//! reversals of a recent transaction of the same account, and 2 % exact duplicates of an
//! earlier row (a retried request). Business times span two months, so month figures roll.

use std::collections::VecDeque;
use std::io::{self, Write};

use crate::domain::Timestamp;

/// splitmix64: tiny, deterministic across platforms and releases.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n` ≥ 1).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Picks account ranks uniformly or by Zipf(s).
#[derive(Debug, Clone)]
pub struct Picker {
    cdf: Option<Vec<f64>>,
    n: u64,
}

impl Picker {
    /// `zipf`: `None` for uniform, `Some(s)` for Zipf with exponent `s` > 0.
    pub fn new(n: usize, zipf: Option<f64>) -> Picker {
        let cdf = zipf.filter(|s| *s > 0.0).map(|s| {
            let mut acc = 0.0;
            let mut cdf: Vec<f64> = (1..=n.max(1))
                .map(|k| {
                    acc += 1.0 / (k as f64).powf(s);
                    acc
                })
                .collect();
            cdf.iter_mut().for_each(|c| *c /= acc);
            cdf
        });
        Picker {
            cdf,
            n: n.max(1) as u64,
        }
    }

    pub fn pick(&self, rng: &mut Rng) -> usize {
        match &self.cdf {
            None => rng.below(self.n) as usize,
            Some(cdf) => {
                let u = rng.unit();
                cdf.partition_point(|&c| c < u).min(cdf.len() - 1)
            }
        }
    }
}

/// What to generate.
#[derive(Debug, Clone, Copy)]
pub struct GenSpec {
    pub accounts: usize,
    pub transactions: usize,
    pub zipf: Option<f64>,
    pub seed: u64,
}

/// 2026-10-01T00:00:00Z.
const START_MS: i64 = 1_790_812_800_000;
/// Two months of business time.
const SPAN_MS: i64 = 61 * 86_400_000;

/// Writes the workload as bulk CSV (the format `tally ingest` reads).
pub fn generate(spec: GenSpec, out: impl Write) -> io::Result<()> {
    let mut out = io::BufWriter::new(out);
    writeln!(out, "txn_id,account,kind,amount,occurred_at,reverses")?;
    let picker = Picker::new(spec.accounts, spec.zipf);
    let mut rng = Rng::new(spec.seed);
    let mut recent_rows: VecDeque<String> = VecDeque::with_capacity(1024);
    let mut recent_txns: Vec<VecDeque<u64>> = vec![VecDeque::new(); spec.accounts.max(1)];
    for i in 0..spec.transactions {
        if !recent_rows.is_empty() && rng.below(100) < 2 {
            let dup = recent_rows[rng.below(recent_rows.len() as u64) as usize].clone();
            writeln!(out, "{dup}")?;
            continue;
        }
        let a = picker.pick(&mut rng);
        let step = SPAN_MS / spec.transactions.max(1) as i64;
        let at = Timestamp::from_millis(
            START_MS + i as i64 * step + rng.below(step.max(1) as u64) as i64,
        )
        .unwrap_or(Timestamp::MIN);
        let roll = rng.below(100);
        let row = if roll < 8 && !recent_txns[a].is_empty() {
            let target = recent_txns[a][rng.below(recent_txns[a].len() as u64) as usize];
            format!("t{i:09},acct-{a:06},reversal,,{at},t{target:09}")
        } else if roll < 38 {
            format!(
                "t{i:09},acct-{a:06},withdrawal,{},{at},",
                100 + rng.below(150_000)
            )
        } else {
            format!(
                "t{i:09},acct-{a:06},deposit,{},{at},",
                100 + rng.below(100_000)
            )
        };
        writeln!(out, "{row}")?;
        let txns = &mut recent_txns[a];
        if txns.len() == 4 {
            txns.pop_front();
        }
        txns.push_back(i as u64);
        if recent_rows.len() == 1024 {
            recent_rows.pop_front();
        }
        recent_rows.push_back(row);
    }
    out.flush()
}
