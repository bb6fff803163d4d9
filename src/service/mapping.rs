//! The event source mapping, as Lambda runs it for a Kinesis stream, written once for every
//! place tally plays it locally: the embedded stream and the Kinesis poller (and the
//! simulator). Per shard it reads a batch (at most `batch_size` records, waiting up to
//! `window` for a fuller one), hands it to a [`BatchHandler`], and then settles the shard:
//! everything done → move past the batch; a failure reported at record `i` → read again
//! from `i` after a pause; still failing after `retries_max` retries → give up on record `i`
//! (the handler is told, so a catch-up from the event store can project its events) and
//! move past it.
//!
//! It knows nothing of transports (a [`ShardReader`] does) nor of projection (the handler
//! does). No wall clock and no randomness: pauses are `tokio::time::sleep` of a fixed
//! schedule, so a run under paused time replays exactly. It must never move a shard past
//! a record that was neither handled nor given up on.

use std::future::Future;
use std::time::Duration;

use crate::codec::batch::RecordBatch;
use crate::ports::{EventStore, Quarantine, SnapshotStore};
use crate::service::projector::{Projection, Projector};

/// Event source mapping settings (the subset of Lambda's that matters here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Most records per batch (Lambda: `BatchSize`).
    pub batch_size: usize,
    /// How long to wait for a fuller batch (Lambda: `MaximumBatchingWindowInSeconds`).
    pub window: Duration,
    /// Retries of a failing record before the mapping gives up on it (Lambda:
    /// `MaximumRetryAttempts`). Its events stay in the event store for the catch-up.
    pub retries_max: u32,
}

impl Default for Mapping {
    fn default() -> Self {
        Mapping {
            batch_size: 1_000,
            window: Duration::from_millis(5),
            retries_max: 8,
        }
    }
}

/// Where batches go. The projector is one; a test or the simulator may bring its own.
pub trait BatchHandler: Send + Sync {
    /// Handles one batch; reports the records to retry.
    fn handle(&self, batch: &RecordBatch) -> impl Future<Output = Projection> + Send;

    /// The mapping gave up on `batch`'s record `record` after its retries.
    fn gave_up(&self, batch: &RecordBatch, record: usize);

    /// The shard had nothing to read: a moment for background repair.
    fn idle(&self) -> impl Future<Output = ()> + Send;
}

impl<E: EventStore, S: SnapshotStore, Q: Quarantine> BatchHandler for Projector<E, S, Q> {
    fn handle(&self, batch: &RecordBatch) -> impl Future<Output = Projection> + Send {
        self.project(batch)
    }

    fn gave_up(&self, batch: &RecordBatch, record: usize) {
        Projector::gave_up(self, batch, record);
    }

    async fn idle(&self) {
        if let Err(e) = self.catch_up_if_behind().await {
            tracing::error!(error = %e, "catch-up after a give-up failed; trying again when idle");
        }
    }
}

/// One shard, as a mapping reads it. Records read but not yet settled are read again
/// (from the first unsettled one) by the next `read`.
pub trait ShardReader: Send {
    /// Appends up to `limit` records following those already read to `batch`; returns how
    /// many. 0: nothing to read now (or the transport failed; it logs why).
    fn read(&mut self, limit: usize, batch: &mut RecordBatch)
    -> impl Future<Output = usize> + Send;

    /// The first `done` records of `batch` (as read since the last settle) are finished:
    /// move the shard's position past them. The rest will be read again.
    fn settle(&mut self, done: usize, batch: &RecordBatch);
}

/// A shard's retry state between steps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardState {
    /// Retries so far of the batch starting at the shard's position.
    pub retries: u32,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing to read.
    Idle,
    /// A batch of `records` was handled; the first `done` of them are settled.
    Handled { records: usize, done: usize },
}

/// The pause before retry `attempt` (1-based): 20 ms doubling, at most 1.28 s.
pub fn retry_delay(attempt: u32) -> Duration {
    Duration::from_millis(10 << attempt.clamp(1, 7))
}

