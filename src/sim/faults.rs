//! The seeded scheduler at the port layer. Every call through a [`Faulty`] port asks
//! [`Chaos`] whether to wait (simulated time, which reorders the tasks), fail before it
//! runs (throttled, unavailable), or commit and then fail (the caller sees a timeout after
//! the write landed); a pause after a write lets a crash land between the commit and the
//! answer. It also watches the ports' own contracts (one result per append, an account's
//! pages all-or-nothing from the first failure) and keeps a running hash of what happened,
//! so two runs of one seed can be compared.
//!
//! The simulator's port layer. Must never: draw randomness from anywhere but its seeded
//! generator, or change what a store did beyond the faults it reports.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::domain::{AccountId, AccountState, Event, Snapshot, TxnId, TxnOutcome};
use crate::ports::{
    Append, Appended, EventStore, Parked, Quarantine, Quarantined, SnapshotError, SnapshotPut,
    SnapshotStore, StoreError,
};
use crate::sim::config::{Draw, Faults};
use crate::workload::Rng;

/// A port contract broken by the store underneath (not by an injected fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContractBreach {
    pub account: String,
    pub what: String,
}

/// The run's seeded source of faults and interleavings, shared by every port.
pub struct Chaos {
    rng: Mutex<Rng>,
    rates: Faults,
    on: AtomicBool,
    /// Faults injected, by kind.
    injected: Mutex<BTreeMap<&'static str, u64>>,
    /// Events whose append committed while its caller was told it timed out.
    pub silent_events: AtomicU64,
    /// Snapshot versions moved by writes whose caller was told they timed out.
    pub silent_versions: AtomicU64,
    /// Quarantine puts that landed while their caller was told they timed out.
    pub silent_quarantined: AtomicU64,
    breaches: Mutex<Vec<ContractBreach>>,
    trace: AtomicU64,
    /// Every step, when `TALLY_SIM_LOG` names a file (to find where two runs part).
    log: Mutex<Option<Vec<String>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Chaos {
    pub fn new(seed: u64, rates: Faults) -> Arc<Chaos> {
        Arc::new(Chaos {
            rng: Mutex::new(Rng::new(seed ^ 0xC4A0_5000_0000_0007)),
            rates,
            on: AtomicBool::new(true),
            injected: Mutex::default(),
            silent_events: AtomicU64::new(0),
            silent_versions: AtomicU64::new(0),
            silent_quarantined: AtomicU64::new(0),
            breaches: Mutex::default(),
            trace: AtomicU64::new(0xCBF2_9CE4_8422_2325),
            log: Mutex::new(std::env::var_os("TALLY_SIM_LOG").map(|_| Vec::new())),
        })
    }

    pub fn rates(&self) -> Faults {
        self.rates
    }

    /// Stops injecting faults and delays (the run's liveness phase).
    pub fn heal(&self) {
        self.on.store(false, Ordering::SeqCst);
    }

    pub fn healing(&self) -> bool {
        !self.on.load(Ordering::SeqCst)
    }

    /// A draw from the run's generator (workload helpers share it for stream faults).
    pub fn with_rng<T>(&self, f: impl FnOnce(&mut Rng) -> T) -> T {
        f(&mut lock(&self.rng))
    }

    /// True with probability `p` while faults are on; counts it under `kind`.
    pub fn roll(&self, kind: &'static str, p: f64) -> bool {
        if self.healing() || p <= 0.0 || !self.with_rng(|r| r.chance(p)) {
            return false;
        }
        *lock(&self.injected).entry(kind).or_default() += 1;
        self.log(|| format!("fault {kind}"));
        self.note(kind.len() as u64);
        true
    }

    pub fn injected(&self) -> BTreeMap<&'static str, u64> {
        lock(&self.injected).clone()
    }

    /// Logs a step (only when `TALLY_SIM_LOG` is set).
    pub fn log(&self, step: impl FnOnce() -> String) {
        if let Some(log) = lock(&self.log).as_mut() {
            log.push(step());
        }
    }

