//! The Kubernetes source against recorded API responses
//! (`control-plane/testdata/k8s/`, see its README: written by hand from the
//! Kubernetes and Calico API references, in the shape the API server sends —
//! list items without apiVersion/kind, managedFields, watch events as JSON
//! lines — not captured from a live cluster, since none runs here), served to a
//! real `kube::Client` and kube-runtime watchers by tower-test's mock service.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::time::Duration;

use futures::StreamExt;
use kube::core::ApiResource;

use super::fake_api::{FakeApi, Reply, Seen, KUBERNETES_PATHS};
use super::kinds::{discover_calico, kubernetes_kinds, CalicoApi};
use super::source::ClusterSource;
use super::watch::events;
use crate::serve::Change;

/// Every Kubernetes kind: its list, then one watch response; `/api/v1/...` or
/// `/apis/group/version/...` by kind.
fn kubernetes_routes(api: FakeApi) -> FakeApi {
    let mut api = api.kubernetes_lists();
    for (path, name) in KUBERNETES_PATHS {
        if name == "services" {
            // The Services watch first fails outright (an API server restarting).
            api = api.route(
                &format!("GET {path} watch"),
                Reply {
                    status: 503,
                    body: UNAVAILABLE.into(),
                },
            );
        }
        api = api.route(
            &format!("GET {path} watch"),
            Reply::fixture(&format!("{name}.watch.jsonl")),
        );
    }
    api
}

const UNAVAILABLE: &str = r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server is currently unable to handle the request","reason":"ServiceUnavailable","code":503}"#;

fn keys(source: &ClusterSource) -> Vec<&str> {
    source.objects().keys().map(String::as_str).collect()
}

/// Applies events until `done` holds for the source (or fails after 20 s).
async fn run_until(
    stream: &mut (impl futures::Stream<Item = super::watch::KindEvent> + Unpin),
    source: &mut ClusterSource,
    changes: &mut Vec<Change>,
    what: &str,
    done: impl Fn(&ClusterSource) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(source) {
        let next = tokio::time::timeout_at(deadline, stream.next()).await;
        let Ok(Some((kind, event))) = next else {
            panic!("gave up waiting for {what}; objects: {:#?}", keys(source));
        };
        let change = source.apply(&kind, event);
        if !change.is_empty() {
            changes.push(change);
        }
    }
}

/// Watches every Kubernetes kind and the Calico kinds found, until each is listed.
async fn synced(
    client: kube::Client,
    calico: &CalicoApi,
) -> (
    impl futures::Stream<Item = super::watch::KindEvent> + Unpin,
    ClusterSource,
    Vec<Change>,
) {
    let mut kinds: Vec<ApiResource> = kubernetes_kinds();
    kinds.extend(calico.kinds().iter().cloned());
    let mut stream = Box::pin(events(client, &kinds));
    let mut source = ClusterSource::default();
    let mut changes = Vec::new();
    run_until(
        &mut stream,
        &mut source,
        &mut changes,
        "the first list of every kind",
        |s| s.synced(&kinds),
    )
    .await;
    (stream, source, changes)
}

fn requests(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .map(|(r, _)| r.clone())
        .collect()
}

