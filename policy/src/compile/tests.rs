//! The compiler: label changes move peer-group membership and never recompile rules;
//! incremental updates give the same verdicts as compiling from scratch.

use std::sync::Arc;

use crate::compile::CompiledCluster;
use crate::evaluate::Flow;
use crate::manifest::Manifests;
use crate::model::{LabelMap, Namespace, PodKey};
use crate::policy::{Direction, PolicyKind, PolicyRef, Protocol};
use crate::verdict::Decision;

const CLUSTER: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {env: prod}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop, labels: {app: web}}
status: {podIP: 10.1.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: shop, labels: {app: db}}
status: {podIP: 10.1.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: tool, namespace: shop, labels: {app: tool}}
status: {podIP: 10.1.0.3}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: shop}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
    - from: [{podSelector: {matchLabels: {app: web}}}]
      ports: [{port: 5432}]
";

fn compiled(text: &str) -> CompiledCluster {
    let mut m = Manifests::default();
    let errors = m.load_str("test.yaml", text);
    assert!(errors.is_empty(), "{errors:?}");
    let (c, errors) = CompiledCluster::new(&m);
    assert!(errors.is_empty(), "{errors:?}");
    c
}

fn tcp(c: &CompiledCluster, from: &str, to: &str, port: u16) -> crate::verdict::Verdict {
    let src = c.endpoint(
        from.parse()
            .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()),
    );
    let dst = c.endpoint(to.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()));
    c.evaluate(&Flow {
        source: src,
        destination: dst,
        protocol: Protocol::TCP,
        port: Some(port),
        icmp: None,
        http: None,
    })
}

fn pod(c: &CompiledCluster, ns: &str, name: &str) -> crate::model::Pod {
    c.workload_by_key(&PodKey::new(ns, name))
        .and_then(|w| c.workload(w))
        .map(|w| w.pod.clone())
        .unwrap_or_else(|| {
            panic!("no pod {ns}/{name}");
        })
}

#[test]
fn label_change_updates_peer_groups_not_compiled_rules() {
    let mut c = compiled(CLUSTER);
    let policy = PolicyRef {
        kind: PolicyKind::Kubernetes,
        namespace: Some("shop".into()),
        name: "db-from-web".into(),
    };
    let before = c.policy_arc(&policy);
    let groups_before = c.groups().len();
    assert!(
        !tcp(&c, "10.1.0.3", "10.1.0.2", 5432).allowed,
        "tool is not web"
    );

    // tool becomes a web pod.
    let mut tool = pod(&c, "shop", "tool");
    tool.labels.insert("app".into(), "web".into());
    let changes = c.apply_pod(tool);

    // The delta is membership only: tool left no group it should stay in and joined
    // the peer group of the rule's `from`.
    assert!(changes.iter().any(|ch| ch.joined), "{changes:?}");
    let after = c.policy_arc(&policy);
    assert!(
        matches!((&before, &after), (Some(b), Some(a)) if Arc::ptr_eq(b, a)),
        "the compiled policy is the same object: no rule was recompiled"
    );
    assert_eq!(
        c.groups().len(),
        groups_before,
        "no peer group created or dropped"
    );
    let v = tcp(&c, "10.1.0.3", "10.1.0.2", 5432);
    assert!(v.allowed, "tool now reaches db as a web pod");
    assert!(matches!(
        v.ingress.map(|i| i.decision),
        Some(Decision::Rule { .. })
    ));
}

#[test]
fn label_change_can_make_a_policy_select_a_pod() {
    let mut c = compiled(CLUSTER);
    assert_eq!(
        tcp(&c, "10.1.0.1", "10.1.0.3", 80)
            .ingress
            .map(|i| i.decision),
        Some(Decision::NoPolicy)
    );
    let mut tool = pod(&c, "shop", "tool");
    tool.labels.insert("app".into(), "db".into());
    c.apply_pod(tool);
    // Now selected by db-from-web: isolated for port 80.
    let v = tcp(&c, "10.1.0.1", "10.1.0.3", 80);
    assert!(!v.allowed);
    assert!(matches!(
        v.ingress.map(|i| i.decision),
        Some(Decision::EndOfTier { .. })
    ));
}

#[test]
fn namespace_label_change_reaches_namespace_selectors() {
    let text = format!(
        "{CLUSTER}---
apiVersion: v1
kind: Namespace
metadata: {{name: ops}}
---
apiVersion: v1
kind: Pod
metadata: {{name: admin, namespace: ops}}
status: {{podIP: 10.2.0.1}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-from-trusted, namespace: shop}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  ingress:
    - from: [{{namespaceSelector: {{matchLabels: {{trusted: 'yes'}}}}}}]
"
    );
    let mut c = compiled(&text);
    assert!(!tcp(&c, "10.2.0.1", "10.1.0.1", 80).allowed);
    let mut labels = LabelMap::new();
    labels.insert("trusted".into(), "yes".into());
    let changes = c.apply_namespace(Namespace::new("ops", labels));
    assert_eq!(changes.len(), 1, "admin joins one group: {changes:?}");
    assert!(tcp(&c, "10.2.0.1", "10.1.0.1", 80).allowed);
}

