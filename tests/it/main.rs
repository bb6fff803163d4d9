//! One integration test binary (compiles once): the state × event matrix against an
//! independent reference model, property tests, codec robustness, bulk rows and the
//! projector's batch fold.

// The command service's futures over the DynamoDB store, awaited inside test helpers, nest
// deeper than the default query depth allows when rustc lays them out (seen without
// incremental compilation, as CI builds).
#![recursion_limit = "256"]

mod aws;
mod aws_cli;
mod backstop;
mod cache_pressure;
mod clients;
mod codec_robustness;
mod cost;
mod crash;
mod faults;
mod harness;
mod http;
mod lambda;
mod matrix;
mod parking;
mod pipeline;
mod projector;
mod properties;
mod quarantine;
mod races;
mod reference;
mod rows;
mod sim;
mod store_contract;
