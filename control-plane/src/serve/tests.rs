//! The control plane's security corners over real TLS on loopback: a token proves
//! one pod, the CA issues that pod's identity whatever the CSR asks, the stream
//! needs a certificate and serves only pods of that certificate's identity, and a
//! renewal renews the authenticated identity.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palisade_api::v1::distribution_client::DistributionClient;
use palisade_api::v1::identity_client::IdentityClient;
use palisade_api::v1::proxy_message::Message;
use palisade_api::v1::{Ack, CertifyRequest, Hello, ProxyMessage, Renew, Update};
use palisade_certs::identity::{request, request_bootstrap};
use palisade_certs::svid::leaf_identity;
use palisade_certs::tls::{control_plane_client_config, server_name};
use palisade_certs::{Credentials, IdentityStore, SpiffeId, TrustBundle};
use rustls::pki_types::CertificateDer;
use tonic::transport::Channel;
use tonic::Code;

use super::{read_status, serve, ServeArgs};

const MANIFESTS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: front}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: front}
spec: {serviceAccountName: web}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: db, namespace: back}
spec: {serviceAccountName: db}
status: {podIP: 10.0.0.2}
";

pub(super) struct ControlPlane {
    pub(super) addr: SocketAddr,
    pub(super) roots: TrustBundle,
    pub(super) dir: tempfile::TempDir,
}

async fn start() -> ControlPlane {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("manifests")).unwrap();
    std::fs::write(dir.path().join("manifests/all.yaml"), MANIFESTS).unwrap();
    std::fs::write(dir.path().join("tokens"), "tok-web front/web\n").unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    #[derive(clap::Parser)]
    struct Command {
        #[command(flatten)]
        serve: ServeArgs,
    }
    let path = |p: &str| dir.path().join(p).display().to_string();
    let args = <Command as clap::Parser>::parse_from([
        "serve".to_owned(),
        format!("--manifests={}", path("manifests")),
        format!("--ca-dir={}", path("ca")),
        format!("--listen={addr}"),
        format!("--bootstrap-tokens={}", path("tokens")),
        format!("--status-file={}", path("status.json")),
        "--cert-lifetime-secs=60".to_owned(),
    ])
    .serve;
    tokio::spawn(serve(args, listener));
    let ca = dir.path().join("ca/ca.crt");
    while read_status(&dir.path().join("status.json")).is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let roots = TrustBundle::new([pem_cert(&ca)]);
    ControlPlane { addr, roots, dir }
}

fn pem_cert(path: &Path) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject;
    CertificateDer::from_pem_file(path).unwrap()
}

impl ControlPlane {
    pub(super) async fn channel(&self, identity: Option<Arc<IdentityStore>>) -> Channel {
        let expected: SpiffeId = palisade_api::control_plane_identity("cluster.local")
            .parse()
            .unwrap();
        let tls = control_plane_client_config(identity, &self.roots, expected).unwrap();
        let addr = self.addr;
        let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
            let tls = tls.clone();
            async move {
                let tcp = tokio::net::TcpStream::connect(addr).await?;
                let tls = tokio_rustls::TlsConnector::from(tls)
                    .connect(server_name(), tcp)
                    .await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        });
        tonic::transport::Endpoint::from_static("http://cp")
            .connect_with_connector(connector)
            .await
            .unwrap()
    }

    pub(super) async fn certify(
        &self,
        pod: &str,
        token: &str,
        csr: Vec<u8>,
    ) -> Result<Vec<Vec<u8>>, Code> {
        IdentityClient::new(self.channel(None).await)
            .certify(CertifyRequest {
                pod: pod.into(),
                bootstrap_token: token.into(),
                csr_der: csr,
            })
            .await
            .map(|r| r.into_inner().chain_der)
            .map_err(|s| s.code())
    }

    /// web's identity, bootstrapped with its token.
    async fn web_identity(&self) -> Arc<IdentityStore> {
        let (pending, csr) = request_bootstrap().unwrap();
        let chain = self.certify("front/web", "tok-web", csr).await.unwrap();
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        IdentityStore::new(Credentials::new(pending, chain, "cluster.local").unwrap())
    }
}

pub(super) async fn next(updates: &mut tonic::Streaming<Update>) -> Update {
    tokio::time::timeout(Duration::from_secs(5), updates.message())
        .await
        .expect("an update within 5 s")
        .unwrap()
        .expect("the stream is open")
}

pub(super) fn say(m: Message) -> ProxyMessage {
    ProxyMessage { message: Some(m) }
}

