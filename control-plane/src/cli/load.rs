//! Reads manifest files and folders (`-f`) or, without `-f`, the cluster of the
//! kubeconfig; compiles them, and reports every bad object on stderr while
//! keeping the rest.

use std::path::{Path, PathBuf};

use anyhow::Context;
use palisade_policy::{CompiledCluster, Manifests};

/// YAML and JSON files under `path` (or `path` itself), sorted for a stable order.
pub fn manifest_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(path).with_context(|| format!("{}", path.display()))?;
    if meta.is_file() {
        return Ok(vec![path.to_owned()]);
    }
    let mut out = Vec::new();
    let mut stack = vec![path.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("{}", dir.display()))? {
            let p = entry?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p
                .extension()
                .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
            {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Loads and compiles the manifests under `paths` (the cluster's objects when
/// `paths` is empty). Bad objects are reported and skipped; returns how many
/// problems there were.
pub fn compile(paths: &[PathBuf]) -> anyhow::Result<(CompiledCluster, usize)> {
    let (manifests, problems) = load(paths)?;
    let (compiled, errors) = CompiledCluster::new(&manifests);
    for e in &errors {
        eprintln!("error: {e} (skipped)");
    }
    Ok((compiled, problems + errors.len()))
}

fn from_cluster() -> anyhow::Result<(Manifests, usize)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (manifests, problems) = runtime.block_on(async {
        let client = crate::k8s::client().await.context(
            "no -f given, so reading the cluster; give manifests with -f FILE_OR_DIR instead",
        )?;
        crate::k8s::list::manifests(&client)
            .await
            .context("no -f given, so reading the cluster of the kubeconfig")
    })?;
    for e in &problems {
        eprintln!("error: {e} (skipped)");
    }
    Ok((manifests, problems.len()))
}

/// The manifests under `paths`, or the cluster's when `paths` is empty.
pub fn load(paths: &[PathBuf]) -> anyhow::Result<(Manifests, usize)> {
    if paths.is_empty() {
        return from_cluster();
    }
    let mut manifests = Manifests::default();
    let mut problems = 0;
    for path in paths {
        for file in manifest_files(path)? {
            let text =
                std::fs::read_to_string(&file).with_context(|| format!("{}", file.display()))?;
            for e in manifests.load_str(&file.display().to_string(), &text) {
                eprintln!("error: {e} (skipped)");
                problems += 1;
            }
        }
    }
    Ok((manifests, problems))
}
