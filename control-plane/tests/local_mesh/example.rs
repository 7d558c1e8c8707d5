//! The example mesh as a user runs it: printed commands, flows naming policies, a
//! Service by name, a policy edit reaching every proxy and closing what it now
//! denies, Ctrl-C and `down` removing everything.

use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::*;

#[test]
fn the_example_mesh_runs_for_real_and_follows_policy_edits() {
    let mut mesh = up_example(&[]);
    let dir = mesh.manifests.path().to_owned();
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
    assert_eq!(
        mesh.curl(
            "front/nginx-front",
            "http://back.back.svc.cluster.local:3306/"
        ),
        "200"
    );
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

    // Every proxy got its identity and policy from the control plane and acked it.
    let (version, _) = mesh.wait_all_acked(0, 4, Duration::from_secs(10));
    let status = String::from_utf8_lossy(&mesh.palisade(&["status"]).stdout).into_owned();
    assert_eq!(
        status
            .matches(&format!("connected, acked {version}"))
            .count(),
        4,
        "{status}"
    );
    assert_eq!(
        status
            .matches(&format!("ready, state version {version}"))
            .count(),
        4,
        "{status}"
    );

    // A pod label change reaches every proxy: from the file write to the last ack.
    let pods = dir.join("pods.yaml");
    let text = std::fs::read_to_string(&pods).unwrap();
    let relabelled = text.replacen(
        "labels: {app: nginx-back}",
        "labels: {app: nginx-back, release: b2}",
        1,
    );
    assert_ne!(text, relabelled);
    let written = now_ms();
    std::fs::write(&pods, relabelled).unwrap();
    let (version, last_ack) = mesh.wait_all_acked(version, 4, Duration::from_secs(5));
    let took = last_ack.saturating_sub(written);
    eprintln!("pod label change: file written -> all 4 proxies acked in {took} ms");
    assert!(
        took < 1000,
        "label change took {took} ms to reach every proxy"
    );

    // A policy edit while connections are open: the one it now denies is closed
    // within a second, with a record saying so; the one still allowed stays open.
    let to_back = HeldConnection::open(&mesh, "front/nginx-front", "10.77.0.20", 80);
    let mut to_front = HeldConnection::open(&mesh, "front/client", "10.77.0.10", 80);
    let written = now_ms();
    std::fs::write(dir.join("zz-freeze.yaml"), FREEZE_FRONT).unwrap();
    let closed = to_back
        .next_line(Duration::from_secs(3))
        .unwrap_or_else(|| panic!("the denied connection stayed open\n{}", mesh.serve_log()));
    let closed_at: u64 = closed.strip_prefix("closed ").unwrap().parse().unwrap();
    let took = closed_at.saturating_sub(written);
    eprintln!("policy edit -> open connection closed in {took} ms");
    assert!(took < 1000, "closed only after {took} ms");
    mesh.wait_all_acked(version, 4, Duration::from_secs(5));
    assert_eq!(to_front.request().as_deref(), Some("HTTP/1.0 200 OK"));
    let records = flows(&mesh);
    let closing = records
        .iter()
        .find(|r| {
            r["reason"]
                .as_str()
                .is_some_and(|x| x.starts_with("closed: state version"))
        })
        .unwrap_or_else(|| panic!("no record of the closed connection: {records:?}"));
    assert_eq!(closing["destination"]["pod"], "nginx-back");
    assert!(
        closing["reason"]
            .as_str()
            .unwrap()
            .contains("gnp/freeze-front:0"),
        "{closing}"
    );
    drop(to_back);

    // New connections are denied too, and say which policy did it.
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
    let mut mesh = up_example(&[]);
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
