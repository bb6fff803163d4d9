//! The `tally` command-line interface.

use clap::Parser;

/// Event-sourced ledger projector: ingest transactions, fold them into balances.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    println!(
        "tally {}: no subcommands yet; see `tally --help`.",
        env!("CARGO_PKG_VERSION")
    );
}
