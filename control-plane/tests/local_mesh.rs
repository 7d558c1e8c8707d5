//! `palisade up` as a user runs it, as root: the example mesh in real network
//! namespaces with real proxies, the printed commands, flows, status, a policy edit
//! reaching every proxy, Ctrl-C removing everything.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

struct Mesh {
    up: Child,
    run_dir: tempfile::TempDir,
    prefix: String,
    printed: Vec<String>,
}

impl Mesh {
    fn palisade(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_palisade"))
            .args(args)
            .env("PALISADE_RUN_DIR", self.run_dir.path())
            .env("PALISADE_MESH_PREFIX", &self.prefix)
            .output()
            .unwrap()
    }

    fn leftovers(&self) -> Vec<String> {
        std::fs::read_dir("/run/netns")
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
                    .collect()
            })
            .unwrap_or_default()
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

fn copy_dir(from: &Path, to: &Path) {
    for e in std::fs::read_dir(from).unwrap().flatten() {
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn up(dir: &Path) -> Mesh {
    let run_dir = tempfile::tempdir().unwrap();
    static MESHES: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = MESHES.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let prefix = format!("pt{}x{n}", std::process::id() % 10_000);
    let mut up = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .arg("up")
        .arg(dir)
        .env("PALISADE_RUN_DIR", run_dir.path())
        .env("PALISADE_MESH_PREFIX", &prefix)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = up.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut mesh = Mesh {
        up,
        run_dir,
        prefix,
        printed: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let line = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .unwrap_or_else(|_| {
                panic!(
                    "no 'mesh is up' in 60 s; printed:\n{}",
                    mesh.printed.join("\n")
                )
            });
        if line == "mesh is up" {
            break;
        }
        mesh.printed.push(line);
    }
    mesh
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs a printed `palisade exec ...` line the way a user pastes it into a shell.
fn run_printed(mesh: &Mesh, line: &str) -> Output {
    let line = line.trim();
    assert!(line.starts_with(env!("CARGO_BIN_EXE_palisade")), "{line}");
    Command::new("sh")
        .args(["-c", line])
        .env("PALISADE_RUN_DIR", mesh.run_dir.path())
        .env("PALISADE_MESH_PREFIX", &mesh.prefix)
        .output()
        .unwrap()
}

fn flows(mesh: &Mesh) -> Vec<serde_json::Value> {
    let out = mesh.palisade(&["flows", "--output", "json"]);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[test]
fn the_example_mesh_runs_for_real_and_follows_policy_edits() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy/local/example"), dir.path());
    let mut mesh = up(dir.path());
    let printed = mesh.printed.join("\n");
    for pod in [
        "front/nginx-front",
        "back/nginx-back",
        "front/client",
        "kube-system/coredns",
    ] {
        assert!(printed.contains(pod), "{printed}");
    }
    assert!(
        printed.contains("spiffe://cluster.local/ns/back/sa/default"),
        "{printed}"
    );

    // The printed commands work as printed.
    let exec_after = |title: &str| {
        let at = mesh
            .printed
            .iter()
            .position(|l| l.starts_with(title))
            .unwrap();
        mesh.printed[at + 1].clone()
    };
    let allowed = exec_after("Try an allowed connection");
    let denied = exec_after("Try a denied connection");
    let out = run_printed(&mesh, &allowed);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{allowed}: {out:?}"
    );
    let out = run_printed(&mesh, &denied);
    assert!(!out.status.success(), "{denied}: {out:?}");

    // Both proxies' flow records of the allowed connection name the policies.
    let records = flows(&mesh);
    let ingress = records
        .iter()
        .find(|r| r["reporter"] == "destination" && r["destination"]["pod"] == "nginx-back")
        .unwrap_or_else(|| panic!("{records:?}"));
    assert_eq!(ingress["action"], "allow");
    assert_eq!(
        ingress["policies"]["ingress"],
        "gnp/allow-traffic-front-back:0"
    );
    let egress = records
        .iter()
        .find(|r| r["reporter"] == "source" && r["destination"]["pod"] == "nginx-back")
        .unwrap();
    assert_eq!(
        egress["policies"]["egress"],
        "gnp/allow-egress-front-to-back:0"
    );
    assert!(records.iter().any(|r| r["action"] == "deny"));

    // A Service by name: the back Service's 3306 goes to nginx-back's 80, and the
    // policy decides on that pod and port.
    let out = mesh.palisade(&[
        "exec",
        "front/nginx-front",
        "--",
        "curl",
        "-sS",
        "-m",
        "3",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://back.back.svc.cluster.local:3306/",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200", "{out:?}");
    let records = flows(&mesh);
    let via_service = records
        .iter()
        .find(|r| r["service"] == "back/back" && r["reporter"] == "source")
        .unwrap_or_else(|| panic!("no record names the Service: {records:?}"));
    assert_eq!(via_service["destination"]["pod"], "nginx-back");
    assert_eq!(via_service["destination"]["port"], 80);
    assert_eq!(
        via_service["policies"]["egress"],
        "gnp/allow-egress-front-to-back:0"
    );

    let status = String::from_utf8_lossy(&mesh.palisade(&["status"]).stdout).into_owned();
    assert_eq!(
        status.matches("ready, state version 1").count(),
        4,
        "{status}"
    );

    // A policy edit reaches every proxy, and the allowed connection is now denied.
    let written = Instant::now();
    std::fs::write(
        dir.path().join("zz-freeze.yaml"),
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: freeze-front}\n\
         spec:\n  order: 1\n  selector: app == 'nginx-front'\n  types: [Egress]\n  \
         egress: [{action: Deny, protocol: TCP, destination: {ports: [80]}}]\n",
    )
    .unwrap();
    loop {
        let status = String::from_utf8_lossy(&mesh.palisade(&["status"]).stdout).into_owned();
        if status.matches("ready, state version 2").count() == 4 {
            break;
        }
        assert!(
            written.elapsed() < Duration::from_secs(10),
            "not every proxy reloaded:\n{status}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "policy edit -> all 4 proxies reloaded in {:?}",
        written.elapsed()
    );
    let out = run_printed(&mesh, &allowed);
    assert_ne!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "200",
        "{out:?}"
    );
    assert!(
        flows(&mesh)
            .iter()
            .any(|r| r["policies"]["egress"] == "gnp/freeze-front:0"),
        "no record names the new policy"
    );

    // Ctrl-C removes every namespace the mesh made.
    assert!(!mesh.leftovers().is_empty());
    Command::new("kill")
        .args(["-INT", &mesh.up.id().to_string()])
        .status()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while mesh.up.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "palisade up did not stop on Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mesh.leftovers(), Vec::<String>::new());
    assert!(!mesh.run_dir.path().join("mesh.json").exists());
}

#[test]
fn down_cleans_up_after_a_crashed_up() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&repo().join("deploy/local/example"), dir.path());
    let mut mesh = up(dir.path());
    assert!(!mesh.leftovers().is_empty());
    mesh.up.kill().unwrap(); // SIGKILL: no chance to clean up
    mesh.up.wait().unwrap();
    assert!(
        !mesh.leftovers().is_empty(),
        "a killed up leaves its namespaces"
    );
    let out = mesh.palisade(&["down"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(mesh.leftovers(), Vec::<String>::new());
    let out = mesh.palisade(&["status"]);
    assert!(!out.status.success());
}
