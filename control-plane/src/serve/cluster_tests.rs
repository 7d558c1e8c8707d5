//! `serve --kubernetes` whole, against recorded API responses: two replicas
//! share the CA through the Secret; a proxy bootstraps with its projected token
//! at one replica and streams from the other, and gets the watched objects.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::sync::Arc;
use std::time::Duration;

use palisade_api::v1::distribution_client::DistributionClient;
use palisade_api::v1::proxy_message::Message;
use palisade_api::v1::Hello;
use palisade_certs::identity::request_bootstrap;
use palisade_certs::svid::leaf_identity;
use palisade_certs::{CaConfig, CertificateAuthority, Credentials, IdentityStore, TrustBundle};
use rustls::pki_types::CertificateDer;
use serde_json::json;
use tokio_stream::StreamExt;
use tonic::Code;

use super::tests::{next, say, ControlPlane};
use super::{read_status, serve_with, ServeArgs};
use crate::k8s::ca_secret::to_secret;
use crate::k8s::fake_api::{FakeApi, Reply};

const POD: &str = "front/nginx-front-6d8f7b9c5-k2xjq";

/// The API server's answer to a TokenReview of nginx-front's projected token.
fn token_review() -> String {
    json!({
        "kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1", "metadata": {},
        "spec": {"token": "projected", "audiences": ["palisade"]},
        "status": {"authenticated": true, "audiences": ["palisade"], "user": {
            "username": "system:serviceaccount:front:default",
            "uid": "b1c2d3e4-f5a6-4b7c-8d9e-0f1a2b3c4d5e",
            "groups": ["system:serviceaccounts", "system:serviceaccounts:front", "system:authenticated"],
            "extra": {"authentication.kubernetes.io/pod-name": ["nginx-front-6d8f7b9c5-k2xjq"]}
        }}
    })
    .to_string()
}

/// The recorded cluster (Kubernetes lists, Calico CRDs) with a CA in its Secret.
fn recorded_cluster() -> (CertificateAuthority, FakeApi) {
    let ca = CertificateAuthority::generate(CaConfig::default()).unwrap();
    let mut secret =
        serde_json::to_value(to_secret(&ca, "palisade-system", "palisade-ca")).unwrap();
    secret["apiVersion"] = json!("v1");
    secret["kind"] = json!("Secret");
    let api = FakeApi::default()
        .kubernetes_lists()
        .calico_crds(false)
        .route(
            "GET /api/v1/namespaces/palisade-system/secrets/palisade-ca",
            Reply::ok(secret.to_string()),
        );
    (ca, api)
}

async fn replica(client: kube::Client, roots: &TrustBundle, extra: &[String]) -> ControlPlane {
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let dir = tempfile::tempdir().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let status = dir.path().join("status.json");
    let args = <Command as clap::Parser>::parse_from(
        [
            "serve".to_owned(),
            "--kubernetes".to_owned(),
            "--ca-secret=palisade-system/palisade-ca".to_owned(),
            format!("--listen={addr}"),
            format!("--status-file={}", status.display()),
        ]
        .into_iter()
        .chain(extra.iter().cloned()),
    )
    .serve;
    tokio::spawn(serve_with(args, listener, Some(client)));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while read_status(&status).is_none() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the replica did not sync"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ControlPlane {
        addr,
        roots: roots.clone(),
        dir,
    }
}

