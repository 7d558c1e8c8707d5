//! A workload's own identity: its key, its certificate, and renewal.
//!
//! The current credentials live in an `ArcSwap`: rustls asks for them at each new
//! handshake, so a renewed certificate serves new connections at once while open
//! connections keep the one they were made with. No lock on the handshake path.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use rcgen::{CertificateParams, KeyPair, PublicKeyData, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::client::ResolvesClientCert;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::SignatureScheme;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::SpiffeId;
use crate::svid::{leaf_identity, SvidError};

/// Why new credentials were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("could not make a key or CSR: {0}")]
    Request(String),
    #[error("issued certificate is not a valid X.509-SVID: {0}")]
    Svid(#[from] SvidError),
    #[error("issued certificate is for {got}, but {expected} was requested")]
    WrongIdentity {
        expected: Box<SpiffeId>,
        got: Box<SpiffeId>,
    },
    #[error("issued certificate does not carry the key of the request")]
    WrongKey,
    #[error("the issuer refused: {0}")]
    Issuer(String),
    #[error("rustls refused the key: {0}")]
    Key(rustls::Error),
}

/// A key pair waiting for its certificate.
#[derive(Debug)]
pub struct PendingKey {
    /// What the certificate must certify; `None` at bootstrap, when the CA decides.
    identity: Option<SpiffeId>,
    key: KeyPair,
}

impl PendingKey {
    /// The private key as PKCS#8 PEM, to store beside the certificate.
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }
}

/// PEM text for certificates (a chain, leaf first).
pub fn certificates_pem(chain: &[CertificateDer<'_>]) -> String {
    chain
        .iter()
        .map(|c| pem::encode(&pem::Pem::new("CERTIFICATE", c.to_vec())))
        .collect()
}

/// A CSR for `identity` with a fresh ECDSA P-256 key. The CA decides the identity
/// it certifies; the one in the CSR is only a courtesy.
pub fn request(identity: &SpiffeId) -> Result<(PendingKey, Vec<u8>), CredentialError> {
    make_request(Some(identity))
}

/// A CSR naming no identity, for bootstrap: the proxy does not know its identity
/// yet; the CA certifies the one its bootstrap token proves, and the proxy takes
/// that identity from the certificate.
pub fn request_bootstrap() -> Result<(PendingKey, Vec<u8>), CredentialError> {
    make_request(None)
}

fn make_request(identity: Option<&SpiffeId>) -> Result<(PendingKey, Vec<u8>), CredentialError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CredentialError::Request(e.to_string()))?;
    let mut params = CertificateParams::default();
    if let Some(identity) = identity {
        let uri = identity
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| CredentialError::Request(e.to_string()))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
    }
    let csr = params
        .serialize_request(&key)
        .map_err(|e| CredentialError::Request(e.to_string()))?;
    Ok((
        PendingKey {
            identity: identity.cloned(),
            key,
        },
        csr.der().to_vec(),
    ))
}

/// Key and certificate chain of one identity.
#[derive(Debug)]
pub struct Credentials {
    pub identity: SpiffeId,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    certified: Arc<CertifiedKey>,
}

