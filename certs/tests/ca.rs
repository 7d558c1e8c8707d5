//! The CA's issuance rules and its persisted root.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code: a failure should stop loudly

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use palisade_certs::identity::request;
use palisade_certs::{CaConfig, CertificateAuthority, IssueError, SpiffeId};
use x509_parser::prelude::{FromDer, X509Certificate};

fn web() -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", "web").unwrap()
}

#[test]
fn issued_leaf_follows_the_svid_profile() {
    let ca = CertificateAuthority::generate(CaConfig::default()).unwrap();
    let (_, csr) = request(&web()).unwrap();
    let issued = ca.issue(&csr, &web(), None).unwrap();
    let (_, cert) = X509Certificate::from_der(&issued.der).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names.len(), 1, "exactly one SAN, the URI");
    assert_eq!(
        cert.basic_constraints().unwrap().map(|b| b.value.ca),
        Some(false),
        "CA:FALSE present"
    );
    let ku = cert.key_usage().unwrap().unwrap();
    assert!(ku.critical && ku.value.digital_signature() && !ku.value.key_cert_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    let life = cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp();
    assert_eq!(life, 24 * 3600, "default lifetime 24 h");
    let (_, csr2) = request(&web()).unwrap();
    let again = ca.issue(&csr2, &web(), None).unwrap();
    let (_, cert2) = X509Certificate::from_der(&again.der).unwrap();
    assert_ne!(cert.raw_serial(), cert2.raw_serial(), "random serials");
}

#[test]
fn lifetime_is_capped_at_the_maximum() {
    let config = CaConfig {
        max_lifetime: Duration::from_secs(3600),
        ..CaConfig::default()
    };
    let ca = CertificateAuthority::generate(config).unwrap();
    let (_, csr) = request(&web()).unwrap();
    let issued = ca
        .issue(&csr, &web(), Some(Duration::from_secs(30 * 24 * 3600)))
        .unwrap();
    assert_eq!((issued.not_after - issued.not_before).whole_seconds(), 3600);
    let short = ca
        .issue(&csr, &web(), Some(Duration::from_secs(60)))
        .unwrap();
    assert_eq!((short.not_after - short.not_before).whole_seconds(), 60);
}

#[test]
fn refuses_foreign_trust_domains_and_bad_signatures() {
    let ca = CertificateAuthority::generate(CaConfig::default()).unwrap();
    let (_, csr) = request(&web()).unwrap();
    let foreign = SpiffeId::new("evil.local", "shop", "web").unwrap();
    assert!(matches!(
        ca.issue(&csr, &foreign, None),
        Err(IssueError::ForeignTrustDomain(..))
    ));
    // Flip a byte in the signature at the end: the CSR no longer verifies.
    let mut tampered = csr.clone();
    if let Some(last) = tampered.last_mut() {
        *last ^= 0x55;
    }
    let err = ca.issue(&tampered, &web(), None).unwrap_err();
    assert!(matches!(err, IssueError::BadCsr(_)), "{err}");
}

#[test]
fn root_is_persisted_with_a_private_key_file_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let first = CertificateAuthority::load_or_generate(CaConfig::default(), dir.path()).unwrap();
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        !dir.path().join("ca.key.tmp").exists(),
        "written whole, then renamed"
    );
    let second = CertificateAuthority::load_or_generate(CaConfig::default(), dir.path()).unwrap();
    assert_eq!(first.root(), second.root(), "the same root after a restart");
    // Leaves from the reloaded CA chain to the same root.
    let (_, csr) = request(&web()).unwrap();
    assert!(second.issue(&csr, &web(), None).is_ok());
}

#[test]
fn operator_files_that_do_not_match_are_refused_with_the_path() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    CertificateAuthority::load_or_generate(CaConfig::default(), a.path()).unwrap();
    CertificateAuthority::load_or_generate(CaConfig::default(), b.path()).unwrap();
    std::fs::copy(b.path().join("ca.key"), a.path().join("ca.key")).unwrap();
    let err = CertificateAuthority::load_or_generate(CaConfig::default(), a.path()).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&a.path().display().to_string()) && text.contains("does not belong"),
        "{text}"
    );
    std::fs::write(a.path().join("ca.crt"), "not a certificate").unwrap();
    let err = CertificateAuthority::load_or_generate(CaConfig::default(), a.path()).unwrap_err();
    assert!(err.to_string().contains("CA certificate"), "{err}");
}
