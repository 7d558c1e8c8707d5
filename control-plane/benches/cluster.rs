//! The control plane's cluster side at the size DESIGN.md targets (10k pods):
//! the first sync of the Kubernetes source, one pod's label change through the
//! source and into the next world version, and one injection review.
//!
//! `cargo bench -p palisade-control-plane --bench cluster`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)] // generated data

use std::collections::BTreeMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use k8s_openapi::api::core::v1::Pod;
use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher::Event;
use palisade_control_plane::k8s::source::ClusterSource;
use palisade_control_plane::serve::world::World;
use palisade_control_plane::webhook::{review, to_json, InjectConfig};
use serde_json::Value;

const PODS: usize = 10_000;

fn testdata(name: &str) -> String {
    std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("testdata")
            .join(name),
    )
    .unwrap()
}

/// 10k pods shaped like the recorded one (full spec and status, managedFields).
fn pods() -> Vec<DynamicObject> {
    let list: Value = serde_json::from_str(&testdata("k8s/pods.list.json")).unwrap();
    let template = list["items"][0].clone();
    (0..PODS)
        .map(|n| {
            let mut pod = template.clone();
            pod["metadata"]["name"] = format!("web-{n}").into();
            pod["metadata"]["namespace"] = format!("ns-{}", n % 500).into();
            pod["metadata"]["labels"]["app"] = format!("app-{}", n % 50).into();
            let ip = format!("10.{}.{}.{}", n >> 16, (n >> 8) & 255, n & 255);
            pod["status"]["podIP"] = ip.clone().into();
            pod["status"]["podIPs"] = serde_json::json!([{"ip": ip}]);
            serde_json::from_value(pod).unwrap()
        })
        .collect()
}

fn synced(kind: &ApiResource, pods: &[DynamicObject]) -> ClusterSource {
    let mut source = ClusterSource::default();
    source.apply(kind, Event::Init);
    for pod in pods {
        source.apply(kind, Event::InitApply(pod.clone()));
    }
    source.apply(kind, Event::InitDone);
    source
}

fn bench(c: &mut Criterion) {
    let kind = ApiResource::erase::<Pod>(&());
    let pods = pods();
    let mut group = c.benchmark_group("cluster");
    group.sample_size(10);
    group.bench_function("first sync of 10k pods", |b| {
        b.iter(|| black_box(synced(&kind, &pods)))
    });

    let mut source = synced(&kind, &pods);
    let world = World::first(source.objects().clone(), "cluster.local");
    let mut relabelled = pods[4242].clone();
    let mut flip = false;
    group.bench_function(
        "label change: source + next world version (10k pods)",
        |b| {
            b.iter(|| {
                flip = !flip;
                let labels = relabelled.metadata.labels.get_or_insert_with(BTreeMap::new);
                labels.insert("version".into(), if flip { "v2" } else { "v3" }.into());
                let change = source.apply(&kind, Event::Apply(relabelled.clone()));
                assert_eq!(change.upserts.len(), 1);
                black_box(world.next(change, "cluster.local"))
            })
        },
    );
    group.finish();

    let body = testdata("webhook/deployment-pod-create.json").into_bytes();
    let config = InjectConfig {
        proxy_image: "ghcr.io/palisade-mesh/palisade:0.1.0".into(),
        control_plane: "palisade-control-plane.palisade-system.svc:15012".into(),
        trust_domain: "cluster.local".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        token_audience: "palisade".into(),
        proxy_uid: 1337,
    };
    let labels = BTreeMap::from([("palisade.io/inject".to_owned(), "enabled".to_owned())]);
    c.bench_function("webhook: one pod CREATE reviewed and answered", |b| {
        b.iter(|| {
            let reviewed = review(black_box(&body), &config, |_| Some(labels.clone()));
            black_box(to_json(&reviewed.review).unwrap())
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
