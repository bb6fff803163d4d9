//! tally: an event-sourced ledger projector. Commands become state-carrying events, events
//! travel on a stream partitioned by account bucket, and a batched fold keeps one snapshot
//! per account. See `DESIGN.md` in the repository for the flow and the invariants.
//!
//! # Layout
//! - [`domain`]: pure business logic — ids, money, time, commands and `decide`, events,
//!   snapshots and `apply`, limits. No I/O, no async, no clock.
//! - [`codec`]: bytes ⇄ domain — the versioned, checksummed rkyv record envelope and its
//!   aggregation, the stored page format, the account → partition key function, the bulk
//!   CSV/NDJSON row format, and the lean reader of Lambda's Kinesis event JSON.
//! - [`service`]: orchestration. Today the pure batch fold of the projector, which turns a
//!   Kinesis batch into one snapshot write per touched account.

pub mod adapters;
pub mod app;
pub mod codec;
pub mod domain;
pub mod http;
pub mod ports;
pub mod service;
pub mod workload;
