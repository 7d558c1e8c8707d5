//! The X.509-SVID rules for a leaf certificate (spiffe/standards X509-SVID.md):
//! exactly one URI SAN holding the SPIFFE ID, CA:FALSE, keyUsage digitalSignature
//! and never keyCertSign or cRLSign. Chain, signature and validity dates are checked
//! by webpki in [`crate::tls`]; this module checks what webpki does not know about.

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::spiffe::{SpiffeId, SpiffeIdError};

/// Why a peer's certificate is not an acceptable X.509-SVID.
///
/// `Debug` prints the message too: rustls shows a custom certificate error with
/// `Debug` in its own message, and that is what operators read in logs.
#[derive(Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    #[error("certificate does not parse: {0}")]
    Malformed(String),
    #[error("no URI SAN: the SPIFFE ID {0:?} is only in a DNS SAN")]
    SpiffeIdInDnsSan(String),
    #[error("an X.509-SVID has exactly one URI SAN; this certificate has {0}")]
    UriSanCount(usize),
    #[error("URI SAN {uri:?} is not a workload SPIFFE ID: {error}")]
    NotSpiffe { uri: String, error: SpiffeIdError },
    #[error("trust domain {got:?} is not ours ({expected:?})")]
    WrongTrustDomain { expected: String, got: String },
    #[error("leaf certificate has CA:TRUE")]
    IsCa,
    #[error("leaf certificate may sign certificates or CRLs (keyCertSign/cRLSign)")]
    MaySign,
    #[error("leaf certificate lacks keyUsage digitalSignature")]
    NoDigitalSignature,
    #[error("peer is {got}, but {expected} was expected")]
    UnexpectedIdentity { expected: String, got: String },
}

impl std::fmt::Debug for SvidError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

/// The SPIFFE ID in a leaf certificate that obeys the X.509-SVID rules for
/// `trust_domain`.
pub fn leaf_identity(der: &[u8], trust_domain: &str) -> Result<SpiffeId, SvidError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| SvidError::Malformed(e.to_string()))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    let names = san
        .map(|s| s.value.general_names.as_slice())
        .unwrap_or_default();
    let uris: Vec<&str> = names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [one] => *one,
        [] => {
            let dns_spiffe = names.iter().find_map(|n| match n {
                GeneralName::DNSName(d) if d.starts_with("spiffe://") => Some(*d),
                _ => None,
            });
            return Err(match dns_spiffe {
                Some(d) => SvidError::SpiffeIdInDnsSan(d.to_owned()),
                None => SvidError::UriSanCount(0),
            });
        }
        many => return Err(SvidError::UriSanCount(many.len())),
    };
    let id: SpiffeId = uri.parse().map_err(|error| SvidError::NotSpiffe {
        uri: uri.to_owned(),
        error,
    })?;
    if id.trust_domain() != trust_domain {
        return Err(SvidError::WrongTrustDomain {
            expected: trust_domain.to_owned(),
            got: id.trust_domain().to_owned(),
        });
    }
    let constraints = cert
        .basic_constraints()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    if constraints.is_some_and(|c| c.value.ca) {
        return Err(SvidError::IsCa);
    }
    let usage = cert
        .key_usage()
        .map_err(|e| SvidError::Malformed(e.to_string()))?;
    match usage {
        Some(u) if u.value.key_cert_sign() || u.value.crl_sign() => return Err(SvidError::MaySign),
        Some(u) if u.value.digital_signature() => {}
        _ => return Err(SvidError::NoDigitalSignature),
    }
    Ok(id)
}
