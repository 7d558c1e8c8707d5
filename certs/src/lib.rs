//! Palisade identities: SPIFFE IDs, a CA that issues X.509-SVIDs from CSRs, trust
//! bundles that can hold several roots for rotation, renewal, and the rustls configs
//! that enforce all of it between proxies.
//!
//! One identity, top to bottom: the proxy makes a key and a CSR
//! ([`identity::request`]); the control plane authenticates the proxy and has the
//! [`ca::CertificateAuthority`] issue exactly that identity; the proxy keeps the
//! result in an [`identity::IdentityStore`], builds [`tls::server_config`] and
//! [`tls::client_config`] from it, and renews at half-life.

pub mod bundle;
pub mod ca;
pub mod identity;
pub mod spiffe;
pub mod svid;
pub mod tls;

pub use bundle::TrustBundle;
pub use ca::{CaConfig, CertificateAuthority, IssueError};
pub use identity::{Credentials, IdentityStore};
pub use spiffe::SpiffeId;
pub use svid::SvidError;
