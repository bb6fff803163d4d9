//! The reference ledger lives in `tally::sim::reference` so the simulator's checker and
//! these tests share one copy; it is still written apart from `src/domain`.

pub use tally::sim::reference::*;
