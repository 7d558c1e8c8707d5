//! rustls configs for mesh mTLS: TLS 1.3 only, ALPN `palisade/1`, no session
//! resumption (a resumed session would skip certificate checks, so trust that was
//! removed could come back), and SPIFFE checks on the peer's leaf.
//!
//! - Server: a client certificate chaining to the bundle is required; the peer's
//!   SPIFFE ID is read with [`peer_identity`] after the handshake.
//! - Client: the server must chain to the bundle AND present the SPIFFE ID the caller
//!   expected for that destination (secure naming).

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{verify_server_cert_signed_by_trust_anchor, Resumption};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{NoServerSessionStorage, ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, OtherError,
    RootCertStore, ServerConfig, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use crate::bundle::{BundleError, TrustBundle};
use crate::identity::IdentityStore;
use crate::spiffe::SpiffeId;
use crate::svid::{leaf_identity, SvidError};

/// The ALPN protocol spoken between Palisade proxies.
pub const ALPN: &[u8] = b"palisade/1";

/// The ALPN protocol of the control plane's gRPC service.
pub const CONTROL_ALPN: &[u8] = b"h2";

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("building the TLS config: {0}")]
    Rustls(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn reject(e: SvidError) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// A plain TLS server (no client certificate) for a certificate chain and key,
/// PEM key: the injection webhook, which the API server reaches by DNS name.
/// ALPN h2 and http/1.1, as the API server offers both.
pub fn serving_config(
    chain: Vec<CertificateDer<'static>>,
    key_pem: &str,
) -> Result<ServerConfig, TlsConfigError> {
    use rustls_pki_types::pem::PemObject;
    let key = rustls_pki_types::PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsConfigError::Rustls(format!("serving key: {e}")))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The server side of mesh mTLS.
pub fn server_config(
    identity: Arc<IdentityStore>,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    spiffe_server_config(identity, bundle, ClientAuth::Required, ALPN)
}

/// The client side of mesh mTLS to a peer that must be `expected`.
pub fn client_config(
    identity: Arc<IdentityStore>,
    bundle: &TrustBundle,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    spiffe_client_config(Some(identity), bundle, expected, ALPN)
}

/// The control plane's server side: gRPC (ALPN h2). A client certificate is
/// optional, because a proxy that has no identity yet comes to get one with its
/// bootstrap token; one that is presented is verified like a mesh peer's, and the
/// service decides per call whether it needs it.
pub fn control_plane_server_config(
    identity: Arc<IdentityStore>,
    bundle: &TrustBundle,
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    spiffe_server_config(identity, bundle, ClientAuth::Optional, CONTROL_ALPN)
}

/// A proxy's side of the control-plane connection: the server must chain to
/// `bundle` and be `expected`; `identity` is presented when the proxy has one.
pub fn control_plane_client_config(
    identity: Option<Arc<IdentityStore>>,
    bundle: &TrustBundle,
    expected: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    spiffe_client_config(identity, bundle, expected, CONTROL_ALPN)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientAuth {
    Required,
    Optional,
}

fn spiffe_server_config(
    identity: Arc<IdentityStore>,
    bundle: &TrustBundle,
    client_auth: ClientAuth,
    alpn: &[u8],
) -> Result<Arc<ServerConfig>, TlsConfigError> {
    let provider = provider();
    let trust_domain = identity.current().identity.trust_domain().to_owned();
    let mut webpki =
        WebPkiClientVerifier::builder_with_provider(bundle.root_store()?, provider.clone());
    if client_auth == ClientAuth::Optional {
        webpki = webpki.allow_unauthenticated();
    }
    let webpki = webpki
        .build()
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?;
    let verifier = Arc::new(SpiffeClientVerifier {
        webpki,
        trust_domain,
        mandatory: client_auth == ClientAuth::Required,
    });
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(identity);
    config.alpn_protocols = vec![alpn.to_vec()];
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

fn spiffe_client_config(
    identity: Option<Arc<IdentityStore>>,
    bundle: &TrustBundle,
    expected: SpiffeId,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsConfigError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeServerVerifier {
        roots: bundle.root_store()?,
        algorithms: provider.signature_verification_algorithms,
        expected,
    });
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsConfigError::Rustls(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match identity {
        Some(identity) => builder.with_client_cert_resolver(identity),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(Arc::new(config))
}

/// The server name a client passes to rustls. The SPIFFE verifier ignores DNS names:
/// the expected identity is in the client config.
pub fn server_name() -> ServerName<'static> {
    ServerName::try_from("palisade.mesh")
        .unwrap_or(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()))
}

/// The SPIFFE ID of a verified peer, from the certificates rustls kept.
pub fn peer_identity(
    peer: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
) -> Result<SpiffeId, SvidError> {
    let leaf = peer
        .and_then(<[_]>::first)
        .ok_or(SvidError::UriSanCount(0))?;
    leaf_identity(leaf, trust_domain)
}

#[derive(Debug)]
struct SpiffeClientVerifier {
    webpki: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
    mandatory: bool,
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.webpki.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        // Chain to the bundle, signatures, validity dates, EKU clientAuth.
        self.webpki
            .verify_client_cert(end_entity, intermediates, now)?;
        leaf_identity(end_entity, &self.trust_domain).map_err(reject)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // Chain to the bundle, signatures, validity dates, EKU serverAuth; no DNS name.
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let got = leaf_identity(end_entity, self.expected.trust_domain()).map_err(reject)?;
        // Secure naming: the destination must be the identity we meant to reach.
        if got != self.expected {
            return Err(reject(SvidError::UnexpectedIdentity {
                expected: self.expected.to_string(),
                got: got.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
