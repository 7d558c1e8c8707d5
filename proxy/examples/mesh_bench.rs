//! Direct app-to-app vs through two Palisade proxies, in one run, on the same network
//! namespaces: nginx in the server pod listens on 8080 (through the proxies) and 8081
//! (excluded from interception on both sides: the direct path); oha in the client
//! pod drives both.
//!
//! Run with `tests/bench/run.sh` (it installs nginx and oha and builds in release).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::{Command, Stdio};
use std::time::Duration;

use support::World;

const MANIFESTS: &str = "
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: bench, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: c}]}
status: {podIP: 10.211.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: bench, labels: {app: server}}
spec: {serviceAccountName: server, containers: [{name: c}]}
status: {podIP: 10.211.0.3}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: default-deny}
spec: {order: 1000, selector: all(), types: [Ingress, Egress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: server-from-client, namespace: bench}
spec:
  podSelector: {matchLabels: {app: server}}
  ingress: [{from: [{podSelector: {matchLabels: {app: client}}}], ports: [{port: 8080}]}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-to-server, namespace: bench}
spec:
  selector: app == 'client'
  types: [Egress]
  egress: [{action: Allow, protocol: TCP, destination: {selector: app == 'server', ports: [8080, 8082]}}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-http, namespace: bench}
spec:
  selector: app == 'server'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: app == 'client'}
      destination: {ports: [8082]}
      http: {methods: [GET], paths: [{prefix: /}]}
";

#[derive(Debug, Default)]
struct Load {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: f64,
}

fn oha(world: &World, host: usize, url: &str, args: &[&str]) -> Load {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            world.ns(host),
            "oha",
            "--no-tui",
            "--output-format",
            "json",
            "-z",
            "10s",
        ])
        .args(args)
        .arg(url)
        .stderr(Stdio::inherit())
        .output()
        .expect("oha (cargo install oha)");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("oha output: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let ms = |p: &str| v["latencyPercentiles"][p].as_f64().unwrap_or(f64::NAN) * 1000.0;
    let total = v["summary"]["total"].as_f64().unwrap_or(0.0);
    let ok = v["statusCodeDistribution"]["200"].as_f64().unwrap_or(0.0);
    let rps = v["summary"]["requestsPerSec"].as_f64().unwrap_or(f64::NAN);
    Load {
        rps,
        p50_ms: ms("p50"),
        p99_ms: ms("p99"),
        errors: total - ok,
    }
}

/// (CPU seconds, peak RSS kB, current RSS kB) of the proxy processes of `world`.
fn proxy_usage(world: &World) -> Vec<(String, f64, u64, u64)> {
    let ticks = 100.0; // USER_HZ on Linux
    world
        .hosts
        .iter()
        .map(|h| {
            let pid = Command::new("pgrep")
                .args([
                    "-f",
                    "--",
                    &format!("--state-dir {}", h.state_dir.display()),
                ])
                .output()
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .lines()
                        .last()
                        .map(str::to_owned)
                })
                .unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let cpu = (fields
                .get(11)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
                + fields
                    .get(12)
                    .and_then(|v| v.parse::<f64>().ok())
                    .unwrap_or(0.0))
                / ticks;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let kb = |key: &str| {
                status
                    .lines()
                    .find(|l| l.starts_with(key))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0)
            };
            (h.ns.clone(), cpu, kb("VmHWM:"), kb("VmRSS:"))
        })
        .collect()
}

