//! Network namespaces, the bridge and veth pairs, with `ip` (iproute2).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

/// Runs a command and fails with its stderr.
pub fn sh(args: &[&str]) -> anyhow::Result<()> {
    let (program, rest) = args.split_first().context("empty command")?;
    let out = Command::new(program)
        .args(rest)
        .output()
        .with_context(|| format!("running {program} (is iproute2/iptables installed?)"))?;
    if !out.status.success() {
        bail!(
            "{}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

pub fn exists(netns: &str) -> bool {
    std::path::Path::new("/run/netns").join(netns).exists()
}

/// The namespace holding the bridge every pod is joined to.
pub fn create_bridge(netns: &str) -> anyhow::Result<()> {
    sh(&["ip", "netns", "add", netns])?;
    sh(&["ip", "-n", netns, "link", "add", "br0", "type", "bridge"])?;
    sh(&["ip", "-n", netns, "link", "set", "br0", "up"])
}

/// A pod's namespace, joined to the bridge by veth `veth` (bridge side) / `eth0`.
/// Every destination is on-link: pods of any subnet reach each other over the bridge.
pub fn create_pod(netns: &str, bridge_netns: &str, veth: &str, ip: IpAddr) -> anyhow::Result<()> {
    sh(&["ip", "netns", "add", netns])?;
    sh(&[
        "ip",
        "-n",
        bridge_netns,
        "link",
        "add",
        veth,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        netns,
    ])?;
    sh(&[
        "ip",
        "-n",
        bridge_netns,
        "link",
        "set",
        veth,
        "master",
        "br0",
        "up",
    ])?;
    let cidr = if ip.is_ipv4() {
        format!("{ip}/32")
    } else {
        format!("{ip}/128")
    };
    let mut add = vec![
        "ip",
        "-n",
        netns,
        "addr",
        "add",
        cidr.as_str(),
        "dev",
        "eth0",
    ];
    if ip.is_ipv6() {
        add.push("nodad");
    }
    sh(&add)?;
    sh(&["ip", "-n", netns, "link", "set", "eth0", "up"])?;
    sh(&["ip", "-n", netns, "link", "set", "lo", "up"])?;
    let family = if ip.is_ipv4() { "-4" } else { "-6" };
    sh(&[
        "ip", family, "-n", netns, "route", "add", "default", "dev", "eth0",
    ])
}

/// Kills every process in the namespace, then deletes it (its veth goes with it).
pub fn delete(netns: &str) {
    if !exists(netns) {
        return;
    }
    if let Ok(out) = Command::new("ip").args(["netns", "pids", netns]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
    let _ = Command::new("ip").args(["netns", "del", netns]).status();
    let _ = std::fs::remove_dir_all(std::path::Path::new("/etc/netns").join(netns));
}

/// Runs `f` on a thread that has entered `netns`.
pub fn in_netns<T: Send + 'static>(
    netns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = std::path::Path::new("/run/netns").join(netns);
    let file = std::fs::File::open(&path).with_context(|| format!("{}", path.display()))?;
    std::thread::spawn(move || {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map(|()| f())
            .map_err(anyhow::Error::from)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread in {} panicked", path.display()))?
}

/// GET on the proxy's admin port inside `netns`: the body, if it answered 200.
pub fn admin_get(netns: &str, path: &'static str) -> Option<String> {
    in_netns(netns, move || {
        let addr: SocketAddr = "127.0.0.1:15020".parse().ok()?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        let ok = head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200");
        ok.then(|| body.to_owned())
    })
    .ok()
    .flatten()
}

/// The TCP ports something listens on inside `netns` (from the kernel's socket table).
pub fn listening_ports(netns: &str) -> Vec<u16> {
    in_netns(netns, || {
        let mut ports = Vec::new();
        for table in ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"] {
            let text = std::fs::read_to_string(table).unwrap_or_default();
            for line in text.lines().skip(1) {
                let mut fields = line.split_whitespace();
                let local = fields.nth(1).unwrap_or_default();
                let state = fields.nth(1).unwrap_or_default();
                let port = local
                    .rsplit(':')
                    .next()
                    .and_then(|p| u16::from_str_radix(p, 16).ok());
                if let (Some(port), "0A") = (port, state) {
                    ports.push(port);
                }
            }
        }
        ports
    })
    .unwrap_or_default()
}
