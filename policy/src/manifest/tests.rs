//! Loading manifests: formats, and errors that name file, document, object and field.

use super::Manifests;
use crate::policy::{PolicyKind, PortMatch};

fn load(file: &str, text: &str) -> (Manifests, Vec<String>) {
    let mut m = Manifests::default();
    let errors = m
        .load_str(file, text)
        .into_iter()
        .map(|e| e.to_string())
        .collect();
    (m, errors)
}

const GOOD_GNP: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: ok}
spec:
  selector: all()
  types: [Ingress]
";

#[test]
fn error_names_file_document_object_and_field() {
    let text = format!(
        "{GOOD_GNP}---\n{GOOD_GNP}---\napiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: allow-dns}}
spec:
  egress:
    - action: Allow
      protocol: UDP
      destination:
        ports: [53, '80:70']
"
    );
    let (m, errors) = load("policies.yaml", &text);
    assert_eq!(
        errors,
        vec![
            r#"policies.yaml: document 3 (GlobalNetworkPolicy allow-dns): spec.egress[0].destination.ports[1]: invalid port range "80:70""#
        ]
    );
    assert_eq!(m.policies.len(), 2, "the good objects still load");
}

#[test]
fn one_bad_object_is_skipped_the_rest_loads() {
    let text = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: bad, namespace: x}
spec:
  podSelector:
    matchExpressions:
      - {key: app, operator: Maybe, values: [a]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: good, namespace: x}
spec:
  podSelector: {}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: bad-selector, namespace: x}
spec:
  selector: app == 
";
    let (m, errors) = load("np.yaml", text);
    assert_eq!(m.policies.len(), 1);
    assert_eq!(m.policies.first().map(|p| p.id.name.as_str()), Some("good"));
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().any(|e| e.starts_with(
        "np.yaml: document 1 (NetworkPolicy x/bad): spec.podSelector.matchExpressions[0].operator: unknown operator \"Maybe\""
    )));
    assert!(errors.iter().any(|e| e.starts_with(
        "np.yaml: document 3 (NetworkPolicy x/bad-selector): spec.selector: invalid selector"
    )));
}

#[test]
fn type_errors_carry_the_serde_path() {
    let text = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec:
  podSelector: {}
  ingress:
    - ports:
        - port: [80]
";
    let (_, errors) = load("np.yaml", text);
    assert_eq!(errors.len(), 1);
    let e = errors.first().cloned().unwrap_or_default();
    assert!(
        e.starts_with("np.yaml: document 1 (NetworkPolicy x/p): spec.ingress[0].ports[0].port: "),
        "{e}"
    );
}

#[test]
fn invalid_values_are_reported_per_field() {
    let cases = [
        ("spec:\n  ingress:\n    - action: Maybe\n", "spec.ingress[0].action: unknown action \"Maybe\""),
        ("spec:\n  ingress:\n    - action: Allow\n      destination: {ports: [80]}\n", "spec.ingress[0].destination.ports: numeric ports need protocol"),
        ("spec:\n  ingress:\n    - action: Allow\n      protocol: ICMP\n      icmp: {code: 1}\n", "spec.ingress[0].icmp.type: an ICMP match needs a type"),
        ("spec:\n  ingress:\n    - action: Allow\n      icmp: {type: 8}\n", "spec.ingress[0].icmp: needs protocol ICMP"),
        ("spec:\n  ingress:\n    - action: Allow\n      protocol: TCPX\n", "spec.ingress[0].protocol: unknown protocol \"TCPX\""),
        ("spec:\n  ingress:\n    - action: Allow\n      source: {nets: [10.0.0.0/33]}\n", "spec.ingress[0].source.nets[0]: invalid CIDR"),
        ("spec:\n  ingress:\n    - action: Allow\n      ipVersion: 5\n", "spec.ingress[0].ipVersion: must be 4 or 6"),
        ("spec:\n  types: [Sideways]\n", "spec.types[0]: unknown policy type \"Sideways\""),
        ("spec:\n  ingress:\n    - action: Allow\n      http: {paths: [{exact: /a, prefix: /b}]}\n", "spec.ingress[0].http.paths[0]: give exactly one"),
        ("spec:\n  ingress:\n    - action: Allow\n      destination: {services: {name: x}}\n", "spec.ingress[0].destination.services: service matches are not supported yet"),
    ];
    for (spec, want) in cases {
        let text = format!("apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: g}}\n{spec}");
        let (m, errors) = load("g.yaml", &text);
        assert!(m.policies.is_empty(), "{spec}");
        let e = errors.first().cloned().unwrap_or_default();
        assert!(
            e.starts_with(&format!(
                "g.yaml: document 1 (GlobalNetworkPolicy g): {want}"
            )),
            "{spec}\ngot: {e}"
        );
    }
}

