//! The local mesh: `palisade up DIR` runs the Pods of a manifest folder for real on
//! this machine, each in its own network namespace on a bridge, with its own proxy
//! (iptables interception, an identity from the mesh's CA, the folder's policy), then
//! its container command. `down`, `status`, `exec` and `flows` work on what `up`
//! recorded in the run directory.
//!
//! The control plane (`palisade serve`) runs in the bridge's namespace; each proxy
//! gets its identity from it with a bootstrap token `up` wrote for that pod alone,
//! then its policy on the distribution stream. `up` itself never touches a proxy's
//! state after starting it.
//!
//! Layout: a namespace `<prefix>-br` holds the bridge; pod `ns/name` lives in
//! `<prefix>-<ns>-<name>` with `eth0` and its `status.podIP`. Nothing is created in
//! the host's own network namespace.

pub mod netns;
pub mod ops;
pub mod pods;
pub mod up;

use std::path::PathBuf;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Where a mesh keeps its record, state and logs (`PALISADE_RUN_DIR`, default
/// `/run/palisade`).
pub fn run_dir() -> PathBuf {
    std::env::var_os("PALISADE_RUN_DIR")
        .map_or_else(|| PathBuf::from("/run/palisade"), PathBuf::from)
}

/// Prefix of every network namespace and interface the mesh creates
/// (`PALISADE_MESH_PREFIX`, default `pal`); two meshes with two prefixes coexist.
pub fn prefix() -> String {
    std::env::var("PALISADE_MESH_PREFIX").unwrap_or_else(|_| "pal".into())
}

/// What `up` started, written to `<run dir>/mesh.json` so that `down` can remove
/// it all, also after a crash.
#[derive(Debug, Serialize, Deserialize)]
pub struct MeshRecord {
    pub manifests: PathBuf,
    pub bridge_netns: String,
    /// Where the control plane listens (in the bridge's namespace).
    #[serde(default)]
    pub control_plane: String,
    /// How `palisade serve` was started (run it in `bridge_netns` to restart it).
    #[serde(default)]
    pub serve_argv: Vec<String>,
    pub pods: Vec<PodRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodRecord {
    /// `namespace/name`
    pub pod: String,
    pub netns: String,
    pub ip: String,
    pub identity: String,
    pub flow_log: PathBuf,
}

impl MeshRecord {
    pub fn path() -> PathBuf {
        run_dir().join("mesh.json")
    }

    pub fn load() -> anyhow::Result<MeshRecord> {
        let path = Self::path();
        let text = std::fs::read_to_string(&path).with_context(|| {
            format!("{}: no local mesh is up (palisade up DIR)", path.display())
        })?;
        serde_json::from_str(&text).with_context(|| format!("{}", path.display()))
    }

    pub fn save(&self) -> anyhow::Result<()> {
        let path = Self::path();
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text).with_context(|| format!("{}", path.display()))
    }

    pub fn find(&self, pod: &str) -> anyhow::Result<&PodRecord> {
        self.pods.iter().find(|p| p.pod == pod).with_context(|| {
            let known: Vec<&str> = self.pods.iter().map(|p| p.pod.as_str()).collect();
            format!("no pod {pod} in the mesh (pods: {})", known.join(", "))
        })
    }
}
