//! The injector on AdmissionReviews in the shape the API server sends
//! (`control-plane/testdata/webhook/`: written from the admission.k8s.io/v1
//! reference and a ReplicaSet's and a Job's pod as the controllers create them,
//! generateName and all; not captured). Each patch is applied with json-patch
//! and the result read back as a k8s-openapi Pod.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Value};

use super::*;

fn config() -> InjectConfig {
    InjectConfig {
        proxy_image: "ghcr.io/palisade/palisade:0.1.0".into(),
        control_plane: "palisade-control-plane.palisade-system.svc:15012".into(),
        trust_domain: "cluster.local".into(),
        ca_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
        token_audience: "palisade".into(),
        proxy_uid: 1337,
    }
}

fn fixture(name: &str) -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/webhook")
        .join(name);
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Namespaces `front` and `back` opted in by label; `plain` not.
fn labels(ns: &str) -> Option<BTreeMap<String, String>> {
    let mut l = BTreeMap::from([("kubernetes.io/metadata.name".to_owned(), ns.to_owned())]);
    if ns == "front" || ns == "back" {
        l.insert("palisade.io/inject".into(), "enabled".into());
    }
    Some(l)
}

/// Sends `review` and returns the response object of the answer.
fn send(review: &Value) -> (Value, Outcome) {
    let answered = super::review(review.to_string().as_bytes(), &config(), labels);
    let json: Value = serde_json::from_slice(&to_json(&answered.review).unwrap()).unwrap();
    assert_eq!(json["apiVersion"], "admission.k8s.io/v1", "{json}");
    assert_eq!(json["kind"], "AdmissionReview", "{json}");
    (json["response"].clone(), answered.outcome)
}

/// The pod after the response's patch (or unchanged when there is none): the
/// patch is base64 in the JSON, as the API server reads a Go `[]byte`.
fn patched(review: &Value, response: &Value) -> Pod {
    use base64::Engine;
    let mut pod = review["request"]["object"].clone();
    if let Some(encoded) = response["patch"].as_str() {
        assert_eq!(response["patchType"], "JSONPatch");
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(encoded)
            .unwrap();
        let patch: json_patch::Patch = serde_json::from_slice(&bytes).unwrap();
        json_patch::patch(&mut pod, &patch).unwrap();
    }
    serde_json::from_value(pod).unwrap()
}

fn init_names(pod: &Pod) -> Vec<String> {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect()
}

fn init_container<'a>(pod: &'a Pod, name: &str) -> &'a Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .unwrap()
}

fn env(c: &Container, name: &str) -> Option<String> {
    c.env
        .iter()
        .flatten()
        .find(|e| e.name == name)
        .and_then(|e| e.value.clone())
}

