//! The certificate authority: an ECDSA P-256 root that issues X.509-SVIDs from CSRs.
//!
//! The CA issues only the identity its caller was authenticated as. Whatever names,
//! key usages or CA flags a CSR asks for are ignored: only its public key (after its
//! signature has been checked) goes into the certificate.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, CertificateSigningRequestDer};
use time::OffsetDateTime;

use crate::spiffe::{SpiffeId, DEFAULT_TRUST_DOMAIN};

/// How the CA issues.
#[derive(Clone, Debug)]
pub struct CaConfig {
    pub trust_domain: String,
    /// Lifetime of a leaf when the caller asks for none.
    pub default_lifetime: Duration,
    /// No leaf lives longer than this, whatever is asked.
    pub max_lifetime: Duration,
}

impl Default for CaConfig {
    fn default() -> Self {
        CaConfig {
            trust_domain: DEFAULT_TRUST_DOMAIN.into(),
            default_lifetime: Duration::from_secs(24 * 3600),
            max_lifetime: Duration::from_secs(24 * 3600),
        }
    }
}

/// Why the CA could not start.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    BadFile { path: PathBuf, message: String },
    #[error("generating the root: {0}")]
    Generate(rcgen::Error),
}

/// Why the CA refused to issue.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum IssueError {
    #[error("CSR refused: {0}")]
    BadCsr(String),
    #[error("CSR key must be ECDSA P-256")]
    WrongKeyType,
    #[error("identity {0} is not of this CA's trust domain {1}")]
    ForeignTrustDomain(String, String),
    #[error("signing failed: {0}")]
    Sign(String),
}

/// A leaf the CA issued.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub identity: SpiffeId,
    pub der: CertificateDer<'static>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

#[derive(Debug)]
pub struct CertificateAuthority {
    config: CaConfig,
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    cert_pem: String,
}

const CERT_FILE: &str = "ca.crt";
const KEY_FILE: &str = "ca.key";
const ROOT_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // SystemRandom only fails if the OS has no randomness at all; a zero serial then
    // still yields a valid (if predictable) certificate, so do not panic.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // a positive INTEGER
    SerialNumber::from_slice(&bytes)
}

