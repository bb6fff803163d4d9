//! One integration test binary (compiles once): the state × event matrix against an
//! independent reference model, property tests, codec robustness, bulk rows and the
//! projector's batch fold.

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
