//! One-shot reads for the CLI (`explain`, `matrix`, `test` without `-f`,
//! `check-inject`): every kind the control plane watches, listed once through
//! the kubeconfig, loaded by the same policy loader. A bad object is reported
//! with its kind, name and field, and skipped.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::ListParams;
use kube::core::{ApiResource, DynamicObject};
use kube::Api;
use palisade_policy::Manifests;

use super::kinds::{discover_calico, kubernetes_kinds};
use super::source::to_manifest;

/// Everything policy reads, as the cluster has it now.
pub async fn manifests(client: &kube::Client) -> anyhow::Result<(Manifests, Vec<String>)> {
    let calico = discover_calico(client).await?;
    let mut kinds: Vec<ApiResource> = kubernetes_kinds();
    kinds.extend(calico.kinds().iter().cloned());
    let mut manifests = Manifests::default();
    let mut problems = Vec::new();
    for kind in &kinds {
        let api: Api<DynamicObject> = Api::all_with(client.clone(), kind);
        for object in list_all(&api)
            .await
            .map_err(|e| anyhow::anyhow!("listing {}: {e}", kind.plural))?
        {
            let origin = format!("kubernetes {}", kind.api_version);
            let json = to_manifest(kind, object).to_string();
            problems.extend(
                manifests
                    .load_json(&origin, &json)
                    .into_iter()
                    .map(|e| e.to_string()),
            );
        }
    }
    Ok((manifests, problems))
}

/// Every namespace and pod, typed, for `check-inject`.
pub async fn namespaces_and_pods(
    client: &kube::Client,
) -> anyhow::Result<(Vec<Namespace>, Vec<Pod>)> {
    let namespaces = list_all(&Api::<Namespace>::all(client.clone())).await?;
    let pods = list_all(&Api::<Pod>::all(client.clone())).await?;
    Ok((namespaces, pods))
}

/// All pages of a list (500 objects a page, as kubectl asks).
async fn list_all<K>(api: &Api<K>) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let mut out = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::super::fake_api::FakeApi;
    use super::*;

    #[tokio::test]
    async fn the_cluster_as_the_cli_sees_it() {
        let (client, _) = FakeApi::default()
            .kubernetes_lists()
            .calico_crds(false)
            .start();
        let (manifests, problems) = manifests(&client).await.unwrap();
        assert_eq!(manifests.cluster.pods.len(), 2);
        assert_eq!(manifests.cluster.endpoint_slices.len(), 1);
        assert_eq!(manifests.cluster.services.len(), 2);
        // 1 NetworkPolicy + allow-dns (the broken selector is reported and skipped).
        assert_eq!(manifests.policies.len(), 2, "{problems:?}");
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("GlobalNetworkPolicy default.broken-selector")
                && problems[0].contains("spec.selector"),
            "{problems:?}"
        );
    }
}
