//! The randomness that changes what the services do — retry jitter (commands, the
//! projector's snapshot writes, Kinesis puts) and the seed of any hash map whose iteration
//! order would decide behaviour ([`hash_state`]; the projector's cache evicts by use order,
//! so it needs none) — drawn in one place, so the simulator (`tally sim`) can make a run
//! replayable from its seed.
//!
//! Production draws from the OS. A simulation seeds its own thread with [`seed_thread`];
//! from then on everything drawn on that thread follows from the seed (the simulator runs
//! all its tasks on one thread). Must never: be used for anything security-relevant, be
//! read by the domain, or be seeded outside a simulation.

use std::cell::Cell;

thread_local! {
    /// splitmix64 state of a simulation thread; `None`: draw from the OS.
    static SEEDED: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Makes this thread's draws follow `seed` (`None`: back to OS randomness).
pub fn seed_thread(seed: Option<u64>) {
    SEEDED.with(|s| s.set(seed));
}

/// A random `u64`: from the thread's seed in a simulation, else from the OS.
pub fn next_u64() -> u64 {
    SEEDED.with(|s| match s.get() {
        Some(state) => {
            let state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            s.set(Some(state));
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }
        None => {
            use std::hash::{BuildHasher, Hasher};
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_u8(0);
            h.finish()
        }
    })
}

/// The hasher of a map whose iteration order decides behaviour: OS-seeded in production,
/// drawn from the thread's seed in a simulation.
pub fn hash_state() -> foldhash::fast::SeedableRandomState {
    if SEEDED.with(Cell::get).is_some() {
        foldhash::fast::SeedableRandomState::with_seed(
            next_u64(),
            foldhash::SharedSeed::global_fixed(),
        )
    } else {
        foldhash::fast::SeedableRandomState::random()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seeded_thread_draws_the_same_sequence_again() {
        let draw = |seed| {
            seed_thread(Some(seed));
            let v: Vec<u64> = (0..4).map(|_| next_u64()).collect();
            seed_thread(None);
            v
        };
        assert_eq!(draw(7), draw(7));
        assert_ne!(draw(7), draw(8));
    }
}
