//! What the control plane watches: the Kubernetes kinds policy reads, and the
//! Calico kinds in whichever API group the cluster serves them.
//!
//! Calico's policies live either in `projectcalico.org/v3` (served by the Calico
//! API server, an aggregated API) or only as the `crd.projectcalico.org/v1` CRDs
//! that back it. Both carry the same objects, so watching both would see every
//! policy twice: discovery picks v3 when it is served, the CRDs otherwise. Both
//! groups load through the same typed Calico structs of the policy crate
//! (`palisade_policy::manifest`), which accept either `apiVersion`.

use k8s_openapi::api::core::v1::{Namespace, Pod, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::APIResourceList;
use kube::core::{ApiResource, GroupVersionKind};

pub const CALICO_V3: &str = "projectcalico.org/v3";
pub const CALICO_CRD: &str = "crd.projectcalico.org/v1";

/// The Calico kinds policy reads, in the order they are watched.
pub const CALICO_KINDS: [&str; 6] = [
    "Tier",
    "GlobalNetworkPolicy",
    "NetworkPolicy",
    "StagedGlobalNetworkPolicy",
    "StagedNetworkPolicy",
    "StagedKubernetesNetworkPolicy",
];

/// The Kubernetes kinds policy reads (all served by every cluster).
pub fn kubernetes_kinds() -> Vec<ApiResource> {
    vec![
        ApiResource::erase::<Namespace>(&()),
        ApiResource::erase::<ServiceAccount>(&()),
        ApiResource::erase::<Pod>(&()),
        ApiResource::erase::<Service>(&()),
        ApiResource::erase::<EndpointSlice>(&()),
        ApiResource::erase::<NetworkPolicy>(&()),
    ]
}

/// Which Calico API the cluster serves, found by discovery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CalicoApi {
    /// `projectcalico.org/v3`, with the kinds it serves.
    V3(Vec<ApiResource>),
    /// Only the `crd.projectcalico.org/v1` CRDs.
    Crd(Vec<ApiResource>),
    /// No Calico: Kubernetes NetworkPolicy only.
    Absent,
}

impl CalicoApi {
    pub fn kinds(&self) -> &[ApiResource] {
        match self {
            CalicoApi::V3(kinds) | CalicoApi::Crd(kinds) => kinds,
            CalicoApi::Absent => &[],
        }
    }
}

/// Asks the API server which Calico group it serves. A group that is not there
/// answers 404; any other error is returned (the caller retries), because
/// guessing "no Calico" would silently drop every Calico policy.
pub async fn discover_calico(client: &kube::Client) -> Result<CalicoApi, kube::Error> {
    for api_version in [CALICO_V3, CALICO_CRD] {
        match client.list_api_group_resources(api_version).await {
            Ok(list) => {
                let kinds = served_calico_kinds(api_version, &list);
                return Ok(if api_version == CALICO_V3 {
                    CalicoApi::V3(kinds)
                } else {
                    CalicoApi::Crd(kinds)
                });
            }
            Err(kube::Error::Api(status)) if status.is_not_found() => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(CalicoApi::Absent)
}

/// The kinds of [`CALICO_KINDS`] that `list` says are served (a cluster without
/// the staged kinds, say, is not watched for them: the watch would 404 forever).
fn served_calico_kinds(api_version: &str, list: &APIResourceList) -> Vec<ApiResource> {
    let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
    CALICO_KINDS
        .iter()
        .filter_map(|kind| {
            // Subresources (`tiers/status`) share the kind; the plain plural has no '/'.
            let served = list
                .resources
                .iter()
                .find(|r| r.kind == *kind && !r.name.contains('/'))?;
            let gvk = GroupVersionKind::gvk(group, version, kind);
            Some(ApiResource::from_gvk_with_plural(&gvk, &served.name))
        })
        .collect()
}