#[test]
fn injects_a_native_sidecar_an_init_step_a_token_and_an_annotation() {
    let review = fixture("deployment-pod-create.json");
    let (response, outcome) = send(&review);
    assert_eq!(response["uid"], review["request"]["uid"], "uid echoed");
    assert_eq!(response["allowed"], true);
    assert_eq!(outcome, Outcome::Injected("front/web-7d4b9c6f58-".into()));
    let pod = patched(&review, &response);

    assert_eq!(init_names(&pod), [INIT_CONTAINER, PROXY_CONTAINER]);
    let init = init_container(&pod, INIT_CONTAINER);
    let caps = init
        .security_context
        .as_ref()
        .unwrap()
        .capabilities
        .as_ref()
        .unwrap();
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    let args = init.args.as_ref().unwrap();
    assert_eq!(args[..3], ["init", "--proxy-uid", "1337"]);
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    assert_eq!(
        arg("--exclude-inbound-ports").as_deref(),
        Some("15020"),
        "admin port: probes"
    );
    assert_eq!(
        arg("--exclude-inbound-cidrs").as_deref(),
        Some("$(HOST_IP)"),
        "the node's probes"
    );

    let proxy = init_container(&pod, PROXY_CONTAINER);
    assert_eq!(
        proxy.restart_policy.as_deref(),
        Some("Always"),
        "native sidecar"
    );
    let security = proxy.security_context.as_ref().unwrap();
    assert_eq!(
        (security.run_as_user, security.run_as_non_root),
        (Some(1337), Some(true))
    );
    assert!(
        proxy.startup_probe.is_some()
            && proxy.readiness_probe.is_some()
            && proxy.liveness_probe.is_some()
    );
    let startup = proxy
        .startup_probe
        .as_ref()
        .unwrap()
        .http_get
        .as_ref()
        .unwrap();
    assert_eq!(startup.path.as_deref(), Some("/ready"));
    assert!(proxy.resources.as_ref().unwrap().requests.is_some());
    assert_eq!(
        env(proxy, "PALISADE_POD").as_deref(),
        Some("$(POD_NAMESPACE)/$(POD_NAME)")
    );
    assert_eq!(
        env(proxy, "PALISADE_CONTROL_PLANE").as_deref(),
        Some("palisade-control-plane.palisade-system.svc:15012")
    );
    assert_eq!(
        env(proxy, "PALISADE_CONTROL_PLANE_CA_PEM"),
        Some(config().ca_pem)
    );
    let mount = &proxy.volume_mounts.as_ref().unwrap()[0];
    assert_eq!(
        (mount.name.as_str(), mount.mount_path.as_str()),
        ("palisade-token", "/var/run/secrets/palisade/tokens")
    );
    assert_eq!(
        env(proxy, "PALISADE_BOOTSTRAP_TOKEN_FILE").as_deref(),
        Some("/var/run/secrets/palisade/tokens/token")
    );

    let spec = pod.spec.as_ref().unwrap();
    let volumes: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    assert_eq!(volumes, ["kube-api-access-7xk2d", "palisade-token"]);
    let token = spec.volumes.as_ref().unwrap()[1]
        .projected
        .as_ref()
        .unwrap()
        .sources
        .as_ref()
        .unwrap()[0]
        .service_account_token
        .clone()
        .unwrap();
    assert_eq!(token.audience.as_deref(), Some("palisade"));
    // The app is as it was.
    let original: Pod = serde_json::from_value(review["request"]["object"].clone()).unwrap();
    assert_eq!(spec.containers, original.spec.as_ref().unwrap().containers);
    let annotations = pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(
        annotations.get("palisade.io/injected").map(String::as_str),
        Some(env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn a_job_keeps_its_own_init_containers_after_the_proxy_and_its_alias_exclusions() {
    let review = fixture("job-pod-create.json");
    let (response, outcome) = send(&review);
    assert!(matches!(outcome, Outcome::Injected(_)), "{outcome:?}");
    let pod = patched(&review, &response);
    // wait-for-db needs the network: it runs after the proxy is up.
    assert_eq!(
        init_names(&pod),
        [INIT_CONTAINER, PROXY_CONTAINER, "wait-for-db"]
    );
    let args = init_container(&pod, INIT_CONTAINER).args.clone().unwrap();
    let arg = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .map(|i| args[i + 1].clone())
    };
    assert_eq!(
        arg("--exclude-outbound-ports").as_deref(),
        Some("5432"),
        "Istio's spelling"
    );
    assert_eq!(
        arg("--exclude-outbound-cidrs").as_deref(),
        Some("10.20.0.0/16"),
        "Linkerd's spelling"
    );
    let annotations = pod.metadata.annotations.unwrap();
    assert!(annotations.contains_key("palisade.io/injected"));
    assert!(
        annotations.contains_key("batch.kubernetes.io/job-tracking"),
        "kept"
    );
}

#[test]
fn injecting_twice_changes_nothing_the_second_time() {
    let review = fixture("deployment-pod-create.json");
    let (response, _) = send(&review);
    let once = patched(&review, &response);
    let mut again = review.clone();
    again["request"]["object"] = serde_json::to_value(&once).unwrap();
    let (response, outcome) = send(&again);
    assert_eq!(response["allowed"], true);
    assert!(response.get("patch").is_none(), "{response}");
    assert!(
        matches!(outcome, Outcome::Skipped(ref why) if why.contains("already injected")),
        "{outcome:?}"
    );
}

#[test]
fn opt_in_and_out_by_namespace_label_and_pod_annotation() {
    let base = fixture("deployment-pod-create.json");
    let case = |namespace: &str, annotations: Value| {
        let mut review = base.clone();
        review["request"]["namespace"] = json!(namespace);
        review["request"]["object"]["metadata"]["namespace"] = json!(namespace);
        review["request"]["object"]["metadata"]["annotations"] = annotations;
        let (response, outcome) = send(&review);
        assert_eq!(response["allowed"], true, "{response}");
        assert_eq!(response["uid"], base["request"]["uid"]);
        (response.get("patch").is_some(), outcome)
    };
    // Namespace not labelled: skipped, unless the pod opts in.
    let (patch, outcome) = case("plain", json!(null));
    assert!(
        !patch && matches!(outcome, Outcome::Skipped(_)),
        "{outcome:?}"
    );
    assert!(case("plain", json!({"palisade.io/inject": "enabled"})).0);
    // Namespace labelled: injected, unless the pod opts out (ours or another mesh's spelling).
    assert!(case("front", json!({})).0);
    assert!(!case("front", json!({"palisade.io/inject": "disabled"})).0);
    assert!(!case("front", json!({"sidecar.istio.io/inject": "false"})).0);
    assert!(!case("front", json!({"linkerd.io/inject": "disabled"})).0);
    // A namespace the control plane has not seen counts as not labelled.
    assert!(!case("unknown", json!(null)).0);
    // hostNetwork pods are never injected.
    let mut review = base.clone();
    review["request"]["object"]["spec"]["hostNetwork"] = json!(true);
    assert!(send(&review).0.get("patch").is_none());
}

#[test]
fn dry_run_answers_the_same_and_records_nothing() {
    let mut review = fixture("deployment-pod-create.json");
    review["request"]["dryRun"] = json!(true);
    let (response, outcome) = send(&review);
    assert!(response["patch"].is_string(), "{response}");
    assert_eq!(outcome, Outcome::DryRun("front/web-7d4b9c6f58-".into()));
    assert_eq!(
        init_names(&patched(&review, &response))[..2],
        [INIT_CONTAINER, PROXY_CONTAINER]
    );
}

#[test]
fn other_kinds_and_operations_pass_unchanged() {
    let mut update = fixture("deployment-pod-create.json");
    update["request"]["operation"] = json!("UPDATE");
    let (response, outcome) = send(&update);
    assert_eq!(
        (response["allowed"].clone(), outcome),
        (json!(true), Outcome::NotApplicable)
    );
    let mut service = fixture("deployment-pod-create.json");
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    assert_eq!(send(&service).1, Outcome::NotApplicable);
}

#[test]
fn malformed_and_hostile_reviews_get_error_responses() {
    let good = fixture("deployment-pod-create.json");
    // Sets the field at `pointer` (its parent must exist).
    let with = |pointer: &str, value: Value| {
        let mut r = good.clone();
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let parent = if parent.is_empty() {
            &mut r
        } else {
            r.pointer_mut(parent).unwrap()
        };
        parent
            .as_object_mut()
            .unwrap()
            .insert(key.to_owned(), value);
        r.to_string().into_bytes()
    };
    let deep = "[".repeat(100_000);
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty body", Vec::new()),
        ("null", b"null".to_vec()),
        ("an array", b"[]".to_vec()),
        ("an empty object", b"{}".to_vec()),
        ("binary", vec![0xff, 0xfe, 0x00, 0x13, 0x37]),
        ("truncated", good.to_string().as_bytes()[..300].to_vec()),
        ("100k nested arrays", deep.into_bytes()),
        (
            "v1beta1",
            with("/apiVersion", json!("admission.k8s.io/v1beta1")),
        ),
        ("another kind", with("/kind", json!("ConversionReview"))),
        ("no request", with("/request", json!(null))),
        ("request is a string", with("/request", json!("pod please"))),
        ("no uid", {
            let mut r = good.clone();
            r["request"].as_object_mut().unwrap().remove("uid");
            r.to_string().into_bytes()
        }),
        (
            "unknown operation",
            with("/request/operation", json!("EXPLODE")),
        ),
        (
            "object is a string",
            with("/request/object", json!("a pod")),
        ),
        (
            "CREATE without an object",
            with("/request/object", json!(null)),
        ),
        (
            "containers is a number",
            with("/request/object/spec/containers", json!(7)),
        ),
        (
            "annotations not strings",
            with(
                "/request/object/metadata/annotations",
                json!({"a": {"b": 1}}),
            ),
        ),
        (
            "port annotation not a port",
            with(
                "/request/object/metadata/annotations",
                json!({"config.linkerd.io/skip-outbound-ports": "25,smtp"}),
            ),
        ),
        (
            "inject annotation unknown",
            with(
                "/request/object/metadata/annotations",
                json!({"palisade.io/inject": "maybe"}),
            ),
        ),
        (
            "huge number",
            with(
                "/request/object/spec/terminationGracePeriodSeconds",
                json!(1e300),
            ),
        ),
        (
            "CIDR annotation bad",
            with(
                "/request/object/metadata/annotations",
                json!({"traffic.sidecar.istio.io/excludeOutboundIPRanges": "10.0.0.0/99"}),
            ),
        ),
    ];
    assert!(cases.len() >= 20);
    for (what, body) in cases {
        let answered = super::review(&body, &config(), labels);
        let json: Value = serde_json::from_slice(&to_json(&answered.review).unwrap()).unwrap();
        let response = &json["response"];
        assert_eq!(response["allowed"], false, "{what}: {json}");
        let message = response["status"]["message"].as_str().unwrap_or_default();
        assert!(!message.is_empty(), "{what}: {json}");
        assert!(
            matches!(answered.outcome, Outcome::Refused(_)),
            "{what}: {:?}",
            answered.outcome
        );
        assert!(response.get("patch").is_none(), "{what}");
        // Wherever the body has a uid, it is echoed.
        if serde_json::from_slice::<Value>(&body).is_ok_and(|v| v.pointer("/request/uid").is_some())
        {
            assert_eq!(response["uid"], good["request"]["uid"], "{what}");
        }
    }
}

/// One HTTPS/1.1 request to `addr` as the API server makes it: the server must
/// present a certificate for `name` chaining to `root` (the caBundle).
pub(crate) async fn https(
    addr: std::net::SocketAddr,
    name: &'static str,
    root: rustls::pki_types::CertificateDer<'static>,
    method: &str,
    path: &str,
    body: Vec<u8>,
) -> String {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let mut roots = rustls::RootCertStore::empty();
    roots.add(root).unwrap();
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {name}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let server = rustls::pki_types::ServerName::try_from(name).unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client)
        .connect(server, tcp)
        .await
        .unwrap();
    tls.write_all(head.as_bytes()).await.unwrap();
    let _ = tls.write_all(&body).await;
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response).await;
    String::from_utf8_lossy(&response).into_owned()
}