fn main() {
    let mut w = World::new();
    let client = w.add_host("client", "10.211.0.2");
    let server = w.add_host("server", "10.211.0.3");
    w.write_state(client, "bench", "client", MANIFESTS);
    w.write_state(server, "bench", "server", MANIFESTS);
    // 8081 is the direct path: excluded from interception on both sides.
    w.init(client, &["--exclude-outbound-ports", "8081"]);
    w.init(server, &["--exclude-inbound-ports", "8081"]);
    let conf = w.dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {dir}/nginx.pid; error_log {dir}/nginx.err;\n\
             events {{ worker_connections 4096; }}\n\
             http {{ access_log off; client_body_temp_path {dir}; keepalive_requests 1000000;\n\
               server {{ listen 10.211.0.3:8080; listen 10.211.0.3:8081; listen 10.211.0.3:8082; location / {{ return 200 'ok'; }} }} }}\n",
            dir = w.dir.path().display()
        ),
    )
    .unwrap();
    let mut nginx = Command::new("ip")
        .args(["netns", "exec", w.ns(server), "nginx", "-c"])
        .arg(&conf)
        .spawn()
        .expect("nginx (apt-get install nginx-light)");
    w.start_proxy(client, "bench/client", &[]);
    w.start_proxy(server, "bench/server", &[]);
    std::thread::sleep(Duration::from_millis(500));
    let idle = proxy_usage(&w);

    let direct = "http://10.211.0.3:8081/";
    let proxied = "http://10.211.0.3:8080/";
    let mut rows = Vec::new();
    for (name, args) in [
        ("keep-alive, 16 connections, max rate", vec!["-c", "16"]),
        (
            "fixed 1000 req/s, 16 connections",
            vec!["-c", "16", "-q", "1000", "--latency-correction"],
        ),
        (
            "new connection per request, 16 workers",
            vec!["-c", "16", "--disable-keepalive"],
        ),
    ] {
        let d = oha(&w, client, direct, &args);
        let before = proxy_usage(&w);
        let p = oha(&w, client, proxied, &args);
        let after = proxy_usage(&w);
        let cpu: f64 = after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum();
        rows.push((name, d, p, cpu));
    }
    // The same two proxies, an L4 port (8080) against an L7 port (8082: an HTTP rule
    // decides every request), side by side.
    let l7_url = "http://10.211.0.3:8082/";
    let mut l7_rows = Vec::new();
    for (name, args) in [
        ("keep-alive, 16 connections, max rate", vec!["-c", "16"]),
        (
            "fixed 1000 req/s, 16 connections",
            vec!["-c", "16", "-q", "1000", "--latency-correction"],
        ),
    ] {
        let l4 = oha(&w, client, proxied, &args);
        let l7 = oha(&w, client, l7_url, &args);
        l7_rows.push((name, l4, l7));
    }
    let peak = proxy_usage(&w);
    // SIGTERM, not SIGKILL: the master must take its worker down with it (a killed
    // master leaves an orphan worker holding the bench's stdout open).
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();

    println!("\n| load | direct req/s | proxied req/s | ratio | direct p50 / p99 ms | proxied p50 / p99 ms | added p50 / p99 ms | proxy CPU s (both) |");
    println!("|---|---|---|---|---|---|---|---|");
    for (name, d, p, cpu) in &rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.3} / {:.3} | {:.3} / {:.3} | {:+.3} / {:+.3} | {:.2} |",
            d.rps,
            p.rps,
            p.rps / d.rps,
            d.p50_ms,
            d.p99_ms,
            p.p50_ms,
            p.p99_ms,
            p.p50_ms - d.p50_ms,
            p.p99_ms - d.p99_ms,
            cpu
        );
    }
    println!("\n| load (both through 2 proxies) | L4 port req/s | L7 port req/s | ratio | L4 p50 / p99 ms | L7 p50 / p99 ms |");
    println!("|---|---|---|---|---|---|");
    for (name, l4, l7) in &l7_rows {
        println!(
            "| {name} | {:.0} | {:.0} | {:.2} | {:.3} / {:.3} | {:.3} / {:.3} |",
            l4.rps,
            l7.rps,
            l7.rps / l4.rps,
            l4.p50_ms,
            l4.p99_ms,
            l7.p50_ms,
            l7.p99_ms
        );
    }
    println!("\n| proxy | idle RSS | peak RSS (VmHWM) |\n|---|---|---|");
    for ((ns, _, _, idle_rss), (_, _, hwm, _)) in idle.iter().zip(&peak) {
        println!(
            "| {} | {:.1} MB | {:.1} MB |",
            ns.rsplit('-').next().unwrap_or(ns),
            *idle_rss as f64 / 1024.0,
            *hwm as f64 / 1024.0
        );
    }
    for (name, l4, l7) in &l7_rows {
        if l4.errors > 0.0 || l7.errors > 0.0 {
            println!(
                "warning: {name}: non-200 responses L4 {} L7 {}",
                l4.errors, l7.errors
            );
        }
    }
    for (name, d, p, _) in &rows {
        if d.errors > 0.0 || p.errors > 0.0 {
            println!(
                "warning: {name}: non-200 responses direct {} proxied {}",
                d.errors, p.errors
            );
        }
    }
}