#[test]
fn kubernetes_validation() {
    let cases = [
        (
            "  policyTypes: [Ingres]\n",
            "spec.policyTypes[0]: unknown policy type",
        ),
        (
            "  ingress:\n    - ports: [{port: 80, endPort: 70}]\n",
            "spec.ingress[0].ports[0].endPort: endPort 70 is below port 80",
        ),
        (
            "  ingress:\n    - ports: [{port: 0}]\n",
            "spec.ingress[0].ports[0].port: port 0 is not in 1-65535",
        ),
        (
            "  ingress:\n    - ports: [{port: 80, protocol: ICMP}]\n",
            "spec.ingress[0].ports[0].protocol: unsupported protocol",
        ),
        (
            "  egress:\n    - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/8]}}]\n",
            "spec.egress[0].to[0].ipBlock.except[0]: 11.0.0.0/8 is not a strict subset",
        ),
        (
            "  egress:\n    - to: [{ipBlock: {cidr: nope}}]\n",
            "spec.egress[0].to[0].ipBlock.cidr: invalid CIDR",
        ),
        (
            "  egress:\n    - to: [{}]\n",
            "spec.egress[0].to[0]: a peer needs podSelector",
        ),
    ];
    for (spec, want) in cases {
        let text = format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k, namespace: x}}\nspec:\n  podSelector: {{}}\n{spec}"
        );
        let (m, errors) = load("k.yaml", &text);
        assert!(m.policies.is_empty(), "{spec}");
        let e = errors.first().cloned().unwrap_or_default();
        assert!(
            e.starts_with(&format!("k.yaml: document 1 (NetworkPolicy x/k): {want}")),
            "{spec}\ngot: {e}"
        );
    }
}

#[test]
fn lists_json_and_both_calico_groups() {
    let list = r#"{"apiVersion": "v1", "kind": "List", "items": [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "labels": {"team": "x"}}},
        {"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy", "metadata": {"name": "g"},
         "spec": {"selector": "all()", "egress": [{"action": "Allow", "protocol": "TCP", "destination": {"ports": ["8000:8080", "http"]}}]}},
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "a"},
         "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
         "status": {"podIP": "10.0.0.1", "podIPs": [{"ip": "10.0.0.1"}, {"ip": "fd00::1"}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "ignored"}}
    ]}"#;
    let (m, errors) = load("cluster.json", list);
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(m.cluster.namespaces.len(), 1);
    let pod = m.cluster.pods.first().cloned();
    assert_eq!(pod.as_ref().map(|p| p.ips.len()), Some(2));
    assert_eq!(
        pod.as_ref().map(|p| p.service_account.as_str()),
        Some("default")
    );
    let gnp = m.policies.first();
    assert_eq!(gnp.map(|p| p.id.kind), Some(PolicyKind::Global));
    assert_eq!(
        gnp.map(|p| (p.ingress_applies, p.egress_applies)),
        Some((false, true)),
        "egress rules only -> [Egress]"
    );
    let ports = gnp
        .and_then(|p| p.egress.first())
        .map(|r| r.destination.ports.clone())
        .unwrap_or_default();
    assert_eq!(
        ports,
        vec![
            PortMatch::Range {
                first: 8000,
                last: 8080
            },
            PortMatch::Named("http".into())
        ]
    );
}

#[test]
fn list_item_errors_name_the_item() {
    let list = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Pod\n    metadata: {name: p, namespace: a}\n    status: {podIP: not-an-ip}\n";
    let (_, errors) = load("l.yaml", list);
    assert_eq!(
        errors,
        vec![
            "l.yaml: document 1 (Pod a/p): items[0].status.podIP: invalid IP address \"not-an-ip\""
        ]
    );
}

#[test]
fn broken_yaml_and_missing_heads() {
    let (_, errors) = load("x.yaml", "a: [unclosed\n");
    assert!(
        errors
            .first()
            .is_some_and(|e| e.starts_with("x.yaml: document 1: invalid YAML")),
        "{errors:?}"
    );
    let (_, errors) = load("x.yaml", "kind: Pod\nmetadata: {name: p}\n");
    assert_eq!(
        errors,
        vec!["x.yaml: document 1 (Pod p): apiVersion: missing"]
    );
    let (_, errors) = load("x.yaml", "apiVersion: v1\nkind: Pod\nmetadata: {}\n");
    assert_eq!(
        errors,
        vec!["x.yaml: document 1 (Pod): metadata.name: missing"]
    );
    let (_, errors) = load("x.json", "{");
    assert!(errors
        .first()
        .is_some_and(|e| e.starts_with("x.json: document 1: invalid JSON")));
    let (m, errors) = load("x.yaml", "---\n---\n");
    assert!(errors.is_empty() && m.policies.is_empty());
}

#[test]
fn tiers_and_staged_kinds() {
    let text = "apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: StagedKubernetesNetworkPolicy
metadata: {name: sk, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: projectcalico.org/v3
kind: StagedGlobalNetworkPolicy
metadata: {name: sg}
spec: {stagedAction: Delete}
";
    let (m, errors) = load("t.yaml", text);
    assert_eq!(m.tiers.len(), 1);
    assert_eq!(
        m.policies.first().map(|p| p.id.kind),
        Some(PolicyKind::StagedKubernetes)
    );
    assert_eq!(errors, vec!["t.yaml: document 3 (StagedGlobalNetworkPolicy sg): spec.stagedAction: stagedAction \"Delete\" is not supported (only Set)"]);
}