#[tokio::test]
async fn watches_every_kind_and_follows_adds_changes_deletes_and_errors() {
    let (client, seen) = kubernetes_routes(FakeApi::default())
        .route(
            "GET /apis/projectcalico.org/v3",
            Reply::fixture("discovery.projectcalico.org-v3.json"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/tiers",
            Reply::fixture("calico-v3.tiers.list.json"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/tiers watch",
            Reply::fixture("calico-v3.tiers.watch.jsonl"),
        )
        // The GNP watch answers 410 Expired: the watcher lists again and sees the relist.
        .route(
            "GET /apis/projectcalico.org/v3/globalnetworkpolicies",
            Reply::fixture("calico-v3.globalnetworkpolicies.list.json"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/globalnetworkpolicies watch",
            Reply::fixture("calico-v3.globalnetworkpolicies.watch.jsonl"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/globalnetworkpolicies",
            Reply::fixture("calico-v3.globalnetworkpolicies.relist.json"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/networkpolicies",
            Reply::fixture("calico-v3.networkpolicies.list.json"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/networkpolicies watch",
            Reply::fixture("calico-v3.networkpolicies.watch.jsonl"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/stagedglobalnetworkpolicies",
            Reply::fixture("calico-v3.stagedglobalnetworkpolicies.list.json"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/stagednetworkpolicies",
            Reply::fixture("calico-v3.stagednetworkpolicies.list.json"),
        )
        .route(
            "GET /apis/projectcalico.org/v3/stagedkubernetesnetworkpolicies",
            Reply::fixture("calico-v3.stagedkubernetesnetworkpolicies.list.json"),
        )
        .start();
    let calico = discover_calico(&client).await.unwrap();
    let CalicoApi::V3(calico_kinds) = &calico else {
        panic!("{calico:?}")
    };
    let served: Vec<&str> = calico_kinds.iter().map(|k| k.plural.as_str()).collect();
    // IPPool and BGPConfiguration are served but carry no policy; tiers/status is a subresource.
    assert_eq!(
        served,
        [
            "tiers",
            "globalnetworkpolicies",
            "networkpolicies",
            "stagedglobalnetworkpolicies",
            "stagednetworkpolicies",
            "stagedkubernetesnetworkpolicies"
        ]
    );
    let (mut stream, mut source, mut changes) = synced(client, &calico).await;
    // (Watch events may already have arrived for kinds listed first.)
    for key in [
        "/Namespace//front",
        "/Namespace//kube-system",
        "/ServiceAccount/back/default",
        "/Service/back/back",
        "discovery.k8s.io/EndpointSlice/back/back-x7k2p",
        "projectcalico.org/Tier//security",
        "projectcalico.org/GlobalNetworkPolicy//allow-traffic-front-back",
        "projectcalico.org/NetworkPolicy/back/allow-http",
    ] {
        assert!(
            source.objects().contains_key(key),
            "{key} missing: {:#?}",
            keys(&source)
        );
    }
    // Nothing of what only the API server needs is distributed.
    let pod = source
        .objects()
        .values()
        .find(|o| o.key.starts_with("/Pod/front/nginx-front"))
        .unwrap();
    assert!(pod.json.contains("\"apiVersion\":\"v1\""), "{}", pod.json);
    assert!(
        !pod.json.contains("managedFields") && !pod.json.contains("containerStatuses"),
        "{}",
        pod.json
    );

    run_until(&mut stream, &mut source, &mut changes, "every watch event", |s| {
        let o = s.objects();
        o.contains_key("/Pod/front/client-5f7c8d9b6-m4pqr")
            && !o.contains_key("/Pod/back/nginx-back-7c9d4f6b8-q8wzt")
            && o.get("/Pod/front/nginx-front-6d8f7b9c5-k2xjq").is_some_and(|p| p.json.contains("\"version\":\"v2\""))
            && o.get("/Namespace//front").is_some_and(|n| n.json.contains("\"team\":\"web\""))
            && o.contains_key("/ServiceAccount/front/web")
            && o.contains_key("/Service/front/web")
            && o.get("discovery.k8s.io/EndpointSlice/back/back-x7k2p").is_some_and(|e| e.json.contains("\"ready\":false"))
            && !o.contains_key("networking.k8s.io/NetworkPolicy/back/allow-front")
            && o.contains_key("projectcalico.org/Tier//platform")
            && o.get("projectcalico.org/NetworkPolicy/back/allow-http").is_some_and(|p| p.json.contains("HEAD"))
            // After 410 Expired: the relist drops one policy and brings another.
            && !o.contains_key("projectcalico.org/GlobalNetworkPolicy//security.deny-kube-system")
            && o.contains_key("projectcalico.org/GlobalNetworkPolicy//allow-egress-front-to-back")
    })
    .await;
    assert!(changes.iter().any(|c| c
        .removals
        .iter()
        .any(|k| k == "/Pod/back/nginx-back-7c9d4f6b8-q8wzt")));

    let seen = requests(&seen);
    let gnp_lists = seen
        .iter()
        .filter(|r| {
            r.starts_with("GET /apis/projectcalico.org/v3/globalnetworkpolicies?")
                && !r.contains("watch=true")
        })
        .count();
    assert_eq!(gnp_lists, 2, "a 410 relists once: {seen:#?}");
    // The pod watch ended after its events; the next one resumes where it left off.
    let pod_watches: Vec<_> = seen
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/pods?") && r.contains("watch=true"))
        .collect();
    assert!(pod_watches.len() >= 2, "{pod_watches:#?}");
    let service_watches = seen
        .iter()
        .filter(|r| r.starts_with("GET /api/v1/services?") && r.contains("watch=true"))
        .count();
    assert!(
        service_watches >= 2,
        "the failed watch is retried: {seen:#?}"
    );
    let last_rv = last_resource_version("pods.watch.jsonl");
    assert!(
        pod_watches[1].contains(&format!("resourceVersion={last_rv}")),
        "{pod_watches:#?}"
    );
}

fn last_resource_version(watch_fixture: &str) -> String {
    let text = super::fake_api::fixture(watch_fixture);
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["object"]["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn crd_only_calico_and_malformed_objects_are_skipped_without_stopping_the_watch() {
    // No Calico API server: v3 is not found, the CRDs are.
    let (client, _seen) = kubernetes_routes(FakeApi::default())
        .calico_crds(true)
        .start();
    let calico = discover_calico(&client).await.unwrap();
    let CalicoApi::Crd(calico_kinds) = &calico else {
        panic!("{calico:?}")
    };
    assert_eq!(calico_kinds.len(), 3, "{calico_kinds:?}");
    let (mut stream, mut source, mut changes) = synced(client, &calico).await;
    // The listed policy with an unterminated selector is skipped, named with its field.
    let problems: Vec<&String> = source.problems().collect();
    assert!(
        problems.iter().any(
            |p| p.contains("GlobalNetworkPolicy default.broken-selector")
                && p.contains("spec.selector")
                && p.contains("(skipped)")
        ),
        "{problems:#?}"
    );
    assert!(!source
        .objects()
        .contains_key("projectcalico.org/GlobalNetworkPolicy//default.broken-selector"));
    let good = "projectcalico.org/GlobalNetworkPolicy//default.allow-dns";
    let listed = source.objects()[good].json.clone();

    // Then the good policy is edited into a bad one (kept at its last good version)
    // and another policy is added after it: the watch went on.
    run_until(
        &mut stream,
        &mut source,
        &mut changes,
        "the policy added after the bad edit",
        |s| {
            s.objects()
                .contains_key("projectcalico.org/GlobalNetworkPolicy//default.allow-web")
                && s.objects()
                    .contains_key("projectcalico.org/NetworkPolicy/back/default.allow-scrape")
                && s.objects().contains_key("projectcalico.org/Tier//security")
        },
    )
    .await;
    assert_eq!(
        source.objects()[good].json,
        listed,
        "the last good version stays"
    );
    let problems: Vec<&String> = source.problems().collect();
    assert!(
        problems.iter().any(|p| p.contains("default.allow-dns")
            && p.contains("spec.egress[0].destination.ports[0]")
            && p.contains("last good version")),
        "{problems:#?}"
    );
}
