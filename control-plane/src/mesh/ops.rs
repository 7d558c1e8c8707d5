//! `down`, `status`, `exec`, `flows`: what an operator does with a running mesh.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::process::{Command, ExitCode};
use std::time::Duration;

use anyhow::Context;

use super::{netns, MeshRecord};

/// Removes everything a mesh created: its pods' processes and namespaces, the
/// bridge, the hosts files and the record. Safe to run twice, and after a crash.
pub fn teardown(record: &MeshRecord) {
    for pod in &record.pods {
        netns::delete(&pod.netns);
    }
    netns::delete(&record.bridge_netns);
    let _ = std::fs::remove_file(MeshRecord::path());
}

pub fn down() -> anyhow::Result<ExitCode> {
    let record = MeshRecord::load()?;
    teardown(&record);
    println!("removed {} pods and the bridge", record.pods.len());
    Ok(ExitCode::SUCCESS)
}

pub fn status() -> anyhow::Result<ExitCode> {
    let record = MeshRecord::load()?;
    println!("manifests: {}", record.manifests.display());
    let serve = crate::serve::read_status(&super::run_dir().join("serve-status.json"));
    match &serve {
        Some(s) => println!(
            "control plane: {} (version {}, {} problems in the manifests)",
            record.control_plane,
            s.version,
            s.problems.len()
        ),
        None => println!("control plane: {} (no status yet)", record.control_plane),
    }
    for problem in serve.iter().flat_map(|s| &s.problems) {
        println!("  {problem}");
    }
    println!(
        "{:<24} {:<11} {:<44} {:<36} CONTROL PLANE",
        "POD", "IP", "IDENTITY", "PROXY"
    );
    for p in &record.pods {
        let proxy = netns::admin_get(&p.netns, "/ready")
            .map_or_else(|| "not ready".to_owned(), |r| r.trim().to_owned());
        let acked = serve
            .as_ref()
            .and_then(|s| s.proxies.get(&p.pod))
            .map_or_else(
                || "never connected".to_owned(),
                |a| {
                    let link = if a.connected {
                        "connected"
                    } else {
                        "disconnected"
                    };
                    let nack = a
                        .nack
                        .as_deref()
                        .map(|n| format!(", NACK {n}"))
                        .unwrap_or_default();
                    format!("{link}, acked {}{nack}", a.acked_version)
                },
            );
        println!(
            "{:<24} {:<11} {:<44} {:<36} {acked}",
            p.pod, p.ip, p.identity, proxy
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `argv` in the pod's network namespace, with this terminal, and returns its
/// exit code.
pub fn exec(pod: &str, argv: &[String]) -> anyhow::Result<ExitCode> {
    let record = MeshRecord::load()?;
    let p = record.find(pod)?;
    let status = Command::new("ip")
        .args(["netns", "exec", &p.netns])
        .args(argv)
        .status()
        .with_context(|| format!("running {argv:?} in {pod}"))?;
    Ok(ExitCode::from(
        status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(1),
    ))
}

/// Which records `flows` shows.
#[derive(Debug, Default)]
pub struct FlowFilter {
    /// `ns/name`: either end.
    pub pod: Option<String>,
    pub namespace: Option<String>,
    /// allow | deny
    pub verdict: Option<String>,
    /// A substring of a deciding reference (`cnp/front/`, `end-of-tier`).
    pub policy: Option<String>,
}

impl FlowFilter {
    fn accepts(&self, r: &serde_json::Value) -> bool {
        let end = |e: &serde_json::Value| {
            format!(
                "{}/{}",
                e["namespace"].as_str().unwrap_or(""),
                e["pod"].as_str().unwrap_or("")
            )
        };
        let ends = [end(&r["source"]), end(&r["destination"])];
        self.pod
            .as_ref()
            .is_none_or(|p| ends.iter().any(|e| e == p))
            && self.namespace.as_ref().is_none_or(|n| {
                [&r["source"], &r["destination"]]
                    .iter()
                    .any(|e| e["namespace"].as_str() == Some(n.as_str()))
            })
            && self
                .verdict
                .as_ref()
                .is_none_or(|v| r["action"].as_str() == Some(v.as_str()))
            && self.policy.as_ref().is_none_or(|p| {
                let refs = &r["policies"];
                [&refs["egress"], &refs["ingress"]]
                    .iter()
                    .any(|x| x.as_str().is_some_and(|s| s.contains(p.as_str())))
            })
    }
}

/// One line a person reads at a glance.
fn render(r: &serde_json::Value) -> String {
    let end = |e: &serde_json::Value| match (e["namespace"].as_str(), e["pod"].as_str()) {
        (Some(ns), Some(pod)) => format!("{ns}/{pod}:{}", e["port"]),
        _ => format!("{}:{}", e["ip"].as_str().unwrap_or("?"), e["port"]),
    };
    let decided = match r["reporter"].as_str() {
        Some("source") => r.pointer("/policies/egress"),
        _ => r.pointer("/policies/ingress"),
    };
    let why = decided
        .and_then(|d| d.as_str())
        .or(r["reason"].as_str())
        .unwrap_or("-");
    let http = match r["http"].as_object() {
        Some(h) => format!(
            " {} {} -> {}",
            h.get("method").and_then(|v| v.as_str()).unwrap_or(""),
            h.get("path").and_then(|v| v.as_str()).unwrap_or(""),
            h.get("status").map(ToString::to_string).unwrap_or_default()
        ),
        None => String::new(),
    };
    format!(
        "{:<6} {:<11} {} -> {}{http}  {}  ({})",
        r["action"].as_str().unwrap_or("?").to_uppercase(),
        r["reporter"].as_str().unwrap_or("?"),
        end(&r["source"]),
        end(&r["destination"]),
        why,
        r["kind"].as_str().unwrap_or("")
    )
}

pub fn flows(filter: &FlowFilter, follow: bool, json: bool) -> anyhow::Result<ExitCode> {
    let record = MeshRecord::load()?;
    let mut readers = Vec::new();
    for p in &record.pods {
        let file = std::fs::File::open(&p.flow_log)
            .with_context(|| format!("{}", p.flow_log.display()))?;
        readers.push(BufReader::new(file));
    }
    loop {
        let mut any = false;
        for reader in &mut readers {
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 {
                if !line.ends_with('\n') {
                    // A record still being written: read it whole next time.
                    let back = i64::try_from(line.len()).unwrap_or(0);
                    let _ = reader.seek(SeekFrom::Current(-back));
                    break;
                }
                any = true;
                if let Ok(r) = serde_json::from_str::<serde_json::Value>(&line) {
                    if filter.accepts(&r) {
                        if json {
                            print!("{line}");
                        } else {
                            println!("{}", render(&r));
                        }
                    }
                }
                line.clear();
            }
        }
        if !follow {
            return Ok(ExitCode::SUCCESS);
        }
        if !any {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}