    /// The steps logged, if logging.
    pub fn take_log(&self) -> Option<Vec<String>> {
        lock(&self.log).take()
    }

    /// Mixes `value` into the run's trace hash (FNV-1a over 64-bit words).
    pub fn note(&self, value: u64) {
        self.log(|| format!("note {value}"));
        let h = self.trace.load(Ordering::Relaxed);
        self.trace.store(
            (h ^ value).wrapping_mul(0x0000_0100_0000_01B3),
            Ordering::Relaxed,
        );
    }

    pub fn trace(&self) -> u64 {
        self.trace.load(Ordering::Relaxed)
    }

    pub fn breach(&self, account: &str, what: String) {
        lock(&self.breaches).push(ContractBreach {
            account: account.to_owned(),
            what,
        });
    }

    pub fn breaches(&self) -> Vec<ContractBreach> {
        lock(&self.breaches).clone()
    }

    /// Maybe lets the other tasks run first (a few yields), maybe waits up to 3 ms of
    /// simulated time.
    pub async fn pause(&self) {
        let yields = self.with_rng(|r| r.chance(self.rates.interleave).then(|| r.between(1, 4)));
        for _ in 0..yields.unwrap_or(0) {
            tokio::task::yield_now().await;
        }
        if self.roll("delay", self.rates.delay) {
            let micros = self.with_rng(|r| r.between(1, 3_000));
            tokio::time::sleep(Duration::from_micros(micros)).await;
        }
    }

    /// Maybe an error instead of the call.
    pub fn fail(&self) -> Option<StoreError> {
        if self.roll("throttle", self.rates.throttle) {
            Some(StoreError::Throttled)
        } else if self.roll("unavailable", self.rates.unavailable) {
            Some(StoreError::Unavailable(
                "injected: backend unreachable".into(),
            ))
        } else {
            None
        }
    }

    fn commit_timeout(&self) -> bool {
        self.roll("commit_timeout", self.rates.commit_timeout)
    }
}

fn timed_out() -> StoreError {
    StoreError::Unavailable("injected: timed out after the write committed".into())
}

/// Any port, through the run's [`Chaos`].
#[derive(Clone)]
pub struct Faulty<T> {
    pub inner: T,
    pub chaos: Arc<Chaos>,
}

impl<T> Faulty<T> {
    pub fn new(inner: T, chaos: Arc<Chaos>) -> Faulty<T> {
        Faulty { inner, chaos }
    }

    /// Pause, then maybe fail, then run `call`.
    async fn read<R>(
        &self,
        call: impl Future<Output = Result<R, StoreError>>,
    ) -> Result<R, StoreError> {
        self.chaos.pause().await;
        if let Some(e) = self.chaos.fail() {
            return Err(e);
        }
        let out = call.await;
        self.chaos.note(u64::from(out.is_ok()));
        out
    }
}

/// What the wrapper does with one account's append (or one snapshot put) of a call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Plan {
    Forward,
    /// Forwarded; whatever it wrote, the caller is told it timed out.
    ForwardThenTimeout,
    Fail,
}

impl<T: EventStore> EventStore for Faulty<T> {
    async fn tip(&self, account: &AccountId) -> Result<AccountState, StoreError> {
        self.read(self.inner.tip(account)).await
    }

    async fn load(
        &self,
        account: &AccountId,
        txns: &[TxnId],
    ) -> Result<(AccountState, Vec<Option<TxnOutcome>>), StoreError> {
        self.chaos.log(|| format!("load {account} {}", txns.len()));
        self.read(self.inner.load(account, txns)).await
    }

    async fn txn(
        &self,
        account: &AccountId,
        txn: &TxnId,
    ) -> Result<Option<TxnOutcome>, StoreError> {
        self.read(self.inner.txn(account, txn)).await
    }