impl Mapping {
    /// One round on one shard: read, hand over, settle, and pause before a retry.
    pub async fn step<R: ShardReader, H: BatchHandler>(
        &self,
        state: &mut ShardState,
        reader: &mut R,
        handler: &H,
        batch: &mut RecordBatch,
    ) -> Step {
        let size = self.batch_size.max(1);
        batch.clear();
        let mut records = reader.read(size, batch).await;
        if records == 0 {
            handler.idle().await;
            return Step::Idle;
        }
        if records < size && !self.window.is_zero() && state.retries == 0 {
            tokio::time::sleep(self.window).await;
            records += reader.read(size - records, batch).await;
        }
        let projection = handler.handle(batch).await;
        // An index past the batch would be a handler bug: retry the last record rather
        // than skip anything.
        let done = match projection.lowest_failure().map(|i| i.min(records - 1)) {
            None => {
                state.retries = 0;
                records
            }
            Some(i) if state.retries >= self.retries_max => {
                handler.gave_up(batch, i);
                state.retries = 0;
                i + 1
            }
            Some(i) => {
                state.retries += 1;
                i
            }
        };
        reader.settle(done, batch);
        if state.retries > 0 {
            tokio::time::sleep(retry_delay(state.retries)).await;
        }
        Step::Handled { records, done }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// A shard of numbered records; `position` is the first unsettled one.
    struct Log {
        records: Vec<u8>,
        position: usize,
        read: usize,
    }

    impl ShardReader for Log {
        async fn read(&mut self, limit: usize, batch: &mut RecordBatch) -> usize {
            let from = self.position + self.read;
            let to = (from + limit).min(self.records.len());
            for i in from..to {
                batch.push("s", &i.to_string(), &[self.records[i]]);
            }
            self.read += to - from;
            to - from
        }

        fn settle(&mut self, done: usize, _: &RecordBatch) {
            self.position += done;
            self.read = 0;
        }
    }

    /// Fails every record whose byte is in `bad`, `fails` times each.
    struct Handler {
        bad: Vec<u8>,
        seen: Mutex<Vec<Vec<u8>>>,
        given_up: Mutex<Vec<u8>>,
    }

    impl BatchHandler for Handler {
        async fn handle(&self, batch: &RecordBatch) -> Projection {
            let bytes: Vec<u8> = (0..batch.len())
                .map(|i| batch.data(i).unwrap()[0])
                .collect();
            let failed = (0..batch.len())
                .filter(|&i| self.bad.contains(&bytes[i]))
                .collect();
            self.seen.lock().unwrap().push(bytes);
            Projection { failed }
        }

        fn gave_up(&self, batch: &RecordBatch, record: usize) {
            let byte = batch.data(record).unwrap()[0];
            self.given_up.lock().unwrap().push(byte);
        }

        async fn idle(&self) {}
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_is_retried_from_the_lowest_failed_record_then_given_up() {
        let mapping = Mapping {
            batch_size: 3,
            window: Duration::ZERO,
            retries_max: 2,
        };
        let mut log = Log {
            records: (0..5).collect(),
            position: 0,
            read: 0,
        };
        let handler = Handler {
            bad: vec![1],
            seen: Mutex::default(),
            given_up: Mutex::default(),
        };
        let (mut state, mut batch) = (ShardState::default(), RecordBatch::new());
        let mut steps = Vec::new();
        while let Step::Handled { records, done } = mapping
            .step(&mut state, &mut log, &handler, &mut batch)
            .await
        {
            steps.push((records, done));
        }
        // [0,1,2]: 0 done, retry from 1 twice, then give up on 1; then [2,3,4].
        assert_eq!(steps, [(3, 1), (3, 0), (3, 1), (3, 3)]);
        assert_eq!(
            *handler.seen.lock().unwrap(),
            [vec![0, 1, 2], vec![1, 2, 3], vec![1, 2, 3], vec![2, 3, 4]]
        );
        assert_eq!(*handler.given_up.lock().unwrap(), [1]);
        assert_eq!(log.position, 5);
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_waits_once_for_a_fuller_batch() {
        let mapping = Mapping {
            batch_size: 10,
            window: Duration::from_millis(5),
            retries_max: 0,
        };
        let mut log = Log {
            records: vec![7; 4],
            position: 0,
            read: 0,
        };
        let handler = Handler {
            bad: vec![],
            seen: Mutex::default(),
            given_up: Mutex::default(),
        };
        let (mut state, mut batch) = (ShardState::default(), RecordBatch::new());
        let before = tokio::time::Instant::now();
        let step = mapping
            .step(&mut state, &mut log, &handler, &mut batch)
            .await;
        assert_eq!(
            step,
            Step::Handled {
                records: 4,
                done: 4
            }
        );
        assert_eq!(before.elapsed(), Duration::from_millis(5));
        assert_eq!(
            mapping
                .step(&mut state, &mut log, &handler, &mut batch)
                .await,
            Step::Idle
        );
    }
}
