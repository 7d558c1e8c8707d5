//! The control plane's failure modes on the real mesh: an invalid manifest changes
//! nothing, a dead control plane leaves the proxies enforcing what they had (and a
//! new pod without an identity), a restarted one brings every proxy to its version.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A pod the test adds to a running mesh by hand: its namespace on the mesh's
/// bridge and its proxy, removed when dropped.
struct LatePod {
    netns: String,
    proxy: Option<Child>,
}

impl LatePod {
    fn start(mesh: &Mesh, ip: &str, token_file: &std::path::Path) -> LatePod {
        let netns = format!("{}-front-late", mesh.prefix);
        let bridge = mesh.record()["bridge_netns"].as_str().unwrap().to_owned();
        let veth = format!("{}vlate", mesh.prefix);
        let sh = |args: &[&str]| {
            let ok = Command::new(args[0]).args(&args[1..]).status().unwrap();
            assert!(ok.success(), "{args:?}");
        };
        sh(&["ip", "netns", "add", &netns]);
        let mut pod = LatePod {
            netns: netns.clone(),
            proxy: None,
        };
        sh(&[
            "ip", "-n", &bridge, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
            "netns", &netns,
        ]);
        sh(&[
            "ip", "-n", &bridge, "link", "set", &veth, "master", "br0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &netns,
            "addr",
            "add",
            &format!("{ip}/32"),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &netns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &netns, "link", "set", "lo", "up"]);
        sh(&["ip", "-n", &netns, "route", "add", "default", "dev", "eth0"]);
        let proxy_bin =
            std::path::Path::new(env!("CARGO_BIN_EXE_palisade")).with_file_name("palisade-proxy");
        let log = std::fs::File::create(mesh.run_dir.path().join("late-proxy.log")).unwrap();
        let proxy = Command::new("ip")
            .args(["netns", "exec", &netns])
            .arg(proxy_bin)
            .args([
                "run",
                "--pod",
                "front/late",
                "--control-plane",
                "169.254.1.1:15012",
            ])
            .arg("--bootstrap-token-file")
            .arg(token_file)
            .arg("--control-plane-ca")
            .arg(mesh.run_dir.path().join("ca/ca.crt"))
            .args(["--flow-log", "/dev/null"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        pod.proxy = Some(proxy);
        pod
    }

    fn ready(&self) -> bool {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.netns,
                "curl",
                "-s",
                "-m",
                "1",
                "http://127.0.0.1:15020/ready",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).starts_with("ready")
    }
}

impl Drop for LatePod {
    fn drop(&mut self) {
        if let Some(proxy) = &mut self.proxy {
            let _ = proxy.kill();
            let _ = proxy.wait();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.netns])
            .status();
    }
}

