//! Running `palisade up` from a test: a mesh with its own run directory and
//! namespace prefix (so meshes run side by side), removed however the test ends.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant, SystemTime};

pub struct Mesh {
    pub up: Child,
    pub run_dir: tempfile::TempDir,
    pub prefix: String,
    pub printed: Vec<String>,
    /// The example's manifests, copied: tests edit them.
    pub manifests: tempfile::TempDir,
}

impl Mesh {
    pub fn palisade(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .env("PALISADE_RUN_DIR", self.run_dir.path())
            .env("PALISADE_MESH_PREFIX", &self.prefix)
            .output()
            .unwrap()
    }

    pub fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn record(&self) -> serde_json::Value {
        let text = std::fs::read_to_string(self.run_dir.path().join("mesh.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// What `palisade serve` last wrote about itself and its proxies.
    pub fn serve_status(&self) -> serde_json::Value {
        let path = self.run_dir.path().join("serve-status.json");
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    pub fn serve_log(&self) -> String {
        std::fs::read_to_string(self.run_dir.path().join("serve.log")).unwrap_or_default()
    }

    /// Waits until `proxies` proxies have acked the control plane's current version
    /// and that version is not `old`; returns (version, when the last of those
    /// acks came, in ms since the epoch).
    pub fn wait_all_acked(&self, old: u64, proxies: usize, within: Duration) -> (u64, u64) {
        let deadline = Instant::now() + within;
        loop {
            let s = self.serve_status();
            let version = s["version"].as_u64().unwrap_or(0);
            let all = s["proxies"].as_object().cloned().unwrap_or_default();
            let acked: Vec<_> = all
                .values()
                .filter(|p| p["acked_version"].as_u64() == Some(version))
                .collect();
            if version != old && version != 0 && acked.len() >= proxies {
                let last = acked
                    .iter()
                    .filter_map(|p| p["acked_at_ms"].as_u64())
                    .max()
                    .unwrap();
                return (version, last);
            }
            assert!(
                Instant::now() < deadline,
                "not every proxy acked a new version in {within:?}:\n{s:#}\n{}",
                self.serve_log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `palisade serve`'s process: the one process in the bridge's namespace.
    pub fn serve_pids(&self) -> Vec<String> {
        let bridge = self.record()["bridge_netns"].as_str().unwrap().to_owned();
        let out = Command::new("ip")
            .args(["netns", "pids", &bridge])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    pub fn kill_serve(&self) {
        let pids = self.serve_pids();
        assert!(!pids.is_empty(), "palisade serve is not running");
        for pid in &pids {
            Command::new("kill").args(["-KILL", pid]).status().unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.serve_pids().is_empty() {
            assert!(Instant::now() < deadline, "palisade serve survived SIGKILL");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the control plane again exactly as `up` recorded it.
    pub fn restart_serve(&self) -> Reaped {
        let record = self.record();
        let bridge = record["bridge_netns"].as_str().unwrap();
        let argv: Vec<&str> = record["serve_argv"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.run_dir.path().join("serve.log"))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", bridge])
            .args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Reaped(child)
    }

    /// The pod's netns name, from the record.
    pub fn netns(&self, pod: &str) -> String {
        let record = self.record();
        record["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pod"] == pod)
            .unwrap_or_else(|| panic!("no pod {pod}"))["netns"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// `curl` from `pod` to `url`: the HTTP status, "000" when refused or reset.
    pub fn curl(&self, pod: &str, url: &str) -> String {
        let out = self.palisade(&[
            "exec",
            pod,
            "--",
            "curl",
            "-sS",
            "-m",
            "3",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            url,
        ]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }
}

/// A process the test started: killed and reaped when dropped.
pub struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Mesh {
    /// Whatever happened, nothing stays behind.
    fn drop(&mut self) {
        let _ = self.up.kill();
        let _ = self.up.wait();
        let _ = self.palisade(&["down"]);
    }
}

/// A policy that denies nginx-front's egress to port 80 (front -> back).
pub const FREEZE_FRONT: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n\
    metadata: {name: freeze-front}\nspec:\n  order: 1\n  selector: app == 'nginx-front'\n  \
    types: [Egress]\n  egress: [{action: Deny, protocol: TCP, destination: {ports: [80]}}]\n";

pub fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// `palisade up` on a copy of the example, with `extra` arguments.
pub fn up_example(extra: &[&str]) -> Mesh {
    let manifests = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy/local/example"), manifests.path());
    let run_dir = tempfile::tempdir().unwrap();
    static MESHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MESHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let prefix = format!("pt{}x{n}", std::process::id() % 10_000);
    let mut up = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("up")
        .arg(manifests.path())
        .args(extra)
        .env("PALISADE_RUN_DIR", run_dir.path())
        .env("PALISADE_MESH_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = lines_of(up.stdout.take().unwrap());
    let mut mesh = Mesh {
        up,
        run_dir,
        prefix,
        printed: Vec::new(),
        manifests,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!(
                    "no 'mesh is up' in 60 s; printed:\n{}\nserve.log:\n{}",
                    mesh.printed.join("\n"),
                    mesh.serve_log()
                )
            });
        if line == "mesh is up" {
            break;
        }
        mesh.printed.push(line);
    }
    mesh
}

fn lines_of(out: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Runs a printed `palisade exec ...` line the way a user pastes it into a shell.
pub fn run_printed(mesh: &Mesh, line: &str) -> Output {
    let line = line.trim();
    assert!(line.starts_with(env!("CARGO_BIN_EXE_palisade")), "{line}");
    Command::new("sh")
        .args(["-c", line])
        .env("PALISADE_RUN_DIR", mesh.run_dir.path())
        .env("PALISADE_MESH_PREFIX", &mesh.prefix)
        .output()
        .unwrap()
}

pub fn flows(mesh: &Mesh) -> Vec<serde_json::Value> {
    let out = mesh.palisade(&["flows", "--output", "json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// An open TCP connection from inside a pod, held by a small Python program that
/// prints `open`, then `closed <ms since epoch>` when the far side closes it, or,
/// on a line on its stdin, sends an HTTP request and prints the status line.
pub struct HeldConnection {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

const HOLDER: &str = r#"
import select, socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
s.settimeout(None)
print("open", flush=True)
r, _, _ = select.select([s, sys.stdin], [], [])
if s in r:
    try:
        data = s.recv(1)
    except OSError:
        data = b""
    print("closed %d" % int(time.time() * 1000) if not data else "data", flush=True)
else:
    sys.stdin.readline()
    s.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
    reply = b""
    while b"\r\n" not in reply:
        chunk = s.recv(4096)
        if not chunk:
            break
        reply += chunk
    print(reply.split(b"\r\n")[0].decode() or "closed 0", flush=True)
"#;

impl HeldConnection {
    pub fn open(mesh: &Mesh, pod: &str, ip: &str, port: u16) -> HeldConnection {
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &mesh.netns(pod),
                "python3",
                "-c",
                HOLDER,
                ip,
            ])
            .arg(port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = lines_of(child.stdout.take().unwrap());
        let stdin = child.stdin.take();
        let held = HeldConnection {
            child,
            stdin,
            lines,
        };
        assert_eq!(
            held.next_line(Duration::from_secs(5)).as_deref(),
            Some("open")
        );
        held
    }

    pub fn next_line(&self, within: Duration) -> Option<String> {
        self.lines.recv_timeout(within).ok()
    }

    /// Sends a request on the held connection; the status line that came back.
    pub fn request(&mut self) -> Option<String> {
        let mut stdin = self.stdin.take()?;
        stdin.write_all(b"go\n").ok()?;
        self.next_line(Duration::from_secs(5))
    }
}

impl Drop for HeldConnection {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
