//! The `tally sim` command: runs seeds on worker threads, prints each failure with its
//! settings and the one command that replays it, and a summary with seeds per second.
//!
//! Must never: let a failing seed pass silently, or print a reproduction command that
//! would run something else.

use std::cell::RefCell;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Instant;

use crate::sim::backend::BackendKind;
use crate::sim::history::Class;
use crate::sim::{Options, SeedReport, run_seed};

/// `println!` that stops quietly when stdout is closed (`tally sim … | head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if writeln!(std::io::stdout().lock(), $($arg)*).is_err() {
            std::process::exit(0);
        }
    }};
}

/// Arguments of `tally sim`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimArgs {
    /// Run this one seed (and print what it did).
    #[arg(long)]
    pub seed: Option<u64>,
    /// How many seeds to run, from `--first`.
    #[arg(long, default_value_t = 200)]
    pub seeds: u64,
    #[arg(long, default_value_t = 0)]
    pub first: u64,
    /// Worker threads (default: the machine's cores).
    #[arg(long)]
    pub jobs: Option<usize>,
    /// Force a backend (default: the seed chooses; a third run on the embedded store).
    #[arg(long, value_parser = ["model", "embedded"])]
    pub backend: Option<String>,
    /// Stop at the first failing seed and report how long it took to find.
    #[arg(long)]
    pub until_fail: bool,
    /// Run seeds until one hits this class of violation; print how many it took (how
    /// the defect-detection figures in BENCHMARKS.md are measured).
    #[arg(long, value_parser = ["new", "issue10"])]
    pub hunt: Option<String>,
    /// Run every seed twice and fail if the two runs differ.
    #[arg(long)]
    pub check_determinism: bool,
    /// The real embedded store on real threads (not replayable; the workload is seeded).
    #[arg(long)]
    pub stress: bool,
}

thread_local! {
    /// Panic messages of this thread while a simulation runs on it.
    static PANICS: RefCell<Option<Vec<String>>> = const { RefCell::new(None) };
}

/// Starts (`true`) or ends (`false`) capturing this thread's panics; returns those caught.
pub fn capture_panics(on: bool) -> Vec<String> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let captured = PANICS.with(|p| match p.borrow_mut().as_mut() {
                Some(list) => {
                    list.push(info.to_string());
                    true
                }
                None => false,
            });
            if !captured {
                default(info);
            }
        }));
    });
    PANICS.with(|p| {
        let mut p = p.borrow_mut();
        let caught = p.take().unwrap_or_default();
        if on {
            *p = Some(Vec::new());
        }
        caught
    })
}

/// The text of a caught panic payload.
pub fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .map_or_else(|| "panic".to_owned(), |s| format!("panic: {s}"))
}

fn options(args: &SimArgs) -> Options {
    Options {
        backend: match args.backend.as_deref() {
            Some("embedded") => Some(BackendKind::Embedded),
            Some(_) => Some(BackendKind::Model),
            None => None,
        },
    }
}

/// The command that replays `seed` exactly as it ran.
pub fn reproduce(seed: u64, args: &SimArgs) -> String {
    let mut cmd = format!("tally sim --seed {seed}");
    if let Some(b) = &args.backend {
        cmd.push_str(&format!(" --backend {b}"));
    }
    for (on, flag) in [(args.stress, " --stress")] {
        if on {
            cmd.push_str(flag);
        }
    }
    let features: Vec<&str> = [
        (cfg!(feature = "mutation-month"), "mutation-month"),
        (cfg!(feature = "mutation-overdraft"), "mutation-overdraft"),
    ]
    .into_iter()
    .filter_map(|(on, f)| on.then_some(f))
    .collect();
    if !features.is_empty() {
        let rest = cmd.trim_start_matches("tally ");
        cmd = format!(
            "cargo run --release --features {} -- {rest}",
            features.join(",")
        );
    }
    cmd
}

fn run_one(seed: u64, args: &SimArgs) -> SeedReport {
    let opts = options(args);
    if args.stress {
        return crate::sim::stress::run(seed);
    }
    let report = run_seed(seed, opts);
    if args.check_determinism {
        let again = run_seed(seed, opts);
        if again.trace != report.trace {
            let mut r = report;
            r.violations.push(crate::sim::history::Violation::new(
                None,
                format!(
                    "not deterministic: trace {:#x} then {:#x}",
                    r.trace, again.trace
                ),
            ));
            return r;
        }
    }
    report
}

