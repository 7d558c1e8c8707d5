//! `palisade`: the control plane and the operator CLI.

use std::process::ExitCode;

use clap::Parser;

mod cli;
#[cfg(test)]
mod deploy_tests;
mod k8s;
mod mesh;
mod serve;
mod webhook;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            ExitCode::from(2)
        }
    }
}
