//! Every conformance scenario through the real evaluator: the copy kept in this
//! repository (tests/conformance) and, when present, the shared corpus beside it.

use std::path::{Path, PathBuf};

use palisade_policy::scenario;

fn scenario_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            scenario_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
}

fn run_corpus(dir: &Path) -> (usize, Vec<String>) {
    let mut files = Vec::new();
    scenario_files(dir, &mut files);
    files.sort();
    assert!(!files.is_empty(), "no scenarios under {}", dir.display());
    let mut passed = 0;
    let mut failures = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let name = file.display().to_string();
        match scenario::run(&name, &text) {
            Ok(results) => {
                for r in results {
                    if r.pass {
                        passed += 1;
                    } else {
                        failures.push(format!(
                            "{} step {:?} expect[{}] {}: {}",
                            r.file,
                            r.step,
                            r.index,
                            r.expected,
                            r.mismatches.join("; ")
                        ));
                    }
                }
            }
            Err(e) => failures.push(format!("invalid scenario: {e}")),
        }
    }
    (passed, failures)
}

#[test]
fn repository_corpus_passes() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let (passed, failures) = run_corpus(&dir);
    assert!(
        failures.is_empty(),
        "{} passed, {} failed:\n{}",
        passed,
        failures.len(),
        failures.join("\n")
    );
    assert!(passed > 500, "only {passed} expectations ran");
}

#[test]
fn shared_corpus_passes_when_present() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/conformance");
    if !dir.is_dir() {
        eprintln!(
            "{} not present; the repository copy is tested instead",
            dir.display()
        );
        return;
    }
    let (passed, failures) = run_corpus(&dir);
    assert!(
        failures.is_empty(),
        "{} passed, {} failed:\n{}",
        passed,
        failures.len(),
        failures.join("\n")
    );
}
