//! Every bound of the ledger in one place, and the configurable business policy.
//!
//! Named limits keep growth explicit (TigerBeetle's TIGER_STYLE): units and qualifiers go
//! last (`record_bytes_max`). Nothing here reads the environment; `config` builds a
//! [`Policy`] from it and passes it in.

/// Longest account id or transaction id, in bytes (ASCII only, so also in chars).
pub const ID_BYTES_MAX: usize = 64;

/// Hard ceiling for any single amount, whatever the policy says.
pub const AMOUNT_HARD_MAX: i64 = i64::MAX;

/// Default largest amount of one deposit or withdrawal: 10^12 minor units (ten billion in a
/// two-decimal currency). A typo with three extra zeros is rejected, not booked.
pub const AMOUNT_MAX_DEFAULT: i64 = 1_000_000_000_000;

/// Most entries (events plus refusals) in one page write, the event store's unit of
/// conditional append. A page becomes one DynamoDB `TransactWriteItems`: the page item, one
/// outcome marker per entry and at most one reversal-target update per event.
pub const PAGE_EVENTS_MAX: usize = 32;

/// Items one DynamoDB `TransactWriteItems` may carry.
pub const TRANSACT_ITEMS_MAX: usize = 100;

// The page item, and per entry one outcome marker plus at most one target update.
#[allow(clippy::int_plus_one)]
const _: () = assert!(1 + 2 * PAGE_EVENTS_MAX <= TRANSACT_ITEMS_MAX);

/// Versions per segment summary (`domain::segment`): segment `k` (from 0) covers versions
/// `k * SEGMENT_EVENTS + 1 ..= (k + 1) * SEGMENT_EVENTS`. A point-in-time balance reads one
/// summary per segment. Fixed for the life of a store: changing it orphans the summaries.
pub const SEGMENT_EVENTS: u64 = 1024;

/// How often the command service reloads and decides again after losing a race.
pub const APPEND_RETRIES_MAX: u32 = 16;

/// Ceiling of the jittered backoff between such retries.
pub const RETRY_DELAY_MS_MAX: u64 = 50;

/// Largest encoded stream record, header included. Kinesis accepts 1 MiB of data plus the
/// partition key per record; we stay one KiB under it so the key always fits.
pub const RECORD_BYTES_MAX: usize = 1024 * 1024 - 1024;

/// Default number of partition-key buckets. Fixed for the lifetime of a stream: changing it
/// moves accounts between keys and so breaks per-account ordering in flight.
pub const BUCKETS_DEFAULT: u32 = 1024;

/// Most records in one Lambda batch from a Kinesis event source mapping.
pub const BATCH_RECORDS_MAX: usize = 10_000;

/// Business rules that a deployment may set. Everything else in the domain is fixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Largest amount accepted in one deposit or withdrawal (minor units, ≥ 1).
    pub amount_max: i64,
    /// How far below zero a withdrawal may take a balance (minor units, ≥ 0).
    pub overdraft_limit: i64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            amount_max: AMOUNT_MAX_DEFAULT,
            overdraft_limit: 0,
        }
    }
}

/// Why a [`Policy`] cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("amount_max must be between 1 and {AMOUNT_HARD_MAX}, got {0}")]
    AmountMax(i64),
    #[error("overdraft_limit must be between 0 and 9223372036854775807, got {0}")]
    OverdraftLimit(i64),
}

impl Policy {
    /// Checks the bounds once at start, so `decide` can rely on them.
    pub fn new(amount_max: i64, overdraft_limit: i64) -> Result<Self, PolicyError> {
        if amount_max < 1 {
            return Err(PolicyError::AmountMax(amount_max));
        }
        if overdraft_limit < 0 {
            return Err(PolicyError::OverdraftLimit(overdraft_limit));
        }
        Ok(Self {
            amount_max,
            overdraft_limit,
        })
    }
}
