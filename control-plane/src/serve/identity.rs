//! The CA service: `Certify` turns a bootstrap token and a CSR into the identity the
//! token proves, and nothing else. Renewals come over the distribution stream
//! (see `stream.rs`), authenticated by the certificate being renewed.
//!
//! How a token is checked is the [`Authenticator`]:
//! - local mesh: lines `TOKEN NAMESPACE/POD` in a file the launcher writes
//!   (`palisade up` makes one random token per pod); the file is read at each
//!   call, so a launcher can add pods while the control plane runs;
//! - cluster: the pod's projected service-account token (audience `palisade`),
//!   checked with a TokenReview; the token's pod must be the pod asked for, and
//!   its service account the one that pod runs as.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_certs::SpiffeId;

use crate::k8s::tokenreview::{TokenError, TokenReviewer};

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
        let world = shared.world.borrow().clone();
        let identity = shared
            .auth
            .authenticate(&world, &pod, &bootstrap_token)
            .await
            .inspect_err(|s| eprintln!("certify {pod}: refused: {}", s.message()))?;
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

/// How `Certify` knows a caller is the pod it names.
#[derive(Debug)]
pub enum Authenticator {
    /// Bootstrap token file (local mesh).
    Tokens(PathBuf),
    /// Projected service-account tokens, checked with TokenReview (cluster).
    TokenReview(TokenReviewer),
}

impl Authenticator {
    /// The identity `token` proves for `pod`, or why not.
    pub async fn authenticate(
        &self,
        world: &super::world::World,
        pod: &str,
        token: &str,
    ) -> Result<SpiffeId, Status> {
        let in_state = || {
            world.identity_of(pod).cloned().ok_or_else(|| {
                Status::failed_precondition(format!("pod {pod} is not in the cluster state"))
            })
        };
        match self {
            Authenticator::Tokens(file) => {
                if !token_is_valid(file, pod, token) {
                    return Err(Status::unauthenticated(format!(
                        "the bootstrap token is not valid for pod {pod}"
                    )));
                }
                in_state()
            }
            Authenticator::TokenReview(reviewer) => {
                let owner = reviewer.review(token).await.map_err(|e| match e {
                    TokenError::Refused(why) => Status::unauthenticated(why),
                    TokenError::Unavailable(why) => Status::unavailable(why),
                })?;
                if owner.pod != pod {
                    return Err(Status::permission_denied(format!(
                        "the token belongs to pod {}, not {pod}",
                        owner.pod
                    )));
                }
                // The token's service account is what the API server vouches for;
                // the pod in the watched state must agree (it compiles for that).
                let identity = in_state()?;
                if identity.namespace() != owner.namespace
                    || identity.service_account() != owner.service_account
                {
                    return Err(Status::permission_denied(format!(
                        "the token is for service account {}/{}, pod {pod} runs as {identity}",
                        owner.namespace, owner.service_account
                    )));
                }
                Ok(identity)
            }
        }
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

    /// The cluster path: a TokenReview (recorded answer: front/web's token,
    /// bound to pod front/web-7d4b9c6f58-x2x9k) proves that pod and only that pod.
    #[tokio::test]
    async fn a_projected_token_proves_its_own_pod_and_service_account() {
        use crate::k8s::fake_api::{FakeApi, Reply};
        use palisade_policy::manifest::objects;

        let pods = |sa: &str| {
            let text = format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-7d4b9c6f58-x2x9k, namespace: front}}\n\
                 spec: {{serviceAccountName: {sa}}}\nstatus: {{podIP: 10.244.1.5}}\n---\n\
                 apiVersion: v1\nkind: Pod\nmetadata: {{name: db-0, namespace: front}}\n\
                 spec: {{serviceAccountName: web}}\nstatus: {{podIP: 10.244.1.6}}\n"
            );
            let objects = objects("pods.yaml", &text)
                .objects
                .into_iter()
                .map(|o| (o.key.clone(), Arc::new(o)))
                .collect();
            super::super::world::World::first(objects, "cluster.local")
        };
        let auth = || {
            let (client, _) = FakeApi::default()
                .route(
                    "POST /apis/authentication.k8s.io/v1/tokenreviews",
                    Reply::fixture("tokenreview.authenticated.json"),
                )
                .start();
            Authenticator::TokenReview(TokenReviewer::new(client, "palisade"))
        };
        let world = pods("web");
        let id = auth()
            .authenticate(&world, "front/web-7d4b9c6f58-x2x9k", "t")
            .await
            .unwrap();
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/front/sa/web");
        // The same token asking for another pod of the same service account.
        let other = auth()
            .authenticate(&world, "front/db-0", "t")
            .await
            .unwrap_err();
        assert_eq!(other.code(), tonic::Code::PermissionDenied, "{other:?}");
        // The watched pod runs as another service account than the token says.
        let moved = auth()
            .authenticate(&pods("admin"), "front/web-7d4b9c6f58-x2x9k", "t")
            .await
            .unwrap_err();
        assert_eq!(moved.code(), tonic::Code::PermissionDenied, "{moved:?}");
    }
}
