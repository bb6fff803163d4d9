//! mimalloc, the allocator of the binaries, tuned for how tally allocates.
//!
//! mimalloc returns memory it has not reused for a while to the OS (`purge_delay`: 1 s in
//! the version built here) and the kernel faults it back in, zeroed, when it is used again.
//! An ingest window allocates and frees hundreds of megabytes; with transparent huge pages
//! (the default of most Linux distributions) each such fault clears up to 2 MiB. Profiled on
//! the 1M-row Zipf ingest: the kernel's `clear_page_erms` was 14 % of all samples and 17 %
//! of the writer thread's, from 9,000–62,000 page faults; with freed memory kept 10 s, 840.
//! The cost: memory freed after a burst goes back to the OS 10 s later instead of 1 s.

use std::ffi::c_long;

/// `mi_option_purge_delay`'s number in mimalloc's `mi_option_t` (v2 and v3 alike; the Rust
/// bindings leave the constant out).
const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
/// mimalloc's default for it: finding it confirms the number before anything is changed.
const PURGE_DELAY_DEFAULT_MS: c_long = 1_000;
/// How long freed memory stays with the process before mimalloc returns it to the OS.
pub const PURGE_DELAY_MS: c_long = 10_000;

/// Keeps freed memory [`PURGE_DELAY_MS`] before returning it. Changes nothing, and returns
/// false, if the option does not hold mimalloc's default: a `MIMALLOC_PURGE_DELAY` set in
/// the environment wins, and so does a mimalloc whose option table is not the one expected.
pub fn keep_freed_memory() -> bool {
    // SAFETY: both calls read or write one integer of mimalloc's option table, which is
    // initialized on first use; the option number is below `_mi_option_last` in every
    // mimalloc release, and any value is a valid purge delay.
    unsafe {
        if libmimalloc_sys::mi_option_get(PURGE_DELAY) != PURGE_DELAY_DEFAULT_MS {
            return false;
        }
        libmimalloc_sys::mi_option_set(PURGE_DELAY, PURGE_DELAY_MS);
    }
    true
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_purge_delay_is_set_once_and_reads_back() {
        assert!(
            super::keep_freed_memory(),
            "option 15 holds mimalloc's default"
        );
        // SAFETY: as in `keep_freed_memory`.
        let now = unsafe { libmimalloc_sys::mi_option_get(super::PURGE_DELAY) };
        assert_eq!(now, super::PURGE_DELAY_MS);
        assert!(
            !super::keep_freed_memory(),
            "a changed option is left alone"
        );
    }
}
