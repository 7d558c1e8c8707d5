//! Real TLS handshakes over loopback: the good case, and every way a peer must be
//! refused, each with its reason. The side under test always uses Palisade's configs;
//! the misbehaving peer is built with plain rustls and rcgen.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code: a failure should stop loudly

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palisade_certs::identity::{request, Credentials};
use palisade_certs::tls::{client_config, peer_identity, server_config, server_name, ALPN};
use palisade_certs::{CaConfig, CertificateAuthority, IdentityStore, SpiffeId, TrustBundle};
use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{ClientConfig, DigitallySignedStruct, ServerConfig, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use time::OffsetDateTime;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::{TlsAcceptor, TlsConnector};

const TD: &str = "cluster.local";

struct Pki {
    ca: CertificateAuthority,
    issuer: Issuer<'static, KeyPair>,
    _dir: tempfile::TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::load_or_generate(CaConfig::default(), dir.path()).unwrap();
        let issuer = issuer_from_files(dir.path());
        Pki {
            ca,
            issuer,
            _dir: dir,
        }
    }

    fn bundle(&self) -> TrustBundle {
        TrustBundle::new([self.ca.root().clone()])
    }

    /// A proper identity, issued through CSR -> CA -> Credentials.
    fn identity(&self, ns: &str, sa: &str) -> Arc<IdentityStore> {
        let id = SpiffeId::new(TD, ns, sa).unwrap();
        let (pending, csr) = request(&id).unwrap();
        let issued = self.ca.issue(&csr, &id, None).unwrap();
        IdentityStore::new(Credentials::new(pending, vec![issued.der], TD).unwrap())
    }

    /// A leaf the CA's key signs with whatever `tweak` sets: the misbehaving peer.
    fn custom_leaf(
        &self,
        tweak: impl FnOnce(&mut CertificateParams),
    ) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        sign_leaf(&self.issuer, tweak)
    }
}

fn issuer_from_files(dir: &Path) -> Issuer<'static, KeyPair> {
    let cert = std::fs::read_to_string(dir.join("ca.crt")).unwrap();
    let key = KeyPair::from_pem(&std::fs::read_to_string(dir.join("ca.key")).unwrap()).unwrap();
    Issuer::from_ca_cert_pem(&cert, key).unwrap()
}

fn good_params(uri: &str) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
    p.is_ca = IsCa::ExplicitNoCa;
    p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    p.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let now = OffsetDateTime::now_utc();
    p.not_before = now - time::Duration::minutes(1);
    p.not_after = now + time::Duration::hours(1);
    p
}

fn sign_leaf(
    issuer: &Issuer<'static, KeyPair>,
    tweak: impl FnOnce(&mut CertificateParams),
) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = good_params("spiffe://cluster.local/ns/evil/sa/mallory");
    tweak(&mut params);
    let cert = params.signed_by(&key, issuer).unwrap();
    (
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
}

/// The attacker's client verifies nothing about the server.
#[derive(Debug)]
struct AcceptAnyServer;

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn rogue_client(
    leaf: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
) -> Arc<ClientConfig> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer));
    let mut config = match leaf {
        Some((chain, key)) => builder.with_client_auth_cert(chain, key).unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(config)
}

fn rogue_server(
    (chain, key): (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>),
) -> Arc<ServerConfig> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![ALPN.to_vec()];
    Arc::new(config)
}

/// What each side saw: the server the client's identity, the client the server's.
#[derive(Debug)]
struct Outcome {
    server: Result<Option<SpiffeId>, String>,
    client: Result<Option<SpiffeId>, String>,
}

