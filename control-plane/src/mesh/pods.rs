//! What the local mesh needs of each Pod beyond policy: its containers' commands.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Doc {
    kind: String,
    metadata: Metadata,
    spec: Spec,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Metadata {
    name: String,
    namespace: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Spec {
    containers: Vec<Container>,
    #[serde(rename = "clusterIP")]
    cluster_ip: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Container {
    name: String,
    command: Vec<String>,
    args: Vec<String>,
}

/// One process to start in a pod: a container's `command` followed by its `args`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCommand {
    pub container: String,
    pub argv: Vec<String>,
}

/// Every document of `files` that parses as an object; the rest are the policy
/// loader's to report.
fn documents(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<Doc>> {
    let mut out = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(file).with_context(|| format!("{}", file.display()))?;
        out.extend(
            serde_norway::Deserializer::from_str(&text).filter_map(|d| Doc::deserialize(d).ok()),
        );
    }
    Ok(out)
}

/// `namespace/name` -> the commands of its containers (containers without a command
/// are skipped: the local mesh has no images to take an entrypoint from).
pub fn commands(
    files: &[std::path::PathBuf],
) -> anyhow::Result<BTreeMap<String, Vec<ContainerCommand>>> {
    let mut out = BTreeMap::new();
    for doc in documents(files)?.into_iter().filter(|d| d.kind == "Pod") {
        let key = format!(
            "{}/{}",
            doc.metadata.namespace.as_deref().unwrap_or("default"),
            doc.metadata.name
        );
        let commands = doc
            .spec
            .containers
            .into_iter()
            .filter(|c| !c.command.is_empty())
            .map(|c| ContainerCommand {
                container: c.name,
                argv: c.command.into_iter().chain(c.args).collect(),
            })
            .collect();
        out.insert(key, commands);
    }
    Ok(out)
}

/// `(name, namespace, clusterIP)` of every Service with a cluster IP, for hosts files.
pub fn service_ips(files: &[std::path::PathBuf]) -> anyhow::Result<Vec<(String, String, String)>> {
    Ok(documents(files)?
        .into_iter()
        .filter(|d| d.kind == "Service")
        .filter_map(|d| {
            let ip = d
                .spec
                .cluster_ip
                .filter(|ip| ip.parse::<std::net::IpAddr>().is_ok())?;
            let ns = d.metadata.namespace.unwrap_or_else(|| "default".into());
            Some((d.metadata.name, ns, ip))
        })
        .collect())
}