    async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        self.chaos.log(|| {
            let pages: Vec<String> = appends
                .iter()
                .map(|a| {
                    let sizes: Vec<String> = a.pages.iter().map(|p| p.len().to_string()).collect();
                    format!("{}@{}+{}", a.account, a.expected_version, sizes.join("+"))
                })
                .collect();
            format!("append {}", pages.join(" "))
        });
        self.chaos.pause().await;
        let (plans, injected) = self.plan_appends(&appends);
        let forward: Vec<Append> = appends
            .iter()
            .zip(&plans)
            .filter(|(_, p)| matches!(p, Plan::Forward | Plan::ForwardThenTimeout))
            .map(|(a, _)| a.clone())
            .collect();
        let sent = forward.len();
        let results = if forward.is_empty() {
            Vec::new()
        } else {
            self.inner.append(forward).await
        };
        if results.len() != sent {
            self.chaos.breach(
                "*",
                format!(
                    "append of {sent} accounts returned {} results",
                    results.len()
                ),
            );
        }
        self.check_atomicity(&appends, &plans, &results);
        let mut results = results.into_iter();
        let out: Vec<Appended> = appends
            .iter()
            .zip(plans.iter().zip(injected))
            .map(|(a, (plan, error))| match plan {
                Plan::Fail => Appended::failed(error.unwrap_or(StoreError::Throttled).into()),
                Plan::Forward => results.next().unwrap_or_else(no_result),
                Plan::ForwardThenTimeout => {
                    let r = results.next().unwrap_or_else(no_result);
                    let events: usize = a.pages[..r.pages.min(a.pages.len())]
                        .iter()
                        .map(|p| p.events.len())
                        .sum();
                    self.chaos
                        .silent_events
                        .fetch_add(events as u64, Ordering::Relaxed);
                    // Whatever was written, the caller only sees a timeout.
                    Appended::failed(timed_out().into())
                }
            })
            .collect();
        for r in &out {
            self.chaos
                .note(r.pages as u64 * 2 + u64::from(r.error.is_none()));
        }
        self.chaos.pause().await;
        out
    }

    async fn segments(
        &self,
        account: &AccountId,
        from: u64,
        limit: usize,
    ) -> Result<Vec<crate::domain::Segment>, StoreError> {
        Faulty::read(self, self.inner.segments(account, from, limit)).await
    }

    async fn read(
        &self,
        account: &AccountId,
        from: u64,
        to: u64,
    ) -> Result<Vec<Event>, StoreError> {
        self.chaos.log(|| format!("read {account} {from}..{to}"));
        Faulty::read(self, self.inner.read(account, from, to)).await
    }

    async fn accounts(
        &self,
        after: Option<&AccountId>,
        limit: usize,
    ) -> Result<Vec<(AccountId, u64)>, StoreError> {
        Faulty::read(self, self.inner.accounts(after, limit)).await
    }
}

impl<T> Faulty<T> {
    /// What to do with each account's append of a call: the faults to inject.
    fn plan_appends(&self, appends: &[Append]) -> (Vec<Plan>, Vec<Option<StoreError>>) {
        let mut plans = Vec::with_capacity(appends.len());
        let mut injected = Vec::with_capacity(appends.len());
        for _ in appends {
            let (plan, error) = if let Some(e) = self.chaos.fail() {
                (Plan::Fail, Some(e))
            } else if self.chaos.commit_timeout() {
                (Plan::ForwardThenTimeout, None)
            } else {
                (Plan::Forward, None)
            };
            plans.push(plan);
            injected.push(error);
        }
        (plans, injected)
    }