/// One real handshake over loopback, then a ping/pong so that a client the server
/// refused (TLS 1.3 checks the client after the client's handshake ends) sees it.
async fn handshake(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Outcome {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.map_err(|e| e.to_string())?;
        let mut tls = TlsAcceptor::from(server)
            .accept(tcp)
            .await
            .map_err(|e| e.to_string())?;
        let mut ping = [0u8; 4];
        tls.read_exact(&mut ping).await.map_err(|e| e.to_string())?;
        tls.write_all(b"pong").await.map_err(|e| e.to_string())?;
        tls.flush().await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(conn.alpn_protocol(), Some(ALPN));
        Ok::<_, String>(peer_identity(conn.peer_certificates(), TD).ok())
    });
    let client_side = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(client)
            .connect(server_name(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
        let mut pong = [0u8; 4];
        tls.read_exact(&mut pong).await.map_err(|e| e.to_string())?;
        let (_, conn) = tls.get_ref();
        assert_eq!(
            conn.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // Never resumed: every connection checks the certificates again.
        assert_eq!(conn.handshake_kind(), Some(rustls::HandshakeKind::Full));
        Ok::<_, String>(peer_identity(conn.peer_certificates(), TD).ok())
    };
    let limit = Duration::from_secs(10);
    let client = tokio::time::timeout(limit, client_side)
        .await
        .unwrap_or_else(|_| Err("client timed out".into()));
    let server = match tokio::time::timeout(limit, server_side).await {
        Ok(Ok(r)) => r,
        Ok(Err(join)) => Err(format!("server task failed: {join}")),
        Err(_) => Err("server timed out".into()),
    };
    Outcome { server, client }
}

fn id(ns: &str, sa: &str) -> SpiffeId {
    SpiffeId::new(TD, ns, sa).unwrap()
}

fn refused(outcome: &Result<Option<SpiffeId>, String>, reason: &str) {
    match outcome {
        Err(e) => assert!(
            e.contains(reason),
            "refused, but for another reason: {e} (wanted {reason:?})"
        ),
        Ok(peer) => panic!("accepted {peer:?}, wanted a refusal for {reason:?}"),
    }
}

#[tokio::test]
async fn good_mtls_both_sides_learn_the_peer_identity() {
    let pki = Pki::new();
    let (web, db) = (pki.identity("shop", "web"), pki.identity("shop", "db"));
    let server = server_config(db, &pki.bundle()).unwrap();
    let client = client_config(web, &pki.bundle(), id("shop", "db")).unwrap();
    for _ in 0..2 {
        let o = handshake(server.clone(), client.clone()).await;
        assert_eq!(o.server, Ok(Some(id("shop", "web"))));
        assert_eq!(o.client, Ok(Some(id("shop", "db"))));
    }
}

#[tokio::test]
async fn server_in_a_foreign_trust_domain_is_refused() {
    let pki = Pki::new();
    let leaf = pki.custom_leaf(|p| {
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://evil.local/ns/shop/sa/db".try_into().unwrap(),
        )]
    });
    let client =
        client_config(pki.identity("shop", "web"), &pki.bundle(), id("shop", "db")).unwrap();
    let o = handshake(rogue_server(leaf), client).await;
    refused(
        &o.client,
        "trust domain \"evil.local\" is not ours (\"cluster.local\")",
    );
}

#[tokio::test]
async fn expired_client_certificate_is_refused() {
    let pki = Pki::new();
    let leaf = pki.custom_leaf(|p| {
        let now = OffsetDateTime::now_utc();
        p.not_before = now - time::Duration::hours(2);
        p.not_after = now - time::Duration::hours(1);
    });
    let server = server_config(pki.identity("shop", "db"), &pki.bundle()).unwrap();
    let o = handshake(server, rogue_client(Some(leaf))).await;
    refused(&o.server, "expired");
}

#[tokio::test]
async fn server_certificate_not_yet_valid_is_refused() {
    let pki = Pki::new();
    let leaf = pki.custom_leaf(|p| {
        let now = OffsetDateTime::now_utc();
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/db".try_into().unwrap(),
        )];
        p.not_before = now + time::Duration::hours(1);
        p.not_after = now + time::Duration::hours(2);
    });
    let client =
        client_config(pki.identity("shop", "web"), &pki.bundle(), id("shop", "db")).unwrap();
    let o = handshake(rogue_server(leaf), client).await;
    refused(&o.client, "not valid yet");
}

#[tokio::test]
async fn client_leaf_with_ca_true_is_refused() {
    let pki = Pki::new();
    let leaf = pki.custom_leaf(|p| p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained));
    let server = server_config(pki.identity("shop", "db"), &pki.bundle()).unwrap();
    let o = handshake(server, rogue_client(Some(leaf))).await;
    // webpki refuses a CA certificate used as an end entity before our SVID check.
    refused(&o.server, "CaUsedAsEndEntity");
}

#[tokio::test]
async fn server_without_uri_san_is_refused() {
    let pki = Pki::new();
    let leaf = pki.custom_leaf(|p| {
        p.subject_alt_names = vec![SanType::DnsName("db.shop.svc".try_into().unwrap())]
    });
    let client =
        client_config(pki.identity("shop", "web"), &pki.bundle(), id("shop", "db")).unwrap();
    let o = handshake(rogue_server(leaf), client).await;
    refused(&o.client, "exactly one URI SAN; this certificate has 0");
}