fn print_failure(r: &SeedReport, args: &SimArgs) {
    eprintln!("\nFAILED seed {} ({:?} backend)", r.seed, r.backend);
    eprintln!("  settings: {:?}", r.config);
    eprintln!("  faults injected: {:?}", r.injected);
    for v in r.failures().iter().take(12) {
        eprintln!("  {v}");
    }
    let n = r.failures().len();
    if n > 12 {
        eprintln!("  … {} more", n - 12);
    }
    eprintln!("  reproduce: {}", reproduce(r.seed, args));
}

/// `tally sim`.
pub fn main(args: &SimArgs) -> ExitCode {
    if let Some(seed) = args.seed {
        let r = run_one(seed, args);
        say!(
            "seed {seed} ({:?} backend): {} commands, {} events stored, trace {:#018x}\n  settings: {:?}\n  faults injected: {:?}\n  exercised: {:?}",
            r.backend,
            r.commands,
            r.events,
            r.trace,
            r.config,
            r.injected,
            r.coverage
        );
        for v in &r.violations {
            say!("  {v}");
        }
        return if r.failures().is_empty() {
            say!("seed {seed}: ok");
            ExitCode::SUCCESS
        } else {
            say!("reproduce: {}", reproduce(seed, args));
            ExitCode::FAILURE
        };
    }
    let started = Instant::now();
    let jobs = args
        .jobs
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = Arc::new(AtomicU64::new(args.first));
    let stop = Arc::new(AtomicBool::new(false));
    let tally: Arc<Mutex<Tally>> = Arc::default();
    let end = args.first.saturating_add(args.seeds);
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (next, stop, tally, args) =
                (next.clone(), stop.clone(), tally.clone(), args.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let seed = next.fetch_add(1, Ordering::SeqCst);
                    if seed >= end {
                        return;
                    }
                    let r = run_one(seed, &args);
                    let mut t = tally
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner);
                    t.add(&r, &args, started);
                    if args.until_fail && !r.failures().is_empty() {
                        stop.store(true, Ordering::SeqCst);
                    }
                    if hunted(&r, &args) && t.hunted.is_none() {
                        t.hunted = Some((r.seed, started.elapsed().as_secs_f64(), t.seeds));
                        stop.store(true, Ordering::SeqCst);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    let t = tally
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    t.print(started);
    if let Some(class) = &args.hunt {
        return match t.hunted {
            Some((seed, secs, n)) => {
                say!("hunt {class}: found by seed {seed} after {n} seeds and {secs:.1} s");
                ExitCode::SUCCESS
            }
            None => {
                say!("hunt {class}: not found in {} seeds", t.seeds);
                ExitCode::FAILURE
            }
        };
    }
    if t.failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Whether a seed hit the class `--hunt` looks for.
fn hunted(r: &SeedReport, args: &SimArgs) -> bool {
    let Some(class) = args.hunt.as_deref() else {
        return false;
    };
    let class = match class {
        "issue10" => Class::Issue10,
        _ => Class::New,
    };
    r.violations.iter().any(|v| v.class == class)
}

#[derive(Default)]
struct Tally {
    seeds: u64,
    commands: u64,
    events: u64,
    failed: Vec<u64>,
    first_failure: Option<(u64, f64, u64)>,
    hunted: Option<(u64, f64, u64)>,
    injected: std::collections::BTreeMap<&'static str, u64>,
    coverage: std::collections::BTreeMap<&'static str, u64>,
}

impl Tally {
    fn add(&mut self, r: &SeedReport, args: &SimArgs, started: Instant) {
        self.seeds += 1;
        for (k, v) in &r.injected {
            *self.injected.entry(k).or_default() += v;
        }
        for (k, v) in &r.coverage {
            *self.coverage.entry(k).or_default() += v;
        }
        self.commands += r.commands as u64;
        self.events += r.events;
        if !r.failures().is_empty() {
            print_failure(r, args);
            self.failed.push(r.seed);
            if self.first_failure.is_none() {
                self.first_failure = Some((r.seed, started.elapsed().as_secs_f64(), self.seeds));
            }
        }
    }

    fn print(&self, started: Instant) {
        let secs = started.elapsed().as_secs_f64();
        say!(
            "sim: {} seeds in {secs:.1} s ({:.1} seeds/s; {} commands, {} events): {} failed",
            self.seeds,
            self.seeds as f64 / secs.max(1e-9),
            self.commands,
            self.events,
            self.failed.len()
        );
        say!("  exercised: {:?}", self.coverage);
        say!("  faults injected: {:?}", self.injected);
        if let Some((seed, at, n)) = self.first_failure {
            say!("  first failure: seed {seed}, after {n} seeds and {at:.1} s");
        }
    }
}
