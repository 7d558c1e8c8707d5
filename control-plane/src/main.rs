//! `palisade`: the control plane and the operator CLI.

use std::process::ExitCode;

use clap::Parser;
use palisade_control_plane::cli;

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