#[tokio::test]
async fn client_with_two_uri_sans_is_refused() {
    let pki = Pki::new();
    let leaf = pki.custom_leaf(|p| {
        p.subject_alt_names = vec![
            SanType::URI("spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap()),
            SanType::URI(
                "spiffe://cluster.local/ns/kube-system/sa/admin"
                    .try_into()
                    .unwrap(),
            ),
        ]
    });
    let server = server_config(pki.identity("shop", "db"), &pki.bundle()).unwrap();
    let o = handshake(server, rogue_client(Some(leaf))).await;
    refused(&o.server, "exactly one URI SAN; this certificate has 2");
}

#[tokio::test]
async fn spiffe_id_only_in_a_dns_san_is_refused() {
    let pki = Pki::new();
    let leaf = pki.custom_leaf(|p| {
        p.subject_alt_names = vec![SanType::DnsName(
            "spiffe://cluster.local/ns/shop/sa/db".try_into().unwrap(),
        )]
    });
    let client =
        client_config(pki.identity("shop", "web"), &pki.bundle(), id("shop", "db")).unwrap();
    let o = handshake(rogue_server(leaf), client).await;
    refused(
        &o.client,
        "no URI SAN: the SPIFFE ID \"spiffe://cluster.local/ns/shop/sa/db\" is only in a DNS SAN",
    );
}

#[tokio::test]
async fn client_signed_by_a_foreign_ca_is_refused() {
    let pki = Pki::new();
    let foreign = Pki::new();
    let leaf = foreign.custom_leaf(|p| {
        p.subject_alt_names = vec![SanType::URI(
            "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
        )]
    });
    let server = server_config(pki.identity("shop", "db"), &pki.bundle()).unwrap();
    let o = handshake(server, rogue_client(Some(leaf))).await;
    refused(&o.server, "UnknownIssuer");
}

#[tokio::test]
async fn server_that_is_not_the_expected_identity_is_refused() {
    let pki = Pki::new();
    // A genuine mesh identity, but not the one the client meant to reach.
    let server = server_config(pki.identity("shop", "cache"), &pki.bundle()).unwrap();
    let client =
        client_config(pki.identity("shop", "web"), &pki.bundle(), id("shop", "db")).unwrap();
    let o = handshake(server, client).await;
    refused(&o.client, "peer is spiffe://cluster.local/ns/shop/sa/cache, but spiffe://cluster.local/ns/shop/sa/db was expected");
}

#[tokio::test]
async fn client_without_a_certificate_is_refused() {
    let pki = Pki::new();
    let server = server_config(pki.identity("shop", "db"), &pki.bundle()).unwrap();
    let o = handshake(server, rogue_client(None)).await;
    refused(&o.server, "peer sent no certificates");
}

#[tokio::test]
async fn a_csr_asking_for_another_identity_gets_only_the_authenticated_one() {
    let pki = Pki::new();
    let wanted = id("kube-system", "admin");
    let authenticated = id("shop", "web");
    let (pending, csr) = request(&wanted).unwrap();
    let issued = pki.ca.issue(&csr, &authenticated, None).unwrap();
    assert_eq!(issued.identity, authenticated);
    assert_eq!(
        palisade_certs::svid::leaf_identity(&issued.der, TD),
        Ok(authenticated.clone())
    );
    // A holder that asked for admin will not take web's certificate as admin.
    let err = Credentials::new(pending, vec![issued.der.clone()], TD).unwrap_err();
    assert!(err.to_string().contains("is for spiffe://cluster.local/ns/shop/sa/web, but spiffe://cluster.local/ns/kube-system/sa/admin was requested"), "{err}");
    // And a TLS peer sees web, nothing else.
    let (key, csr) = request(&authenticated).unwrap();
    let store = IdentityStore::new(
        Credentials::new(
            key,
            vec![pki.ca.issue(&csr, &authenticated, None).unwrap().der],
            TD,
        )
        .unwrap(),
    );
    let server = server_config(pki.identity("shop", "db"), &pki.bundle()).unwrap();
    let o = handshake(
        server,
        client_config(store, &pki.bundle(), id("shop", "db")).unwrap(),
    )
    .await;
    assert_eq!(o.server, Ok(Some(authenticated)));
}

#[tokio::test]
async fn root_rotation_with_old_and_new_leaves_mixed() {
    let old = Pki::new();
    let new = Pki::new();
    let both = TrustBundle::new([old.ca.root().clone(), new.ca.root().clone()]);
    let old_db = old.identity("shop", "db");
    let new_web = new.identity("shop", "web");
    // During the change every proxy trusts both roots: old and new leaves interoperate.
    let o = handshake(
        server_config(old_db.clone(), &both).unwrap(),
        client_config(new_web.clone(), &both, id("shop", "db")).unwrap(),
    )
    .await;
    assert_eq!(
        (o.server, o.client),
        (Ok(Some(id("shop", "web"))), Ok(Some(id("shop", "db"))))
    );
    let o = handshake(
        server_config(new.identity("shop", "db"), &both).unwrap(),
        client_config(old.identity("shop", "web"), &both, id("shop", "db")).unwrap(),
    )
    .await;
    assert!(o.server.is_ok() && o.client.is_ok(), "{o:?}");
    // After the old root is removed, a leaf it signed is refused.
    let mut only_new = both.clone();
    only_new.remove(old.ca.root());
    let o = handshake(
        server_config(old_db, &both).unwrap(),
        client_config(new_web, &only_new, id("shop", "db")).unwrap(),
    )
    .await;
    refused(&o.client, "UnknownIssuer");
}

#[tokio::test]
async fn renewal_swaps_the_certificate_for_new_connections_only() {
    let pki = Pki::new();
    let web = pki.identity("shop", "web");
    let db = pki.identity("shop", "db");
    let first = web.current().leaf().cloned();
    let server = server_config(db, &pki.bundle()).unwrap();
    let client = client_config(web.clone(), &pki.bundle(), id("shop", "db")).unwrap();

    // An open connection made with the first certificate.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server.clone());
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = acceptor.accept(tcp).await.unwrap();
        let seen = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned());
        let mut buf = [0u8; 4];
        while tls.read_exact(&mut buf).await.is_ok() {
            tls.write_all(&buf).await.unwrap();
        }
        seen
    });
    let mut open = TlsConnector::from(client.clone())
        .connect(server_name(), TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    open.write_all(b"one!").await.unwrap();
    let mut buf = [0u8; 4];
    open.read_exact(&mut buf).await.unwrap();

    // Renew: a new key and certificate, swapped in atomically.
    web.renew(TD, |csr| {
        pki.ca
            .issue(csr, &id("shop", "web"), None)
            .map(|c| vec![c.der])
    })
    .unwrap();
    let second = web.current().leaf().cloned();
    assert_ne!(first, second, "a new certificate after renewal");

    // The open connection keeps working with the certificate it was made with.
    open.write_all(b"two!").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"two!");
    drop(open);
    assert_eq!(server_task.await.unwrap(), first);

    // A new connection presents the renewed certificate.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let acceptor = TlsAcceptor::from(server);
    let server_task = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = acceptor.accept(tcp).await.unwrap();
        tls.get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first().cloned())
    });
    let mut fresh = TlsConnector::from(client)
        .connect(server_name(), TcpStream::connect(addr).await.unwrap())
        .await
        .unwrap();
    fresh.flush().await.unwrap();
    assert_eq!(server_task.await.unwrap(), second);
}

