//! Untrusted bytes (CSRs from proxies, certificates from peers, SPIFFE IDs from
//! anywhere) give an error, never a panic.

#![allow(clippy::unwrap_used, clippy::indexing_slicing)] // test code: a failure should stop loudly

use palisade_certs::identity::request;
use palisade_certs::svid::leaf_identity;
use palisade_certs::{CaConfig, CertificateAuthority, SpiffeId};
use proptest::prelude::*;

fn web() -> SpiffeId {
    SpiffeId::new("cluster.local", "shop", "web").unwrap()
}

fn ca() -> &'static CertificateAuthority {
    static CA: std::sync::OnceLock<CertificateAuthority> = std::sync::OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate(CaConfig::default()).unwrap())
}

fn valid_csr() -> Vec<u8> {
    request(&web()).unwrap().1
}

fn valid_leaf() -> Vec<u8> {
    ca().issue(&valid_csr(), &web(), None).unwrap().der.to_vec()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_as_csr(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(ca().issue(&bytes, &web(), None).is_err());
    }

    #[test]
    fn truncated_and_flipped_csrs(cut in 0usize..400, flip in any::<(usize, u8)>()) {
        let csr = valid_csr();
        let truncated = &csr[..cut.min(csr.len().saturating_sub(1))];
        prop_assert!(ca().issue(truncated, &web(), None).is_err());
        let mut flipped = csr.clone();
        let at = flip.0 % flipped.len();
        flipped[at] ^= flip.1 | 1;
        // A flipped byte may land in a field that does not matter; it must never panic
        // and never yield a certificate for another identity.
        if let Ok(issued) = ca().issue(&flipped, &web(), None) {
            prop_assert_eq!(issued.identity, web());
        }
    }

    #[test]
    fn random_and_truncated_certificates(bytes in prop::collection::vec(any::<u8>(), 0..512), cut in 0usize..600) {
        prop_assert!(leaf_identity(&bytes, "cluster.local").is_err());
        let leaf = valid_leaf();
        let _ = leaf_identity(&leaf[..cut.min(leaf.len())], "cluster.local");
    }

    #[test]
    fn arbitrary_spiffe_ids(text in "(spiffe://)?[a-zA-Z0-9./_%:@?#-]{0,40}") {
        if let Ok(id) = text.parse::<SpiffeId>() {
            prop_assert_eq!(id.to_string(), text);
        }
    }
}
