//! Subcommands, one file each.

mod check_inject;
mod explain;
mod load;
mod matrix;
mod mesh;
mod test;

pub use load::manifest_files;

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
    /// Run the local mesh of DIR for real (network namespaces, proxies, apps); Ctrl-C
    /// removes it. Needs root.
    Up(mesh::UpArgs),
    /// Remove the local mesh, also after a crash.
    Down,
    /// Pods, IPs, identities and proxy readiness of the local mesh.
    Status,
    /// Run a command inside a pod's network namespace: exec NS/POD -- CMD...
    Exec(mesh::ExecArgs),
    /// The local mesh's flow log, filtered, optionally followed.
    Flows(mesh::FlowsArgs),
    /// The control plane: watches manifests or the Kubernetes API, runs the CA,
    /// streams state to proxies, serves the injection webhook.
    Serve(crate::serve::ServeArgs),
    /// Pods that should have a sidecar and do not (reads the cluster).
    CheckInject(check_inject::CheckInjectArgs),
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
        Command::Up(a) => mesh::up(a),
        Command::Down => crate::mesh::ops::down(),
        Command::Status => crate::mesh::ops::status(),
        Command::Exec(a) => mesh::exec(a),
        Command::Flows(a) => mesh::flows(a),
        Command::Serve(a) => crate::serve::run(a).map(|()| ExitCode::SUCCESS),
        Command::CheckInject(a) => check_inject::run(a),
    }
}