    /// The contract every store owes: one result per account append, its pages written a
    /// prefix of what was asked, and an error whenever not all of them were.
    fn check_atomicity(&self, appends: &[Append], plans: &[Plan], results: &[Appended]) {
        let sent = appends
            .iter()
            .zip(plans)
            .filter(|(_, p)| matches!(p, Plan::Forward | Plan::ForwardThenTimeout))
            .map(|(a, _)| a);
        for (a, r) in sent.zip(results) {
            let whole = r.pages == a.pages.len();
            if r.pages > a.pages.len() || whole == r.error.is_some() {
                self.chaos.breach(
                    a.account.as_str(),
                    format!(
                        "an append of {} pages answered {} written with error {:?}",
                        a.pages.len(),
                        r.pages,
                        r.error
                    ),
                );
            }
        }
    }
}

fn no_result() -> Appended {
    Appended::failed(StoreError::Unavailable("no result".into()).into())
}

impl<T: SnapshotStore> SnapshotStore for Faulty<T> {
    async fn get_many(&self, accounts: Vec<String>) -> Result<Vec<Option<Snapshot>>, StoreError> {
        self.chaos.log(|| format!("get_many {accounts:?}"));
        self.read(self.inner.get_many(accounts)).await
    }

    async fn put_many(&self, puts: Vec<SnapshotPut>) -> Vec<Result<(), SnapshotError>> {
        self.chaos.log(|| {
            let p: Vec<String> = puts
                .iter()
                .map(|p| {
                    format!(
                        "{}@{}->{}",
                        p.account, p.expected_version, p.snapshot.version
                    )
                })
                .collect();
            format!("put_many {}", p.join(" "))
        });
        self.chaos.pause().await;
        let plans: Vec<(Plan, Option<StoreError>)> = puts
            .iter()
            .map(|_| match self.chaos.fail() {
                Some(e) => (Plan::Fail, Some(e)),
                None if self.chaos.commit_timeout() => (Plan::ForwardThenTimeout, None),
                None => (Plan::Forward, None),
            })
            .collect();
        let forward: Vec<SnapshotPut> = puts
            .iter()
            .zip(&plans)
            .filter(|(_, (p, _))| *p != Plan::Fail)
            .map(|(p, _)| p.clone())
            .collect();
        let mut results = self.inner.put_many(forward).await.into_iter();
        let out = puts
            .iter()
            .zip(plans)
            .map(|(put, (plan, error))| match plan {
                Plan::Fail => Err(error.unwrap_or(StoreError::Throttled).into()),
                Plan::Forward => results
                    .next()
                    .unwrap_or_else(|| Err(StoreError::Unavailable("no result".into()).into())),
                Plan::ForwardThenTimeout => match results.next() {
                    Some(Ok(())) => {
                        let moved = put.snapshot.version - put.expected_version;
                        self.chaos
                            .silent_versions
                            .fetch_add(moved, Ordering::Relaxed);
                        Err(timed_out().into())
                    }
                    other => other
                        .unwrap_or_else(|| Err(StoreError::Unavailable("no result".into()).into())),
                },
            })
            .collect::<Vec<_>>();
        for r in &out {
            self.chaos.note(u64::from(r.is_ok()) + 2);
        }
        self.chaos.pause().await;
        out
    }
}

impl<T: Quarantine> Quarantine for Faulty<T> {
    async fn put(&self, record: Quarantined) -> Result<(), StoreError> {
        self.chaos.pause().await;
        if let Some(e) = self.chaos.fail() {
            return Err(e);
        }
        let timeout = self.chaos.commit_timeout();
        self.inner.put(record).await?;
        if timeout {
            self.chaos
                .silent_quarantined
                .fetch_add(1, Ordering::Relaxed);
            return Err(timed_out());
        }
        Ok(())
    }

    async fn park(&self, parked: Parked) -> Result<bool, StoreError> {
        self.chaos.pause().await;
        if let Some(e) = self.chaos.fail() {
            return Err(e);
        }
        self.inner.park(parked).await
    }

    async fn parked(&self, account: &str) -> Result<Option<Parked>, StoreError> {
        self.chaos.pause().await;
        if let Some(e) = self.chaos.fail() {
            return Err(e);
        }
        self.inner.parked(account).await
    }
}
