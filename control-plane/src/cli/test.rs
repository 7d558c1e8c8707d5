//! `palisade test`: run policy test scenarios, for CI next to the manifests.
//! Exit 0 when every expectation passes, 1 when any fails, 2 on invalid input.
//!
//! A scenario that brings its own `cluster` or `policies` is self-contained. One
//! that has only expectations is checked against the manifests of `-f`, or,
//! without `-f`, against the cluster of the kubeconfig: "does production still
//! allow what we promised?".

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use palisade_policy::scenario::{self, ExpectationResult};

use super::{load, Output};

#[derive(Args, Debug)]
pub struct TestArgs {
    /// Scenario files or folders (every .yaml below a folder).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// For expectation-only scenarios: manifest files or folders to check them
    /// against; without -f, the cluster of the kubeconfig.
    #[arg(short = 'f', long = "filename")]
    files: Vec<PathBuf>,
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

pub fn run(args: TestArgs) -> anyhow::Result<ExitCode> {
    let mut files = Vec::new();
    for path in &args.paths {
        files.extend(
            load::manifest_files(path)?
                .into_iter()
                .filter(|f| f.extension().is_none_or(|e| e != "json")),
        );
    }
    let (mut passed, mut failed, mut invalid) = (0usize, 0usize, 0usize);
    // Read (the cluster, or -f) only if some scenario needs it.
    let mut base: Option<palisade_policy::Manifests> = None;
    for file in files {
        let name = file.display().to_string();
        let results = std::fs::read_to_string(&file)
            .map_err(|e| scenario::ScenarioError {
                file: name.clone(),
                message: e.to_string(),
            })
            .and_then(|text| {
                if base.is_none() && scenario::needs_base(&text) {
                    base = Some(
                        load::load(&args.files)
                            .map_err(|e| scenario::ScenarioError {
                                file: name.clone(),
                                message: format!("{e:#}"),
                            })?
                            .0,
                    );
                }
                scenario::run_with(&name, &text, base.as_ref())
            });
        let results = match results {
            Ok(r) => r,
            Err(e) => {
                invalid += 1;
                eprintln!("invalid: {e}");
                continue;
            }
        };
        for r in results {
            if r.pass {
                passed += 1;
            } else {
                failed += 1;
            }
            match args.output {
                Output::Json => println!("{}", serde_json::to_string(&r)?),
                Output::Text if !r.pass => println!("{}", failure_line(&r)),
                Output::Text => {}
            }
        }
    }
    match args.output {
        Output::Json => println!(
            "{}",
            serde_json::json!({"passed": passed, "failed": failed})
        ),
        Output::Text => println!("{passed} passed, {failed} failed"),
    }
    Ok(ExitCode::from(if invalid > 0 {
        2
    } else if failed > 0 {
        1
    } else {
        0
    }))
}

fn failure_line(r: &ExpectationResult) -> String {
    let step = match (&r.step, &r.step_name) {
        (Some(i), Some(n)) => format!(" step {i} ({n})"),
        (Some(i), None) => format!(" step {i}"),
        _ => String::new(),
    };
    let get = |k: &str| {
        r.expected
            .get(k)
            .map(|v| v.to_string().trim_matches('"').to_owned())
            .unwrap_or_default()
    };
    let proto = r
        .expected
        .get("protocol")
        .and_then(|v| v.as_str())
        .unwrap_or("TCP");
    let port = r
        .expected
        .get("port")
        .map(|p| format!("/{p}"))
        .unwrap_or_default();
    format!(
        "FAIL {} [{}]{step} expect[{}] {} -> {} {proto}{port}: {}",
        r.file,
        r.scenario,
        r.index,
        get("from"),
        get("to"),
        r.mismatches.join("; ")
    )
}