#[tokio::test]
async fn any_replica_serves_a_proxy_bootstrapped_at_another() {
    let (ca, api) = recorded_cluster();
    let (client, seen) = api
        .route(
            "POST /apis/authentication.k8s.io/v1/tokenreviews",
            Reply::ok(token_review()),
        )
        .start();
    let roots = TrustBundle::new([ca.root().clone()]);
    let (a, b) = (
        replica(client.clone(), &roots, &[]).await,
        replica(client, &roots, &[]).await,
    );

    // Bootstrap at replica a with the projected token.
    let (pending, csr) = request_bootstrap().unwrap();
    let chain = a.certify(POD, "projected", csr).await.unwrap();
    let id = leaf_identity(&chain[0], "cluster.local").unwrap();
    assert_eq!(id.to_string(), "spiffe://cluster.local/ns/front/sa/default");
    let sent = seen
        .lock()
        .unwrap()
        .iter()
        .find(|(r, _)| r.contains("tokenreviews"))
        .cloned();
    assert!(
        sent.unwrap().1.contains("\"projected\""),
        "the token went to the TokenReview"
    );
    // The same token naming another pod is refused.
    let other = a
        .certify(
            "back/nginx-back-7c9d4f6b8-q8wzt",
            "projected",
            request_bootstrap().unwrap().1,
        )
        .await;
    assert_eq!(other, Err(Code::PermissionDenied));

    // Stream from replica b: its CA is the same root, so it knows the certificate.
    let chain = chain.into_iter().map(CertificateDer::from).collect();
    let identity = IdentityStore::new(Credentials::new(pending, chain, "cluster.local").unwrap());
    let hello = tokio_stream::iter([say(Message::Hello(Hello {
        pod: POD.into(),
        version: 0,
    }))])
    .chain(tokio_stream::pending());
    let mut updates = DistributionClient::new(b.channel(Some(Arc::clone(&identity))).await)
        .stream(hello)
        .await
        .unwrap()
        .into_inner();
    let snapshot = next(&mut updates).await;
    assert!(snapshot.snapshot);
    let keys: Vec<&str> = snapshot.upserts.iter().map(|r| r.key.as_str()).collect();
    for key in [
        "/Pod/front/nginx-front-6d8f7b9c5-k2xjq",
        "/Namespace//front",
        "discovery.k8s.io/EndpointSlice/back/back-x7k2p",
        "networking.k8s.io/NetworkPolicy/back/allow-front",
        "projectcalico.org/GlobalNetworkPolicy//default.allow-dns",
        "projectcalico.org/Tier//default",
    ] {
        assert!(keys.contains(&key), "{key} not in {keys:#?}");
    }
    assert!(
        !keys.iter().any(|k| k.contains("broken-selector")),
        "{keys:#?}"
    );
    assert_eq!(snapshot.roots_der, vec![ca.root().to_vec()]);
    // Its status names the problem it skipped.
    let status = read_status(&b.dir.path().join("status.json")).unwrap();
    assert!(
        status
            .problems
            .iter()
            .any(|p| p.contains("default.broken-selector")),
        "{:?}",
        status.problems
    );
}

/// The webhook of a replica: namespaces' labels come from the watched state,
/// and the caBundle of the webhook configuration is set to the CA root.
#[tokio::test]
async fn a_replica_serves_the_injector_and_publishes_its_ca_bundle() {
    use base64::Engine;

    let (ca, api) = recorded_cluster();
    // The webhook configuration as deploy/kubernetes installs it (no caBundle yet).
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../deploy/kubernetes/30-webhook.yaml"),
    )
    .unwrap();
    let mut installed: serde_json::Value = serde_norway::from_str(&text).unwrap();
    installed["metadata"]["resourceVersion"] = json!("812");
    let path = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/palisade-sidecar-injector";
    let (client, seen) = api
        .route(&format!("GET {path}"), Reply::ok(installed.to_string()))
        .route(&format!("PUT {path}"), Reply::ok(installed.to_string()))
        .start();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let roots = TrustBundle::new([ca.root().clone()]);
    let _replica = replica(
        client,
        &roots,
        &[
            format!("--webhook-listen=127.0.0.1:{port}"),
            "--webhook-config=palisade-sidecar-injector".to_owned(),
        ],
    )
    .await;

    // The recorded pod CREATE is in namespace front, labelled palisade.io/inject=enabled
    // in the recorded Namespace list: injected.
    let review = crate::k8s::fake_api::fixture("../webhook/deployment-pod-create.json");
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let name = "palisade-control-plane.palisade-system.svc";
    let answer = crate::webhook::tests::https(
        addr,
        name,
        ca.root().clone(),
        "POST",
        "/inject",
        review.into_bytes(),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let body: serde_json::Value =
        serde_json::from_str(answer.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert_eq!(body["response"]["allowed"], true);
    assert!(body["response"]["patch"].is_string(), "{body}");

    // The caBundle was written: a PUT of the configuration carrying the root.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let put = loop {
        let put = seen
            .lock()
            .unwrap()
            .iter()
            .find(|(r, _)| r.starts_with("PUT "))
            .cloned();
        if let Some(put) = put {
            break put;
        }
        assert!(tokio::time::Instant::now() < deadline, "no caBundle update");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let put: serde_json::Value = serde_json::from_str(&put.1).unwrap();
    let bundle = put["webhooks"][0]["clientConfig"]["caBundle"]
        .as_str()
        .unwrap();
    let bundle = base64::engine::general_purpose::STANDARD
        .decode(bundle)
        .unwrap();
    assert_eq!(bundle, ca.root_pem().as_bytes());
    assert_eq!(
        put["metadata"]["resourceVersion"], "812",
        "an update of what was read"
    );
}
