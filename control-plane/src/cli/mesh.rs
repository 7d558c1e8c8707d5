//! `up`, `down`, `status`, `exec`, `flows`: the local mesh (see `crate::mesh`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{load, Output};
use crate::mesh::{self, ops};

#[derive(Args, Debug)]
pub struct UpArgs {
    /// The manifests: Namespaces, Pods (status.podIP, container commands), policies.
    dir: PathBuf,
    /// Lifetime of the proxies' certificates (renewed at half-life).
    #[arg(long, default_value_t = 86_400)]
    cert_lifetime_secs: u64,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// NAMESPACE/POD
    pod: String,
    /// The command and its arguments (after `--`).
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct FlowsArgs {
    /// Only flows with this pod (NAMESPACE/NAME) at either end.
    #[arg(long)]
    pod: Option<String>,
    #[arg(long)]
    namespace: Option<String>,
    /// allow or deny
    #[arg(long)]
    verdict: Option<String>,
    /// Flows decided by a reference containing this (e.g. `cnp/front/`).
    #[arg(long)]
    policy: Option<String>,
    /// Keep printing new records.
    #[arg(long, short = 'f')]
    follow: bool,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

pub fn up(a: UpArgs) -> anyhow::Result<ExitCode> {
    let files = load::manifest_files(&a.dir)?;
    let (compiled, _) = load::compile(std::slice::from_ref(&a.dir))?;
    let mut mesh = mesh::up::start(&a.dir, &files, &compiled, a.cert_lifetime_secs)?;
    println!("{}", mesh::up::summary(&mesh.record, &compiled, &a.dir));
    println!("mesh is up");
    mesh::up::wait(&mut mesh)?;
    drop(mesh);
    println!("mesh removed");
    Ok(ExitCode::SUCCESS)
}

pub fn exec(a: ExecArgs) -> anyhow::Result<ExitCode> {
    ops::exec(&a.pod, &a.command)
}

pub fn flows(a: FlowsArgs) -> anyhow::Result<ExitCode> {
    let filter = ops::FlowFilter {
        pod: a.pod,
        namespace: a.namespace,
        verdict: a.verdict,
        policy: a.policy,
    };
    ops::flows(&filter, a.follow, a.output == Output::Json)
}