#[test]
fn an_invalid_manifest_or_a_dead_control_plane_changes_nothing_and_a_restart_resyncs() {
    let mesh = up_example(&[]);
    let dir = mesh.manifests.path().to_owned();
    let front_to_back = || mesh.curl("front/nginx-front", "http://10.77.0.20:80/");
    let (v1, _) = mesh.wait_all_acked(0, 4, Duration::from_secs(10));
    assert_eq!(front_to_back(), "200");

    // An invalid edit of the policy that allows front -> back: a clear error (file,
    // object, field); its last good version stays, so nothing changes anywhere.
    let policies = dir.join("policies.yaml");
    let text = std::fs::read_to_string(&policies).unwrap();
    let at = text.find("name: allow-egress-front-to-back").unwrap();
    let port = at + text[at..].find("- 80").unwrap();
    let broken = format!("{}- 99999{}", &text[..port], &text[port + 4..]);
    std::fs::write(&policies, broken).unwrap();
    let problem = wait_for(Duration::from_secs(5), || {
        mesh.serve_status()["problems"]
            .as_array()
            .and_then(|p| p.first().cloned())
    });
    let problem = problem.as_str().unwrap();
    for part in [
        "policies.yaml",
        "document 8",
        "GlobalNetworkPolicy allow-egress-front-to-back",
        "spec.egress[0].destination.ports[0]",
        "last good version stays in force",
    ] {
        assert!(problem.contains(part), "{part:?} not in {problem:?}");
    }
    assert!(
        mesh.serve_log().contains(problem),
        "the error is not in serve's log"
    );
    assert_eq!(mesh.serve_status()["version"].as_u64(), Some(v1));
    assert_eq!(front_to_back(), "200");
    std::fs::write(&policies, &text).unwrap();

    // The control plane dies: the proxies keep enforcing what they had, both ways.
    mesh.kill_serve();
    assert_eq!(front_to_back(), "200");
    assert_ne!(mesh.curl("back/nginx-back", "http://10.77.0.10:80/"), "200");
    let denied = flows(&mesh)
        .into_iter()
        .rev()
        .find(|r| r["action"] == "deny" && r["source"]["pod"] == "nginx-back")
        .expect("a flow record of the denied connection");
    assert_eq!(
        denied["policies"]["egress"], "end-of-tier/default",
        "{denied}"
    );

    // What changes meanwhile reaches nobody: a policy that denies front -> back,
    // and a new pod, whose proxy gets no identity.
    std::fs::write(dir.join("zz-freeze.yaml"), FREEZE_FRONT).unwrap();
    std::fs::write(
        dir.join("zz-late.yaml"),
        "apiVersion: v1\nkind: Pod\nmetadata: {name: late, namespace: front, labels: {app: late}}\n\
         spec: {containers: [{name: c, image: none}]}\nstatus: {podIP: 10.77.0.40}\n",
    )
    .unwrap();
    let token_file = mesh.run_dir.path().join("late-token");
    std::fs::write(&token_file, "0123456789abcdef0123456789abcdef").unwrap();
    let mut tokens = std::fs::read_to_string(mesh.run_dir.path().join("tokens")).unwrap();
    tokens.push_str("0123456789abcdef0123456789abcdef front/late\n");
    std::fs::write(mesh.run_dir.path().join("tokens"), tokens).unwrap();
    let late = LatePod::start(&mesh, "10.77.0.40", &token_file);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!late.ready(), "a proxy got ready without a control plane");
    let late_log = std::fs::read_to_string(mesh.run_dir.path().join("late-proxy.log")).unwrap();
    assert!(late_log.contains("no identity yet"), "{late_log}");
    assert_eq!(
        front_to_back(),
        "200",
        "a change got through without a control plane"
    );

    // The control plane returns: every proxy resyncs to its version, which has
    // what changed while it was gone; the new pod gets its identity.
    let _serve = mesh.restart_serve();
    let (v2, _) = mesh.wait_all_acked(v1, 5, Duration::from_secs(15));
    assert!(v2 > v1, "versions must grow across restarts ({v1} -> {v2})");
    wait_for(Duration::from_secs(5), || late.ready().then_some(()));
    let status = mesh.serve_status();
    assert_eq!(
        status["proxies"]["front/late"]["identity"],
        "spiffe://cluster.local/ns/front/sa/default"
    );
    assert_ne!(
        front_to_back(),
        "200",
        "the resynced policy is not enforced"
    );
    assert!(flows(&mesh)
        .iter()
        .any(|r| r["policies"]["egress"] == "gnp/freeze-front:0"));

    // An update a proxy cannot apply (its pod now names another service account,
    // which its certificate is not) is nacked with the reason; that proxy keeps
    // its last good state while the others move on.
    let pods = dir.join("pods.yaml");
    let text = std::fs::read_to_string(&pods).unwrap();
    let moved = text.replacen(
        "labels: {app: nginx-front}\nspec:\n",
        "labels: {app: nginx-front}\nspec:\n  serviceAccountName: other\n",
        1,
    );
    assert_ne!(text, moved);
    std::fs::write(&pods, moved).unwrap();
    let nack = wait_for(Duration::from_secs(5), || {
        mesh.serve_status()["proxies"]["front/nginx-front"]["nack"]
            .as_str()
            .map(str::to_owned)
    });
    assert!(
        nack.contains("does not belong to pod front/nginx-front"),
        "{nack}"
    );
    wait_for(Duration::from_secs(5), || {
        let s = mesh.serve_status();
        (s["proxies"]["back/nginx-back"]["acked_version"] == s["version"]).then_some(())
    });
    assert_eq!(
        mesh.serve_status()["proxies"]["front/nginx-front"]["acked_version"],
        v2
    );
    let front_ready = String::from_utf8_lossy(&mesh.palisade(&["status"]).stdout).into_owned();
    assert!(
        front_ready.contains(&format!("ready, state version {v2}")),
        "{front_ready}"
    );
}

fn wait_for<T>(within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
