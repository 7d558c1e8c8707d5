//! The CA service: `Certify` turns a bootstrap token and a CSR into the identity the
//! token proves, and nothing else. Renewals come over the distribution stream
//! (see `stream.rs`), authenticated by the certificate being renewed.
//!
//! Bootstrap tokens are lines `TOKEN NAMESPACE/POD` in a file the launcher writes
//! (`palisade up` makes one random token per pod); the file is read at each call,
//! so a launcher can add pods while the control plane runs. On a cluster this
//! becomes the projected service-account token checked with TokenReview.

use std::path::Path;
use std::sync::Arc;

use palisade_api::v1::identity_server::Identity;
use palisade_api::v1::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};

use super::Shared;

#[derive(Debug)]
pub struct IdentityService(pub Arc<Shared>);

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let shared = &self.0;
        let CertifyRequest {
            pod,
            bootstrap_token,
            csr_der,
        } = request.into_inner();
        if !token_is_valid(&shared.tokens, &pod, &bootstrap_token) {
            eprintln!("certify {pod}: refused (bootstrap token not valid for this pod)");
            return Err(Status::unauthenticated(format!(
                "the bootstrap token is not valid for pod {pod}"
            )));
        }
        let world = shared.world.borrow().clone();
        let identity = world.identity_of(&pod).cloned().ok_or_else(|| {
            Status::failed_precondition(format!("pod {pod} is not in the cluster state"))
        })?;
        let issued = shared
            .ca
            .issue(&csr_der, &identity, Some(shared.lifetime))
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        shared.status.proxy(&pod, |p| {
            p.identity = identity.to_string();
            p.certificates_issued += 1;
            p.certificate_not_after = Some(issued.not_after.to_string());
        });
        eprintln!("certify {pod}: issued {identity}");
        Ok(Response::new(CertifyResponse {
            chain_der: vec![issued.der.to_vec()],
            roots_der: vec![shared.ca.root().to_vec()],
        }))
    }
}

fn token_is_valid(file: &Path, pod: &str, presented: &str) -> bool {
    let Ok(text) = std::fs::read_to_string(file) else {
        eprintln!("warning: bootstrap tokens {}: unreadable", file.display());
        return false;
    };
    !presented.is_empty()
        && text
            .lines()
            .filter_map(|line| line.split_once(' '))
            .any(|(token, owner)| owner.trim() == pod && same_secret(token, presented))
}

/// Compares in time that does not depend on where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_token_proves_only_the_pod_it_was_written_for() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# comment\nabc123 front/web\nxyz789 back/db\n").unwrap();
        assert!(token_is_valid(&file, "front/web", "abc123"));
        assert!(!token_is_valid(&file, "back/db", "abc123"));
        assert!(!token_is_valid(&file, "front/web", "abc124"));
        assert!(!token_is_valid(&file, "front/web", ""));
        assert!(!token_is_valid(
            &dir.path().join("missing"),
            "front/web",
            "abc123"
        ));
    }
}