impl Credentials {
    /// Pairs the pending key with the chain the CA returned, after checking the leaf
    /// certifies that key and the identity asked for.
    pub fn new(
        pending: PendingKey,
        chain: Vec<CertificateDer<'static>>,
        trust_domain: &str,
    ) -> Result<Self, CredentialError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CredentialError::Issuer("empty certificate chain".into()))?;
        let got = leaf_identity(leaf, trust_domain)?;
        if let Some(expected) = pending.identity {
            if got != expected {
                return Err(CredentialError::WrongIdentity {
                    expected: Box::new(expected),
                    got: Box::new(got),
                });
            }
        }
        let (_, cert) =
            X509Certificate::from_der(leaf).map_err(|e| SvidError::Malformed(e.to_string()))?;
        if cert.public_key().raw != pending.key.subject_public_key_info().as_slice() {
            return Err(CredentialError::WrongKey);
        }
        let to_system = |t: i64| SystemTime::UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
        let not_before = to_system(cert.validity().not_before.timestamp());
        let not_after = to_system(cert.validity().not_after.timestamp());
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(pending.key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_supported_type(&key_der)
            .map_err(CredentialError::Key)?;
        let certified = Arc::new(CertifiedKey::new(chain, signing_key));
        Ok(Credentials {
            identity: got,
            not_before,
            not_after,
            certified,
        })
    }

    /// Credentials from PEM files (chain leaf first, PKCS#8 key): how a proxy run by
    /// hand gets its identity. The leaf must be a valid X.509-SVID of `trust_domain`
    /// and carry the key's public half.
    pub fn from_pem(
        chain_pem: &str,
        key_pem: &str,
        trust_domain: &str,
    ) -> Result<Self, CredentialError> {
        use rustls_pki_types::pem::PemObject;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(chain_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| CredentialError::Issuer(format!("certificate PEM: {e}")))?;
        let key = KeyPair::from_pem(key_pem)
            .map_err(|e| CredentialError::Request(format!("key PEM: {e}")))?;
        let leaf = chain
            .first()
            .ok_or_else(|| CredentialError::Issuer("no certificate in the PEM".into()))?;
        let identity = leaf_identity(leaf, trust_domain)?;
        let pending = PendingKey {
            identity: Some(identity),
            key,
        };
        Credentials::new(pending, chain, trust_domain)
    }

    /// Renew at half-life, as SPIRE and Istio do, so a late CA still leaves time.
    pub fn renewal_due(&self, now: SystemTime) -> bool {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        now >= self.not_before + life / 2
    }

    /// The leaf certificate.
    pub fn leaf(&self) -> Option<&CertificateDer<'static>> {
        self.certified.cert.first()
    }
}

/// The credentials a proxy presents now. Cloned `Arc`s of it go into every rustls
/// config; [`IdentityStore::replace`] swaps in renewed credentials.
#[derive(Debug)]
pub struct IdentityStore {
    current: ArcSwap<Credentials>,
}

impl IdentityStore {
    pub fn new(credentials: Credentials) -> Arc<Self> {
        Arc::new(IdentityStore {
            current: ArcSwap::from_pointee(credentials),
        })
    }

    pub fn current(&self) -> Arc<Credentials> {
        self.current.load_full()
    }

    /// Swaps in renewed credentials for the same identity; new handshakes use them.
    pub fn replace(&self, credentials: Credentials) -> Result<(), CredentialError> {
        let current = self.current.load();
        if credentials.identity != current.identity {
            return Err(CredentialError::WrongIdentity {
                expected: Box::new(current.identity.clone()),
                got: Box::new(credentials.identity),
            });
        }
        self.current.store(Arc::new(credentials));
        Ok(())
    }

    /// One renewal: a new key, a CSR, `issue` turns it into a chain, then the swap.
    pub fn renew<E: std::fmt::Display>(
        &self,
        trust_domain: &str,
        issue: impl FnOnce(&[u8]) -> Result<Vec<CertificateDer<'static>>, E>,
    ) -> Result<(), CredentialError> {
        let identity = self.current.load().identity.clone();
        let (pending, csr) = request(&identity)?;
        let chain = issue(&csr).map_err(|e| CredentialError::Issuer(e.to_string()))?;
        self.replace(Credentials::new(pending, chain, trust_domain)?)
    }

    /// Renews whenever half the lifetime has passed, for as long as the returned
    /// future runs. A failed renewal is retried every `retry` until it works; the
    /// current credentials stay in use meanwhile.
    pub async fn keep_renewed<E: std::fmt::Display>(
        self: Arc<Self>,
        trust_domain: String,
        retry: Duration,
        mut issue: impl FnMut(&[u8]) -> Result<Vec<CertificateDer<'static>>, E>,
        mut on_result: impl FnMut(&Result<(), CredentialError>),
    ) {
        loop {
            let current = self.current();
            let life = current
                .not_after
                .duration_since(current.not_before)
                .unwrap_or_default();
            let due = current.not_before + life / 2;
            let wait = due.duration_since(SystemTime::now()).unwrap_or_default();
            tokio::time::sleep(wait).await;
            loop {
                let result = self.renew(&trust_domain, &mut issue);
                on_result(&result);
                if result.is_ok() {
                    break;
                }
                tokio::time::sleep(retry).await;
            }
        }
    }
}

impl ResolvesServerCert for IdentityStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }
}

impl ResolvesClientCert for IdentityStore {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load().certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}