#[tokio::test]
async fn a_bootstrap_token_proves_one_pod_and_the_ca_issues_only_its_identity() {
    let cp = start().await;
    let csr = || request_bootstrap().unwrap().1;
    assert_eq!(
        cp.certify("front/web", "wrong", csr()).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        cp.certify("back/db", "tok-web", csr()).await,
        Err(Code::Unauthenticated)
    );
    assert_eq!(
        cp.certify("front/web", "", csr()).await,
        Err(Code::Unauthenticated)
    );

    // The CSR asks for an admin identity; the certificate is web's.
    let admin: SpiffeId = "spiffe://cluster.local/ns/kube-system/sa/admin"
        .parse()
        .unwrap();
    let (_, greedy) = request(&admin).unwrap();
    let chain = cp.certify("front/web", "tok-web", greedy).await.unwrap();
    let issued = leaf_identity(&chain[0], "cluster.local").unwrap();
    assert_eq!(issued.to_string(), "spiffe://cluster.local/ns/front/sa/web");

    // Garbage instead of a CSR is refused, not a crash.
    assert_eq!(
        cp.certify("front/web", "tok-web", b"not a csr".to_vec())
            .await,
        Err(Code::InvalidArgument)
    );
}

#[tokio::test]
async fn the_stream_needs_a_certificate_and_serves_only_pods_of_its_identity() {
    let cp = start().await;
    let hello = |pod: &str| {
        tokio_stream::iter([say(Message::Hello(Hello {
            pod: pod.into(),
            version: 0,
        }))])
    };
    let anonymous = DistributionClient::new(cp.channel(None).await)
        .stream(hello("front/web"))
        .await;
    assert_eq!(
        anonymous.err().map(|s| s.code()),
        Some(Code::Unauthenticated)
    );

    let web = cp.web_identity().await;
    let other_pod = DistributionClient::new(cp.channel(Some(web.clone())).await)
        .stream(hello("back/db"))
        .await;
    assert_eq!(
        other_pod.err().map(|s| s.code()),
        Some(Code::PermissionDenied)
    );
    let no_pod = DistributionClient::new(cp.channel(Some(web)).await)
        .stream(hello("front/nobody"))
        .await;
    assert_eq!(no_pod.err().map(|s| s.code()), Some(Code::NotFound));
}

#[tokio::test]
async fn a_proxy_gets_a_snapshot_then_deltas_acks_them_and_renews_its_own_identity() {
    let cp = start().await;
    let web = cp.web_identity().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(say(Message::Hello(Hello {
        pod: "front/web".into(),
        version: 0,
    })))
    .await
    .unwrap();
    let mut updates = DistributionClient::new(cp.channel(Some(web.clone())).await)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let snapshot = next(&mut updates).await;
    assert!(snapshot.snapshot);
    assert_eq!(snapshot.upserts.len(), 3);
    assert_eq!(snapshot.roots_der.len(), 1);
    tx.send(say(Message::Ack(Ack {
        version: snapshot.version,
    })))
    .await
    .unwrap();

    // One object changes: a delta with that object only, on top of the snapshot.
    let relabelled = MANIFESTS.replace(
        "metadata: {name: front}",
        "metadata: {name: front, labels: {a: b}}",
    );
    std::fs::write(cp.dir.path().join("manifests/all.yaml"), relabelled).unwrap();
    let delta = next(&mut updates).await;
    assert!(!delta.snapshot);
    assert_eq!(delta.base_version, snapshot.version);
    assert_eq!(delta.version, snapshot.version + 1);
    assert_eq!(delta.upserts.len(), 1);
    assert_eq!(delta.upserts[0].key, "/Namespace//front");
    tx.send(say(Message::Ack(Ack {
        version: delta.version,
    })))
    .await
    .unwrap();
    let status_file = cp.dir.path().join("status.json");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let acked = read_status(&status_file)
            .and_then(|s| s.proxies.get("front/web").map(|p| p.acked_version));
        if acked == Some(delta.version) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "ack not recorded");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // A renewal that asks for another identity gets the authenticated one.
    let admin: SpiffeId = "spiffe://cluster.local/ns/kube-system/sa/admin"
        .parse()
        .unwrap();
    let (_, csr) = request(&admin).unwrap();
    tx.send(say(Message::Renew(Renew { csr_der: csr })))
        .await
        .unwrap();
    let renewed = next(&mut updates).await;
    let leaf = &renewed.certificate_chain_der[0];
    assert_eq!(
        leaf_identity(leaf, "cluster.local").unwrap().to_string(),
        "spiffe://cluster.local/ns/front/sa/web"
    );
}
