//! Orchestration of the domain over ports. Today: the projector's pure batch fold.

pub mod audit;
pub mod backstop;
pub mod command;
pub mod ingest;
pub mod locks;
pub mod mapping;
pub mod metrics;
pub mod projector;
pub mod quarantine;
pub mod query;
mod tips;
