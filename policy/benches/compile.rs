//! Compile and evaluate a generated cluster the size DESIGN.md targets: 10k pods in
//! 500 namespaces, 2k policies mixing Kubernetes NetworkPolicy, Calico NetworkPolicy
//! and GlobalNetworkPolicy in 3 tiers.
//!
//! `cargo bench -p palisade-policy --bench compile`. Targets: cold compile < 1 s, one
//! evaluation < 1 us, one label change < 1 ms.

#![allow(clippy::indexing_slicing)] // generated data, not untrusted input

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_policy::compile::CompiledCluster;
use palisade_policy::model::PodKey;
use palisade_policy::{Endpoint, Flow, Manifests, Protocol};

const NAMESPACES: usize = 500;
const PODS_PER_NAMESPACE: usize = 20;
const KUBERNETES_POLICIES: usize = 1000;
const CALICO_POLICIES: usize = 800;
const GLOBAL_POLICIES: usize = 200;

fn pod_ip(n: usize) -> Ipv4Addr {
    let n = n as u32 + 1;
    Ipv4Addr::new(10, (n >> 16) as u8, (n >> 8) as u8, n as u8)
}

/// The generated cluster as manifests, the way an operator would write them.
fn generate() -> String {
    let mut y = String::new();
    for t in [("security", 100), ("platform", 200)] {
        let _ = write!(y, "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: {}}}\nspec: {{order: {}}}\n", t.0, t.1);
    }
    for ns in 0..NAMESPACES {
        let env = if ns % 3 == 0 { "dev" } else { "prod" };
        let _ = write!(y, "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: ns-{ns}, labels: {{team: t{}, env: {env}}}}}\n", ns % 20);
        for p in 0..PODS_PER_NAMESPACE {
            let n = ns * PODS_PER_NAMESPACE + p;
            let role = ["web", "api", "db"][p % 3];
            let _ = write!(
                y,
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: pod-{p}, namespace: ns-{ns}, labels: {{app: app{}, role: {role}, version: v{}}}}}\n\
                 spec: {{serviceAccountName: sa{}, containers: [{{name: c, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
                 status: {{podIP: {}}}\n",
                p % 5,
                p % 2,
                p % 4,
                pod_ip(n)
            );
        }
    }
    for i in 0..KUBERNETES_POLICIES {
        let ns = i % NAMESPACES;
        // The first policy of each namespace covers all its pods, as namespaces with
        // a baseline policy do; the second one a single app.
        let pods = if i < NAMESPACES {
            "{}".to_string()
        } else {
            format!("{{matchLabels: {{app: app{}}}}}", i % 5)
        };
        let _ = write!(
            y,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: knp-{i}, namespace: ns-{ns}}}\n\
             spec:\n  podSelector: {pods}\n  policyTypes: [Ingress, Egress]\n  ingress:\n\
             \x20   - from:\n        - podSelector: {{matchLabels: {{role: web}}}}\n        - namespaceSelector: {{matchLabels: {{team: t{}}}}}\n\
             \x20     ports: [{{port: 8080}}, {{port: http}}]\n  egress:\n    - to: [{{ipBlock: {{cidr: 10.0.0.0/8, except: [10.200.0.0/16]}}}}]\n",
            i % 20
        );
    }
    for i in 0..CALICO_POLICIES {
        let ns = (i * 7) % NAMESPACES;
        let tier = if i % 2 == 0 { "platform" } else { "default" };
        let name = if tier == "default" {
            format!("cnp-{i}")
        } else {
            format!("platform.cnp-{i}")
        };
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: ns-{ns}}}\n\
             spec:\n  tier: {tier}\n  order: {}\n  selector: app == 'app{}' && role in {{'api', 'db'}}\n  types: [Ingress, Egress]\n  ingress:\n\
             \x20   - action: Log\n      protocol: TCP\n      source: {{notNets: [10.0.0.0/8]}}\n\
             \x20   - action: Allow\n      protocol: TCP\n      source: {{selector: role == 'web'}}\n      destination: {{ports: [80, 443, '8000:8100']}}\n\
             \x20   - action: Pass\n      source: {{namespaceSelector: env == 'dev'}}\n  egress:\n\
             \x20   - action: Allow\n      destination: {{namespaceSelector: env == 'prod', selector: has(app)}}\n",
            i % 50,
            i % 5
        );
    }
    for i in 0..GLOBAL_POLICIES {
        let _ = write!(
            y,
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: security.gnp-{i}}}\n\
             spec:\n  tier: security\n  order: {i}\n  selector: version == 'v{}' && app == 'app{}'\n  namespaceSelector: team == 't{}'\n  types: [Ingress, Egress]\n\
             \x20 ingress:\n    - action: Deny\n      source: {{nets: [192.0.2.0/24]}}\n    - action: Pass\n  egress:\n\
             \x20   - action: Deny\n      protocol: TCP\n      destination: {{nets: [198.51.100.{}/32], ports: [25]}}\n    - action: Pass\n",
            i % 2,
            i % 5,
            i % 20,
            i % 250
        );
    }
    y
}