impl CertificateAuthority {
    /// A fresh root for `config.trust_domain`.
    pub fn generate(config: CaConfig) -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(CaError::Generate)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade");
        // A name of its own per root: roots of two installations (or before and after a
        // rotation) never share a subject, so webpki reports a foreign root as unknown.
        let serial = random_serial();
        let tag: String = serial
            .to_bytes()
            .iter()
            .take(4)
            .map(|b| format!("{b:02x}"))
            .collect();
        dn.push(
            DnType::CommonName,
            format!("Palisade root CA {tag} for {}", config.trust_domain),
        );
        params.distinguished_name = dn;
        // No intermediates: the root signs leaves directly.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + ROOT_LIFETIME;
        params.serial_number = Some(serial);
        let cert = params.self_signed(&key).map_err(CaError::Generate)?;
        let cert_pem = cert.pem();
        let cert = cert.der().clone();
        Ok(CertificateAuthority {
            config,
            issuer: Issuer::new(params, key),
            cert,
            cert_pem,
        })
    }

    /// A root an operator gives as PEM files' contents.
    pub fn from_pem(
        config: CaConfig,
        cert_pem: &str,
        key_pem: &str,
        origin: &Path,
    ) -> Result<Self, CaError> {
        let bad = |message: String| CaError::BadFile {
            path: origin.to_owned(),
            message,
        };
        let key = KeyPair::from_pem(key_pem).map_err(|e| bad(format!("CA key: {e}")))?;
        let der = rustls_pki_types::pem::PemObject::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
        let cert: CertificateDer<'static> = der;
        let (_, parsed) = x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
        if parsed.public_key().raw != key.subject_public_key_info().as_slice() {
            return Err(bad(
                "the CA key does not belong to the CA certificate".into()
            ));
        }
        if !parsed.is_ca() {
            return Err(bad(
                "the CA certificate is not a CA (basicConstraints CA:FALSE)".into(),
            ));
        }
        let issuer = Issuer::from_ca_cert_der(&cert, key)
            .map_err(|e| bad(format!("CA certificate: {e}")))?;
        Ok(CertificateAuthority {
            config,
            issuer,
            cert,
            cert_pem: cert_pem.to_owned(),
        })
    }

    /// Loads the root from `dir` (ca.crt, ca.key), or generates one and writes it there:
    /// the key with mode 0600, each file written whole and renamed into place.
    pub fn load_or_generate(config: CaConfig, dir: &Path) -> Result<Self, CaError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        let io = |path: &Path| {
            let path = path.to_owned();
            move |source| CaError::Io { path, source }
        };
        if cert_path.exists() && key_path.exists() {
            let cert = fs::read_to_string(&cert_path).map_err(io(&cert_path))?;
            let key = fs::read_to_string(&key_path).map_err(io(&key_path))?;
            return Self::from_pem(config, &cert, &key, dir);
        }
        fs::create_dir_all(dir).map_err(io(dir))?;
        let ca = Self::generate(config)?;
        write_atomically(&key_path, ca.issuer.key().serialize_pem().as_bytes(), 0o600)
            .map_err(io(&key_path))?;
        write_atomically(&cert_path, ca.cert_pem.as_bytes(), 0o644).map_err(io(&cert_path))?;
        Ok(ca)
    }

    pub fn trust_domain(&self) -> &str {
        &self.config.trust_domain
    }

    /// The root certificate, for trust bundles.
    pub fn root(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    pub fn root_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues an X.509-SVID for `identity` (who the caller was authenticated as) to
    /// the key in `csr`. The CSR's signature is checked; everything else it asks for
    /// is ignored. The lifetime is `lifetime` or the default, capped at the maximum.
    pub fn issue(
        &self,
        csr: &[u8],
        identity: &SpiffeId,
        lifetime: Option<Duration>,
    ) -> Result<IssuedCertificate, IssueError> {
        if identity.trust_domain() != self.config.trust_domain {
            return Err(IssueError::ForeignTrustDomain(
                identity.to_string(),
                self.config.trust_domain.clone(),
            ));
        }
        let request =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr))
                .map_err(|e| IssueError::BadCsr(e.to_string()))?;
        if request.public_key.algorithm() != &PKCS_ECDSA_P256_SHA256 {
            return Err(IssueError::WrongKeyType);
        }
        let lifetime = lifetime
            .unwrap_or(self.config.default_lifetime)
            .min(self.config.max_lifetime);
        let uri = identity
            .uri()
            .try_into()
            .map_err(|e: rcgen::Error| IssueError::Sign(e.to_string()))?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade");
        params.distinguished_name = dn;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now;
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial());
        let cert = params
            .signed_by(&request.public_key, &self.issuer)
            .map_err(|e| IssueError::Sign(e.to_string()))?;
        Ok(IssuedCertificate {
            identity: identity.clone(),
            der: cert.der().clone(),
            not_before: params.not_before,
            not_after: params.not_after,
        })
    }
}

/// A TLS serving certificate for DNS names (the injection webhook, which the
/// API server verifies by name against the caBundle), with its key.
#[derive(Debug)]
pub struct ServingCertificate {
    pub der: CertificateDer<'static>,
    pub key_pem: String,
    pub not_after: OffsetDateTime,
}

impl CertificateAuthority {
    /// The CA key, PEM, for storing it (a Kubernetes Secret) beside [`Self::root_pem`].
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// Issues a serving certificate for `dns_names`, with a fresh key.
    pub fn issue_serving(
        &self,
        dns_names: &[String],
        lifetime: Duration,
    ) -> Result<ServingCertificate, IssueError> {
        let sign = |e: rcgen::Error| IssueError::Sign(e.to_string());
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(sign)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(sign)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Palisade");
        if let Some(first) = dns_names.first() {
            dn.push(DnType::CommonName, first.as_str());
        }
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = OffsetDateTime::now_utc();
        params.not_before = now;
        // Not capped like SVIDs: the holder re-issues it on its own schedule.
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial());
        let cert = params.signed_by(&key, &self.issuer).map_err(sign)?;
        Ok(ServingCertificate {
            der: cert.der().clone(),
            key_pem: key.serialize_pem(),
            not_after: params.not_after,
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}
