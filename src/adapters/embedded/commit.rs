//! Group commit: one writer thread takes every append request waiting for it and applies
//! them, in arrival order, in one durable write transaction — one fsync for all of them. While
//! it commits, new requests queue up and go together into the next. Concurrent HTTP commands
//! and bulk bodies share commits this way; each request's results are exactly what applying
//! it alone, at its place in that order, would give.
//!
//! Must never: answer a request before its transaction is durable, or reorder requests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use redb::Database;
use tokio::sync::oneshot;

use super::append::{append_group, failed_all};
use super::index::TxnIndex;
use crate::ports::{Append, Appended, StoreError};

/// Most requests applied in one transaction, and most pages: bounds one commit's memory and
/// the latency the first request of a group waits for the others.
pub const GROUP_REQUESTS_MAX: usize = 256;
pub const GROUP_PAGES_MAX: usize = 200_000;

/// A request, and where its results go back, with the request itself: the caller's thread
/// frees it, not the writer's (freeing another thread's memory is slow, and the writer is
/// the one thread every write waits for).
type Job = (Vec<Append>, oneshot::Sender<(Vec<Appended>, Vec<Append>)>);

/// The writer thread of one database. Dropping the last handle stops it and waits for it,
/// so the database file is closed when the store is.
pub struct Committer {
    jobs: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    counts: Arc<Counts>,
}

/// Write transactions committed, and append requests they carried.
#[derive(Debug, Default)]
pub struct Counts {
    pub commits: AtomicU64,
    pub requests: AtomicU64,
}

impl Committer {
    pub fn start(db: Arc<Database>, index: Arc<RwLock<TxnIndex>>) -> std::io::Result<Committer> {
        let (jobs, rx) = channel();
        let counts = Arc::new(Counts::default());
        let shared = counts.clone();
        let thread = std::thread::Builder::new()
            .name("tally-commit".into())
            .spawn(move || run(&db, &index, &rx, &shared))?;
        Ok(Committer {
            jobs: Some(jobs),
            thread: Some(thread),
            counts,
        })
    }

    /// How many commits carried how many requests so far.
    pub fn counts(&self) -> (u64, u64) {
        (
            self.counts.commits.load(Ordering::Relaxed),
            self.counts.requests.load(Ordering::Relaxed),
        )
    }

    /// Appends durably, possibly in one transaction with other concurrent requests.
    pub async fn append(&self, appends: Vec<Append>) -> Vec<Appended> {
        let n = appends.len();
        let (done, answer) = oneshot::channel();
        let sent = self.jobs.as_ref().map(|jobs| jobs.send((appends, done)));
        if !matches!(sent, Some(Ok(()))) {
            return failed_all(n, &gone());
        }
        match answer.await {
            Ok((results, _request)) => results,
            Err(_) => failed_all(n, &gone()),
        }
    }
}

fn gone() -> StoreError {
    StoreError::Unavailable("the embedded store's writer stopped".into())
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.jobs.take(); // the thread sees the channel close, finishes, and exits
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn run(db: &Database, index: &RwLock<TxnIndex>, rx: &Receiver<Job>, counts: &Counts) {
    while let Ok(first) = rx.recv() {
        let mut pages = pages_of(&first.0);
        let mut group = vec![first];
        while group.len() < GROUP_REQUESTS_MAX && pages < GROUP_PAGES_MAX {
            match rx.try_recv() {
                Ok(job) => {
                    pages += pages_of(&job.0);
                    group.push(job);
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        let requests: Vec<&[Append]> = group.iter().map(|(a, _)| a.as_slice()).collect();
        let results = append_group(db, index, &requests);
        counts.commits.fetch_add(1, Ordering::Relaxed);
        counts
            .requests
            .fetch_add(requests.len() as u64, Ordering::Relaxed);
        for ((request, done), result) in group.into_iter().zip(results) {
            let _ = done.send((result, request)); // a caller that gave up does not stop the others
        }
    }
}

fn pages_of(appends: &[Append]) -> usize {
    appends.iter().map(|a| a.pages.len()).sum()
}
