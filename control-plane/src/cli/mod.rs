//! Subcommands, one file each.

mod explain;
mod load;
mod matrix;
mod test;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "palisade",
    version,
    about = "Zero-trust enforcement for Kubernetes: policy, identity, proxies"
)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every tier, policy and rule considered for one connection, and which one decided.
    Explain(explain::ExplainArgs),
    /// Who can reach whom: a pod x pod truth table.
    Matrix(matrix::MatrixArgs),
    /// Run policy test scenarios (conformance format); exit 1 on a failing expectation.
    Test(test::TestArgs),
}

/// Human-readable text, or stable JSON for scripts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum Output {
    #[default]
    Text,
    Json,
}

pub fn run(args: Args) -> anyhow::Result<ExitCode> {
    match args.command {
        Command::Explain(a) => explain::run(a),
        Command::Matrix(a) => matrix::run(a),
        Command::Test(a) => test::run(a),
    }
}
