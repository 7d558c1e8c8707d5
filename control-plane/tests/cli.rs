//! The operator CLI as a user runs it: the real `palisade` binary, real files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn palisade(args: &[&str]) -> Output {
    match Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .output()
    {
        Ok(o) => o,
        Err(e) => panic!("cannot run palisade: {e}"),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn example() -> String {
    repo().join("deploy/local/example").display().to_string()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    if let Err(e) = std::fs::write(&path, text) {
        panic!("write {}: {e}", path.display());
    }
    path.display().to_string()
}

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("tempdir: {e}"),
    }
}

#[test]
fn test_passes_the_conformance_corpus() {
    let corpus = repo().join("tests/conformance").display().to_string();
    let o = palisade(&["test", &corpus]);
    assert_eq!(o.status.code(), Some(0), "{}{}", stdout(&o), stderr(&o));
    let last = stdout(&o).lines().last().unwrap_or_default().to_owned();
    let passed: usize = last
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(
        last.ends_with(" passed, 0 failed") && passed > 500,
        "{last}"
    );
}

const FAILING: &str = "name: my-team-policy
source: test
description: one right and one wrong expectation
cluster:
  namespaces: [{name: x}]
  pods:
    - {name: a, namespace: x, labels: {app: a}, ip: 10.0.0.1}
    - {name: b, namespace: x, labels: {app: b}, ip: 10.0.0.2}
policies: |
  apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: b-from-a, namespace: x}
  spec:
    podSelector: {matchLabels: {app: b}}
    ingress:
      - from: [{podSelector: {matchLabels: {app: a}}}]
        ports: [{port: 80}]
expect:
  - {from: x/a, to: x/b, port: 80, allowed: true, ingress: 'knp/x/b-from-a:0'}
  - {from: x/a, to: x/b, port: 81, allowed: true, ingress: default-allow}
";

#[test]
fn test_reports_each_failure_with_expected_and_actual_and_exits_1() {
    let dir = tempdir();
    let file = write(dir.path(), "team.yaml", FAILING);
    let o = palisade(&["test", &file]);
    assert_eq!(o.status.code(), Some(1));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    let fail = lines.first().copied().unwrap_or_default();
    assert!(
        fail.contains("[my-team-policy] expect[1] x/a -> x/b TCP/81"),
        "{fail}"
    );
    assert!(fail.contains("allowed: expected true, got false"), "{fail}");
    assert!(
        fail.contains("ingress: expected default-allow, decided by knp/x/b-from-a"),
        "{fail}"
    );
    assert_eq!(lines.get(1).copied(), Some("1 passed, 1 failed"));
}

#[test]
fn test_json_output_is_one_object_per_expectation_then_totals() {
    let dir = tempdir();
    let file = write(dir.path(), "team.yaml", FAILING);
    let o = palisade(&["test", "--output", "json", &file]);
    assert_eq!(o.status.code(), Some(1));
    let values: Vec<serde_json::Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or(serde_json::Value::Null))
        .collect();
    assert_eq!(values.len(), 3);
    let first = values.first().cloned().unwrap_or_default();
    for key in [
        "file", "scenario", "step", "index", "pass", "expected", "actual",
    ] {
        assert!(first.get(key).is_some(), "missing {key} in {first}");
    }
    assert_eq!(first["pass"], true);
    assert_eq!(first["actual"]["ingress"], "knp/x/b-from-a:0");
    assert_eq!(first["actual"]["egress"], "default-allow");
    for key in ["allowed", "ingress", "egress", "pending", "logged"] {
        assert!(first["actual"].get(key).is_some(), "missing actual.{key}");
    }
    let second = values.get(1).cloned().unwrap_or_default();
    assert_eq!(second["pass"], false);
    assert_eq!(second["index"], 1);
    assert_eq!(second["actual"]["allowed"], false);
    assert_eq!(
        values.get(2).cloned().unwrap_or_default(),
        serde_json::json!({"passed": 1, "failed": 1})
    );
}