#[tokio::test]
async fn keep_renewed_renews_at_half_life_and_retries_failures() {
    let dir = tempfile::tempdir().unwrap();
    let config = CaConfig {
        max_lifetime: Duration::from_secs(2),
        ..CaConfig::default()
    };
    let ca = Arc::new(CertificateAuthority::load_or_generate(config, dir.path()).unwrap());
    let web = id("shop", "web");
    let (pending, csr) = request(&web).unwrap();
    let store = IdentityStore::new(
        Credentials::new(pending, vec![ca.issue(&csr, &web, None).unwrap().der], TD).unwrap(),
    );
    let first = store.current().leaf().cloned();
    assert!(!store.current().renewal_due(std::time::SystemTime::now()));

    let results = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (log, issuer, calls) = (
        results.clone(),
        ca.clone(),
        Arc::new(std::sync::atomic::AtomicUsize::new(0)),
    );
    let task = tokio::spawn(store.clone().keep_renewed(
        TD.to_owned(),
        Duration::from_millis(100),
        move |csr: &[u8]| {
            // The CA is unreachable for the first attempt.
            if calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                return Err("control plane unreachable".to_owned());
            }
            issuer
                .issue(csr, &id("shop", "web"), None)
                .map(|c| vec![c.der])
                .map_err(|e| e.to_string())
        },
        move |r| log.lock().unwrap().push(r.is_ok()),
    ));
    // Half-life is 1 s; the failed try is retried 100 ms later.
    tokio::time::sleep(Duration::from_millis(1600)).await;
    task.abort();
    assert_eq!(
        results.lock().unwrap().first(),
        Some(&false),
        "the first try failed"
    );
    assert!(
        results.lock().unwrap().contains(&true),
        "then it renewed: {:?}",
        results.lock().unwrap()
    );
    assert_ne!(store.current().leaf().cloned(), first);
    assert_eq!(store.current().identity, web);
}