/// The webhook as the API server meets it: HTTPS with a certificate for the
/// Service's DNS name, issued by the CA whose root is the caBundle.
#[tokio::test]
async fn served_over_tls_to_a_client_that_trusts_the_ca_bundle() {
    use std::sync::Arc;

    let ca = palisade_certs::CertificateAuthority::generate(palisade_certs::CaConfig::default())
        .unwrap();
    let name = "palisade-control-plane.palisade-system.svc";
    let cert = ca
        .issue_serving(&[name.to_owned()], std::time::Duration::from_secs(3600))
        .unwrap();
    let tls = palisade_certs::tls::serving_config(vec![cert.der, ca.root().clone()], &cert.key_pem)
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let labels: NamespaceLabels = Arc::new(labels);
    tokio::spawn(serve(
        listener,
        Arc::new(arc_swap::ArcSwap::from_pointee(tls)),
        Arc::new(config()),
        labels,
    ));

    let root = ca.root().clone();
    let request = |method: &'static str, path: &'static str, body: Vec<u8>| {
        https(addr, name, root.clone(), method, path, body)
    };
    let review = fixture("deployment-pod-create.json");
    let response = request("POST", "/inject", review.to_string().into_bytes()).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let body: Value = serde_json::from_str(response.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    assert_eq!(
        init_names(&patched(&review, &body["response"]))[..2],
        [INIT_CONTAINER, PROXY_CONTAINER]
    );

    assert!(request("GET", "/", Vec::new())
        .await
        .starts_with("HTTP/1.1 404"));
    let huge = vec![b' '; 5 << 20];
    let response = request("POST", "/inject", huge).await;
    assert!(
        response.starts_with("HTTP/1.1 413"),
        "{}",
        &response[..response.len().min(200)]
    );
}
