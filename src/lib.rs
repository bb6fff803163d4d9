//! tally: an event-sourced ledger projector. Commands become state-carrying events, events
//! travel on a stream partitioned by account bucket, and a batched fold keeps one snapshot
//! per account. See `DESIGN.md` in the repository for the flow and the invariants.
//!
//! # Layout
//! - [`domain`]: pure business logic — ids, money, time, commands and `decide`, events,
//!   pages, snapshots and `apply`, limits. No I/O, no async, no clock.
//! - [`codec`]: bytes ⇄ domain — the versioned, checksummed rkyv record envelope and its
//!   aggregation, stored pages, small stored values, the account → partition key function,
//!   the bulk CSV/NDJSON rows, RFC 3339 time, the JSON views, and the lean reader of
//!   Lambda's Kinesis event JSON.
//! - [`ports`]: the traits services depend on (`EventStore`, `SnapshotStore`,
//!   `EventPublisher`, `Quarantine`) and their typed errors.
//! - [`service`]: the orchestrators — `command` (decide + conditional append + publish),
//!   `projector` (pure fold in `projector::fold`, I/O around it), `query`, `ingest`,
//!   `audit` (verify, replay), `metrics`.
//! - [`adapters`]: `embedded` (redb store, in-process stream and event source mapping) and
//!   `aws` (DynamoDB store, Kinesis publisher, Kinesis poller).
//! - [`http`]: the axum router of the HTTP API.
//! - [`config`]: the one typed configuration, built once from flags and `TALLY_*`
//!   variables (the only module that reads the environment).
//! - [`app`]: the embedded composition root used by the CLI and tests.
//! - [`lambda`]: the AWS wiring shared by the Lambda entry points in `src/bin/` and the
//!   CLI's AWS backend.
//! - [`cli`]: the CLI's data commands (`ingest`, `balance`, `history`, `verify`, `replay`),
//!   written once over the ports for both backends; `src/main.rs` parses and dispatches.
//! - [`workload`]: the reproducible workload generator behind `tally gen`.
//! - [`entropy`]: the randomness that changes behaviour (retry jitter, cache eviction
//!   order), in one place so a simulation can replay it from its seed.
//! - [`sim`]: `tally sim`, the deterministic simulator of the whole pipeline (seeded
//!   faults, interleavings and workload; a checker built on the reference model).

pub mod adapters;
pub mod allocator;
pub mod app;
pub mod cli;
pub mod codec;
pub mod config;
pub mod domain;
pub mod entropy;
pub mod http;
pub mod lambda;
pub mod ports;
pub mod service;
pub mod sim;
pub mod workload;
