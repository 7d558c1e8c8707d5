//! Palisade on a Kubernetes cluster: the API as the control plane's source
//! (watchers over every kind policy reads), TokenReview as the proxies' proof of
//! identity, the CA key kept in a Secret, and one-shot reads for the CLI.
//!
//! Everything here talks to the API through a `kube::Client`, so tests give it
//! one backed by recorded API responses (see `tests.rs`): the API server is the
//! one real part that cannot run on this machine.

pub mod ca_secret;
#[cfg(test)]
pub mod fake_api;
pub mod kinds;
pub mod list;
pub mod source;
#[cfg(test)]
mod tests;
pub mod tokenreview;
pub mod watch;

/// A client from the kubeconfig (`KUBECONFIG`, `~/.kube/config`) or, inside a
/// pod, the service account's in-cluster configuration.
pub async fn client() -> anyhow::Result<kube::Client> {
    use anyhow::Context;
    kube::Client::try_default()
        .await
        .context("connecting to the Kubernetes API (kubeconfig or in-cluster config)")
}
