//! The roots a proxy trusts. Several at once, so the CA can rotate: add the new root
//! everywhere, re-issue leaves, then remove the old root.

use std::sync::Arc;

use rustls::RootCertStore;
use rustls_pki_types::CertificateDer;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustBundle {
    roots: Vec<CertificateDer<'static>>,
}

/// A root that webpki cannot use as a trust anchor.
#[derive(Debug, thiserror::Error)]
#[error("root {index} of the trust bundle is unusable: {source}")]
pub struct BundleError {
    pub index: usize,
    pub source: rustls::Error,
}

impl TrustBundle {
    pub fn new(roots: impl IntoIterator<Item = CertificateDer<'static>>) -> Self {
        let mut bundle = TrustBundle::default();
        for r in roots {
            bundle.add(r);
        }
        bundle
    }

    pub fn add(&mut self, root: CertificateDer<'static>) {
        if !self.roots.contains(&root) {
            self.roots.push(root);
        }
    }

    pub fn remove(&mut self, root: &CertificateDer<'_>) {
        self.roots.retain(|r| r.as_ref() != root.as_ref());
    }

    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    pub(crate) fn root_store(&self) -> Result<Arc<RootCertStore>, BundleError> {
        let mut store = RootCertStore::empty();
        for (index, root) in self.roots.iter().enumerate() {
            store
                .add(root.clone())
                .map_err(|source| BundleError { index, source })?;
        }
        Ok(Arc::new(store))
    }
}