#[test]
fn removing_a_pod_and_a_policy() {
    let mut c = compiled(CLUSTER);
    let changes = c.remove_pod(&PodKey::new("shop", "web"));
    assert!(changes.iter().all(|ch| !ch.joined) && !changes.is_empty());
    assert_eq!(
        c.endpoint(
            "10.1.0.1"
                .parse()
                .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into())
        )
        .workload,
        None
    );
    let policy = PolicyRef {
        kind: PolicyKind::Kubernetes,
        namespace: Some("shop".into()),
        name: "db-from-web".into(),
    };
    c.remove_policy(&policy);
    assert_eq!(
        tcp(&c, "10.1.0.3", "10.1.0.2", 5432)
            .ingress
            .map(|i| i.decision),
        Some(Decision::NoPolicy)
    );
    assert_eq!(c.groups().len(), 0, "groups nobody uses are dropped");
}

#[test]
fn unknown_tier_is_a_compile_error_and_the_rest_compiles() {
    let text = format!(
        "{CLUSTER}---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: security.deny-all}}
spec: {{tier: security, selector: all()}}
"
    );
    let mut m = Manifests::default();
    assert!(m.load_str("t.yaml", &text).is_empty());
    let (c, errors) = CompiledCluster::new(&m);
    assert_eq!(errors.len(), 1);
    assert_eq!(
        errors.first().map(ToString::to_string).unwrap_or_default(),
        "GlobalNetworkPolicy gnp/security.deny-all: spec.tier: tier \"security\" does not exist"
    );
    assert_eq!(c.policies().count(), 1);
}

/// Every scenario with steps, applied incrementally (pods, namespaces, policies one by
/// one onto the previous step's compiled cluster), must give exactly the verdicts of
/// a fresh compile of that step.
#[test]
fn incremental_updates_match_a_fresh_compile_across_the_corpus() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/conformance");
    let mut files = Vec::new();
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "yaml") {
                files.push(p);
            }
        }
    }
    let mut compared = 0;
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        let Ok((_, steps)) = crate::scenario::load(&file.display().to_string(), &text) else {
            continue;
        };
        let Some(first) = steps.first() else { continue };
        let (mut incremental, _) = CompiledCluster::new(&first.manifests);
        for step in steps.iter().skip(1) {
            let m = &step.manifests;
            let mut cluster = m.cluster.clone();
            cluster.complete();
            incremental.apply_tiers(&m.tiers);
            for ns in &cluster.namespaces {
                incremental.apply_namespace(ns.clone());
            }
            for sa in &cluster.service_accounts {
                incremental.apply_service_account(sa.clone());
            }
            let gone: Vec<PodKey> = incremental
                .workloads()
                .map(|(_, w)| w.pod.key())
                .filter(|k| !cluster.pods.iter().any(|p| &p.key() == k))
                .collect();
            for k in gone {
                incremental.remove_pod(&k);
            }
            for p in &cluster.pods {
                incremental.apply_pod(p.clone());
            }
            let old: Vec<PolicyRef> = incremental
                .policies()
                .map(|(_, p)| p.policy.id.clone())
                .filter(|id| !m.policies.iter().any(|p| &p.id == id))
                .collect();
            for id in old {
                incremental.remove_policy(&id);
            }
            for p in &m.policies {
                let _ = incremental.apply_policy(p.clone());
            }
            for (_, e) in &step.expect {
                let fresh = crate::scenario::evaluate(&step.compiled, e);
                let inc = crate::scenario::evaluate(&incremental, e);
                let (Ok(fresh), Ok(inc)) = (fresh, inc) else {
                    panic!("{}: cannot evaluate {e:?}", file.display())
                };
                let fresh = crate::scenario::actual(&step.compiled, &fresh);
                let inc = crate::scenario::actual(&incremental, &inc);
                assert_eq!(fresh, inc, "{}: {e:?}", file.display());
                compared += 1;
            }
        }
    }
    assert!(
        compared > 50,
        "only {compared} stepped expectations compared"
    );
}

#[test]
fn workload_policy_lists_are_ordered_by_tier_then_order_then_name() {
    let text = "
apiVersion: v1
kind: Pod
metadata: {name: p, namespace: n}
status: {podIP: 10.9.0.1}
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: first}
spec: {order: 10}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b}
spec: {order: 5, selector: all()}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a}
spec: {order: 5, selector: all()}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: c}
spec: {selector: all()}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: d}
spec: {order: 50.5, selector: all()}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: first.z}
spec: {tier: first, order: 1000, selector: all()}
";
    let c = compiled(text);
    let w = c
        .workload_by_key(&PodKey::new("n", "p"))
        .and_then(|w| c.workload(w));
    let names: Vec<Vec<String>> = w
        .map(|w| w.policy.get(Direction::Ingress))
        .unwrap_or_default()
        .iter()
        .map(|t| {
            t.policies
                .iter()
                .filter_map(|p| c.policy(*p))
                .map(|p| p.policy.id.name.clone())
                .collect()
        })
        .collect();
    assert_eq!(
        names,
        vec![
            vec!["first.z".to_string()],
            vec!["a".into(), "b".into(), "d".into(), "c".into()]
        ]
    );
}
