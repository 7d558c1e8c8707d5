//! The local source's writer: the manifest directory watched with notify; each
//! burst of file events -> rescans -> the next version of the world.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::source::{Change, ManifestSource};
use super::world::World;
use super::{publish_status, report_problems, Shared};

/// The one writer of the world: file events -> rescans -> the next version.
pub fn watch_manifests(
    dir: PathBuf,
    mut source: ManifestSource,
    world_tx: watch::Sender<Arc<World>>,
    shared: Arc<Shared>,
    trust_domain: String,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            if e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove() {
                let _ = tx.send(e.paths);
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // A short settle: editors and `cp` write in bursts.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut paths = first;
            while let Ok(more) = rx.try_recv() {
                paths.extend(more);
            }
            let change = rescan(&mut source, &dir, paths);
            report_problems(source.problems());
            if !change.is_empty() {
                super::world::publish(&world_tx, change, &trust_domain);
            }
            publish_status(&shared, source.problems());
        }
    });
    Ok(watcher)
}

fn rescan(source: &mut ManifestSource, dir: &Path, mut paths: Vec<PathBuf>) -> Change {
    let is_manifest = |p: &Path| {
        p.extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
    };
    // A directory event (created, moved in): every manifest under it.
    if paths.iter().any(|p| p.is_dir()) {
        paths.extend(crate::cli::manifest_files(dir).unwrap_or_default());
    }
    paths.sort();
    paths.dedup();
    let mut change = Change::default();
    for path in paths.into_iter().filter(|p| is_manifest(p)) {
        // Later files win for a key touched twice in one burst.
        change.merge(source.rescan(&path));
    }
    change
}
