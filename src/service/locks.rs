//! Per-account turns inside one process: a command-service call holds the turns of its
//! accounts while it decides, appends and publishes, so two calls of the same process on the
//! same account (concurrent bulk bodies, a single command during an ingest) take turns
//! instead of deciding on the same tip and racing to a conflict. Across processes the
//! conditional append still decides; this only saves the lost races a process can see.
//!
//! Must never deadlock: a call takes all its turns at once, in one global order (shard
//! index), and takes no other turn while holding them.

use std::sync::Arc;

use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::codec::bucket::bucket;
use crate::domain::AccountId;

/// Shards of the turn table: accounts hashing to one shard share a turn.
pub const TURN_SHARDS: u32 = 4_096;

/// The turn table of one command service (shared by its clones).
pub struct Turns {
    shards: Vec<Arc<Mutex<()>>>,
}

impl Default for Turns {
    fn default() -> Self {
        Turns {
            shards: (0..TURN_SHARDS).map(|_| Arc::new(Mutex::new(()))).collect(),
        }
    }
}

/// Turns held; dropping it gives them back.
pub struct Held {
    _guards: Vec<OwnedMutexGuard<()>>,
}

impl Turns {
    /// Waits for the turns of every account in `accounts`, in shard order.
    pub async fn take<'a>(&self, accounts: impl Iterator<Item = &'a AccountId>) -> Held {
        let mut shards: Vec<u32> = accounts.map(|a| bucket(a.as_str(), TURN_SHARDS)).collect();
        shards.sort_unstable();
        shards.dedup();
        let mut guards = Vec::with_capacity(shards.len());
        for s in shards {
            guards.push(self.shards[s as usize].clone().lock_owned().await);
        }
        Held { _guards: guards }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> AccountId {
        AccountId::new(s).unwrap()
    }

    #[tokio::test]
    async fn a_second_call_on_a_shared_account_waits_and_disjoint_calls_do_not() {
        let turns = Arc::new(Turns::default());
        let held = turns.take([id("a"), id("b")].iter()).await;
        // Disjoint accounts (different shards) go at once.
        let (c, d) = (id("c"), id("d"));
        assert_ne!(bucket("c", TURN_SHARDS), bucket("a", TURN_SHARDS));
        let other = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            turns.take([c, d].iter()),
        )
        .await;
        assert!(other.is_ok());
        // An overlapping call waits until the first gives its turns back.
        let t = turns.clone();
        let waiting = tokio::spawn(async move {
            let _h = t.take([id("b"), id("z")].iter()).await;
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished());
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(1), waiting)
            .await
            .expect("the turn came")
            .unwrap();
    }
}
