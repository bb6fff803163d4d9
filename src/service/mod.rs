//! Orchestration of the domain over ports. Today: the projector's pure batch fold.

pub mod command;
pub mod metrics;
pub mod projector;