#[test]
fn test_exits_2_on_invalid_input() {
    let dir = tempdir();
    let bad_manifest = FAILING.replace("ports: [{port: 80}]", "ports: [{port: 80, endPort: 10}]");
    let file = write(dir.path(), "bad.yaml", &bad_manifest);
    let o = palisade(&["test", &file]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("endPort 10 is below port 80"),
        "{}",
        stderr(&o)
    );
    let file = write(
        dir.path(),
        "unknown-pod.yaml",
        &FAILING.replace("to: x/b, port: 81", "to: x/zz, port: 81"),
    );
    let o = palisade(&["test", &file]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no pod x/zz"), "{}", stderr(&o));
}

#[test]
fn explain_walks_every_tier_policy_and_rule() {
    let ex = example();
    let o = palisade(&[
        "explain",
        "-f",
        &ex,
        "--from",
        "front/client",
        "--to",
        "back/nginx-back",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(
        out.starts_with("front/client (10.77.0.30) -> back/nginx-back (10.77.0.20) TCP/80: DENIED"),
        "{out}"
    );
    assert!(
        out.contains("egress at front/client: denied by end-of-tier/default"),
        "{out}"
    );
    assert!(
        out.contains("cnp/front/allow-client-to-front (order 700)"),
        "{out}"
    );

    let o = palisade(&[
        "explain",
        "-f",
        &ex,
        "--from",
        "front/nginx-front",
        "--to",
        "back/nginx-back",
        "--port",
        "80",
        "-o",
        "json",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    assert_eq!(v["allowed"], true, "{v}");
    assert_eq!(
        v["egress"]["decided_by"],
        "gnp/allow-egress-front-to-back:0"
    );
    assert_eq!(v["ingress"]["decided_by"], "gnp/allow-traffic-front-back:0");
    let tiers = v["ingress"]["tiers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(tiers.len(), 1);
    let matched: Vec<&serde_json::Value> = tiers
        .iter()
        .flat_map(|t| t["policies"].as_array().into_iter().flatten())
        .flat_map(|p| p["rules"].as_array().into_iter().flatten())
        .filter(|r| r["matched"] == true)
        .collect();
    assert_eq!(matched.len(), 1, "exactly the deciding rule matched: {v}");
}

#[test]
fn explain_from_an_outside_address() {
    let ex = example();
    let o = palisade(&[
        "explain",
        "-f",
        &ex,
        "--from",
        "203.0.113.9",
        "--to",
        "front/nginx-front",
        "--port",
        "80",
    ]);
    let out = stdout(&o);
    assert!(
        out.contains("203.0.113.9 (outside the cluster) -> front/nginx-front"),
        "{out}"
    );
    assert!(
        out.contains("ingress at front/nginx-front: allowed by cnp/front/allow-internal-front:0"),
        "{out}"
    );
}

#[test]
fn matrix_shows_who_reaches_whom() {
    let o = palisade(&["matrix", "-f", &example(), "--port", "80", "-o", "json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    let pods: Vec<String> = v["pods"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(str::to_owned))
        .collect();
    let at = |from: &str, to: &str| {
        let i = pods.iter().position(|p| p == from).unwrap_or(usize::MAX);
        let j = pods.iter().position(|p| p == to).unwrap_or(usize::MAX);
        v["allowed"][i][j].as_bool()
    };
    assert_eq!(at("front/client", "front/nginx-front"), Some(true));
    assert_eq!(at("front/client", "back/nginx-back"), Some(false));
    assert_eq!(at("front/nginx-front", "back/nginx-back"), Some(true));
    assert_eq!(at("back/nginx-back", "front/nginx-front"), Some(false));

    let o = palisade(&["matrix", "-f", &example()]);
    let out = stdout(&o);
    assert!(out.starts_with("TCP/80: row = from, column = to"), "{out}");
    assert!(out.contains("front/client"), "{out}");
}

#[test]
fn a_bad_manifest_is_reported_and_the_rest_still_loads() {
    let dir = tempdir();
    for entry in std::fs::read_dir(example()).into_iter().flatten().flatten() {
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        write(dir.path(), &entry.file_name().to_string_lossy(), &text);
    }
    write(
        dir.path(),
        "zz-broken.yaml",
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: allow-dns}\nspec:\n  egress:\n    - action: Allow\n      protocol: UDP\n      destination: {ports: [53, '80:70']}\n",
    );
    let d = dir.path().display().to_string();
    let o = palisade(&[
        "explain",
        "-f",
        &d,
        "--from",
        "front/nginx-front",
        "--to",
        "back/nginx-back",
        "--port",
        "80",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let err = stderr(&o);
    assert!(
        err.contains(
            "zz-broken.yaml: document 1 (GlobalNetworkPolicy allow-dns): spec.egress[0].destination.ports[1]: invalid port range \"80:70\""
        ),
        "{err}"
    );
    assert!(
        stdout(&o).contains("ALLOWED"),
        "the good objects still decide"
    );
}

#[test]
fn explain_matches_the_canonical_path_and_reports_refused_targets() {
    let dir = tempdir();
    let manifests = write(
        dir.path(),
        "m.yaml",
        "
apiVersion: v1
kind: Namespace
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web, labels: {app: a}}
status: {podIP: 10.9.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web, labels: {app: b}}
status: {podIP: 10.9.0.2}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: public-only, namespace: web}
spec:
  selector: app == 'b'
  ingress:
    - action: Allow
      protocol: TCP
      http: {methods: [GET], paths: [{exact: /public}]}
",
    );
    let explain = |path: &str| {
        let o = palisade(&[
            "explain", "-f", &manifests, "--from", "web/a", "--to", "web/b", "--port", "80",
            "--method", "GET", "--path", path, "-o", "json",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    // Spelled differently, the same resource: allowed by the rule.
    for path in ["/public", "/x/../public", "//public?q=1", "/%70ublic#frag"] {
        let v = explain(path);
        assert_eq!(v["allowed"], true, "{path}: {v}");
        assert_eq!(
            v["ingress"]["decided_by"], "cnp/web/public-only:0",
            "{path}"
        );
    }
    assert_eq!(explain("/private")["allowed"], false);
    let v = explain("/public%2f..%2fadmin");
    assert_eq!(v["http"]["refused"]["status"], 400, "{v}");
    assert_eq!(
        v["http"]["refused"]["reason"],
        "encoded slash (%2F) in the path"
    );
}

/// Expectations only: checked against `-f` manifests (without -f, the cluster).
const PROMISES: &str = "\
name: promises
expect:
  - {from: front/nginx-front, to: back/nginx-back, port: 80, allowed: true}
  - {from: front/nginx-front, to: back/nginx-back, port: 81, allowed: true}
";

#[test]
fn test_checks_expectation_only_scenarios_against_the_manifests_given() {
    let dir = tempdir();
    let file = write(dir.path(), "promises.yaml", PROMISES);
    let o = palisade(&["test", &file, "-f", &example()]);
    assert_eq!(o.status.code(), Some(1), "{}{}", stdout(&o), stderr(&o));
    let out = stdout(&o);
    assert!(
        out.contains("expect[1] front/nginx-front -> back/nginx-back TCP/81"),
        "{out}"
    );
    assert!(out.ends_with("1 passed, 1 failed\n"), "{out}");
}

#[test]
fn without_f_the_cli_reads_the_cluster_and_says_so_when_there_is_none() {
    let dir = tempdir();
    let o = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["matrix"])
        .env("KUBECONFIG", dir.path().join("no-such-kubeconfig"))
        .env("HOME", dir.path())
        .env_remove("KUBERNETES_SERVICE_HOST")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    let err = stderr(&o);
    assert!(err.contains("no -f given, so reading the cluster"), "{err}");
}
