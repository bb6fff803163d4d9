//! The `tally` command-line interface. Subcommands (`serve`, `ingest`, `balance`, …)
//! arrive with the embedded backend; today it prints help and version.

use clap::{CommandFactory, Parser};

/// Event-sourced ledger projector: ingest transactions, fold them into balances.
#[derive(Debug, Parser)]
#[command(name = "tally", version, about, long_about = None)]
struct Cli {}

fn main() {
    let _cli = Cli::parse();
    // No subcommand exists yet: show what the tool is instead of doing nothing silently.
    let mut command = Cli::command();
    if command.print_help().is_err() {
        std::process::exit(1);
    }
}
