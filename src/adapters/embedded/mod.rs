//! The embedded backend: a local redb database (events, markers, tips, snapshots,
//! quarantine) with DynamoDB's conditional semantics, and an in-process stream with shards
//! and an event source mapping. Needs nothing but the Rust toolchain.

mod append;
pub mod commit;
mod index;
pub mod store;
pub mod stream;

pub use store::EmbeddedStore;