fn manifests() -> Manifests {
    let mut m = Manifests::default();
    let errors = m.load_str("generated.yaml", &generate());
    assert!(errors.is_empty(), "{:?}", errors.first());
    assert_eq!(m.cluster.pods.len(), NAMESPACES * PODS_PER_NAMESPACE);
    assert_eq!(
        m.policies.len(),
        KUBERNETES_POLICIES + CALICO_POLICIES + GLOBAL_POLICIES
    );
    m
}

fn flows(c: &CompiledCluster) -> Vec<(Endpoint, Endpoint, u16)> {
    // Pairs across namespaces and roles, so flows meet every tier and kind.
    (0..64)
        .map(|k| {
            let src = pod_ip((k * 997) % (NAMESPACES * PODS_PER_NAMESPACE));
            let dst = pod_ip((k * 7919 + 13) % (NAMESPACES * PODS_PER_NAMESPACE));
            (
                c.endpoint(IpAddr::V4(src)),
                c.endpoint(IpAddr::V4(dst)),
                [80, 8080, 443, 5432][k % 4],
            )
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let m = manifests();

    let mut group = c.benchmark_group("cold");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(20));
    group.bench_function("compile 10k pods 2k policies", |b| {
        b.iter(|| black_box(CompiledCluster::new(black_box(&m))))
    });
    group.finish();

    let (mut compiled, errors) = CompiledCluster::new(&m);
    assert!(errors.is_empty(), "{:?}", errors.first());
    let pairs = flows(&compiled);
    // The measured flows must walk real policy: every pod is selected, and the
    // decisions are a mix of rules and implicit denies, not default allows.
    let decisions: Vec<String> = pairs
        .iter()
        .filter_map(|(source, destination, port)| {
            let flow = Flow {
                source: *source,
                destination: *destination,
                protocol: Protocol::TCP,
                port: Some(*port),
                icmp: None,
                http: None,
            };
            let v = compiled.evaluate(&flow);
            let ingress = v.ingress?;
            Some(format!(
                "{:?}",
                compiled.reference(
                    ingress.workload,
                    palisade_policy::Direction::Ingress,
                    ingress.decision,
                    false
                )
            ))
        })
        .collect();
    assert_eq!(decisions.len(), pairs.len());
    assert!(
        decisions.iter().all(|d| !d.contains("DefaultAllow")),
        "{decisions:?}"
    );
    assert!(
        decisions.iter().any(|d| d.starts_with("Rule"))
            && decisions.iter().any(|d| d.starts_with("EndOfTier")),
        "{decisions:?}"
    );
    let mut i = 0;
    c.bench_function("evaluate one connection", |b| {
        b.iter(|| {
            i = (i + 1) % pairs.len();
            let (source, destination, port) = pairs[i];
            let flow = Flow {
                source,
                destination,
                protocol: Protocol::TCP,
                port: Some(port),
                icmp: None,
                http: None,
            };
            black_box(compiled.evaluate(black_box(&flow)))
        })
    });

    let key = PodKey::new("ns-42", "pod-7");
    let Some(mut pod) = compiled
        .workload_by_key(&key)
        .and_then(|w| compiled.workload(w))
        .map(|w| w.pod.clone())
    else {
        panic!("no pod {key}");
    };
    let mut flip = false;
    c.bench_function("one label change", |b| {
        b.iter(|| {
            flip = !flip;
            pod.labels.insert(
                "app".into(),
                if flip { "app1".into() } else { "app2".into() },
            );
            black_box(compiled.apply_pod(pod.clone()))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
