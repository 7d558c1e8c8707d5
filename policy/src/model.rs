//! The cluster as policy sees it: namespaces, service accounts and pods (workloads),
//! with the label sets Calico's selectors evaluate.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use crate::policy::Protocol;
use crate::selector::LabelLookup;

pub type LabelMap = BTreeMap<String, String>;

/// Calico pseudo labels every pod carries (libcalico-go k8s conversion
/// workload_endpoint_default.go; constants.go).
pub const LABEL_NAMESPACE: &str = "projectcalico.org/namespace";
pub const LABEL_ORCHESTRATOR: &str = "projectcalico.org/orchestrator";
pub const LABEL_SERVICE_ACCOUNT: &str = "projectcalico.org/serviceaccount";
/// The name label Calico adds to namespace and service-account profiles.
pub const LABEL_NAME: &str = "projectcalico.org/name";
/// Added by the Kubernetes API server to every namespace.
pub const LABEL_K8S_NAMESPACE_NAME: &str = "kubernetes.io/metadata.name";
/// Prefix under which a pod inherits its namespace's labels (only `namespaceSelector`
/// sees them) and its service account's labels (only service-account selectors do).
pub const NAMESPACE_PREFIX: &str = "pcns.";
pub const SERVICE_ACCOUNT_PREFIX: &str = "pcsa.";

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    /// As written; [`Namespace::selector_labels`] adds the implicit ones.
    pub labels: LabelMap,
}

impl Namespace {
    pub fn new(name: impl Into<String>, labels: LabelMap) -> Self {
        Namespace {
            name: name.into(),
            labels,
        }
    }

    /// What a `namespaceSelector` sees: the labels plus `kubernetes.io/metadata.name`
    /// and `projectcalico.org/name`.
    pub fn selector_labels(&self) -> LabelMap {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_K8S_NAMESPACE_NAME.into(), self.name.clone());
        labels.insert(LABEL_NAME.into(), self.name.clone());
        labels
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    pub namespace: String,
    pub name: String,
    pub labels: LabelMap,
}

impl ServiceAccount {
    /// What a service-account selector sees: the labels plus `projectcalico.org/name`.
    pub fn selector_labels(&self) -> LabelMap {
        let mut labels = self.labels.clone();
        labels.insert(LABEL_NAME.into(), self.name.clone());
        labels
    }
}

/// A container port with a name, which rules can refer to by that name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NamedPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

/// A pod: the only kind of workload endpoint Palisade has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pod {
    pub namespace: String,
    pub name: String,
    pub labels: LabelMap,
    pub service_account: String,
    pub ips: Vec<IpAddr>,
    pub ports: Vec<NamedPort>,
}

impl Pod {
    pub fn key(&self) -> PodKey {
        PodKey::new(&self.namespace, &self.name)
    }
}

/// `namespace/name` of a pod.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PodKey {
    pub namespace: String,
    pub name: String,
}

impl PodKey {
    pub fn new(namespace: &str, name: &str) -> Self {
        PodKey {
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        }
    }

    /// Parses `namespace/name`.
    pub fn parse(text: &str) -> Option<PodKey> {
        let (ns, name) = text.split_once('/')?;
        (!ns.is_empty() && !name.is_empty() && !name.contains('/')).then(|| PodKey::new(ns, name))
    }
}

impl fmt::Display for PodKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// The full label set selectors see for a pod: its own labels, Calico's pseudo labels,
/// and (under `pcns.` / `pcsa.`) the labels of its namespace and service account.
///
/// Built once per pod change; selectors look labels up without merging maps.
#[derive(Clone, Debug)]
pub struct EndpointLabels {
    pub pod: LabelMap,
    pub namespace: String,
    /// `None` when the name is 63 characters or longer: Calico then adds no label.
    pub service_account: Option<String>,
    pub namespace_labels: Arc<LabelMap>,
    pub service_account_labels: Arc<LabelMap>,
}

impl LabelLookup for EndpointLabels {
    fn label(&self, key: &str) -> Option<&str> {
        if let Some(k) = key.strip_prefix(NAMESPACE_PREFIX) {
            return self.namespace_labels.get(k).map(String::as_str);
        }
        if let Some(k) = key.strip_prefix(SERVICE_ACCOUNT_PREFIX) {
            return self.service_account_labels.get(k).map(String::as_str);
        }
        // Pseudo labels are written after the pod's own, so they win.
        match key {
            LABEL_NAMESPACE => Some(&self.namespace),
            LABEL_ORCHESTRATOR => Some("k8s"),
            LABEL_SERVICE_ACCOUNT => self.service_account.as_deref(),
            _ => self.pod.get(key).map(String::as_str),
        }
    }
}

/// A whole cluster's endpoints, as loaded from manifests or a scenario.
#[derive(Clone, Debug, Default)]
pub struct Cluster {
    pub namespaces: Vec<Namespace>,
    pub service_accounts: Vec<ServiceAccount>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub endpoint_slices: Vec<EndpointSlice>,
}

/// A Kubernetes Service: virtual addresses whose connections go to the pods its
/// selector picks, at their target port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Service {
    pub namespace: String,
    pub name: String,
    /// `spec.clusterIP(s)`; empty for a headless Service.
    pub cluster_ips: Vec<IpAddr>,
    /// `None`: endpoints are managed by hand (not supported: no backends).
    pub selector: Option<LabelMap>,
    pub ports: Vec<ServicePort>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServicePort {
    /// `name`; empty when the Service has one unnamed port.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    pub target: TargetPort,
}

/// `targetPort`: a number, or the name of a container port, resolved per pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// A `discovery.k8s.io/v1` EndpointSlice: addresses behind a Service, as the
/// endpoint-slice controller (or an operator, for a selectorless Service) wrote them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointSlice {
    pub namespace: String,
    pub name: String,
    /// Label `kubernetes.io/service-name`: the Service this slice belongs to.
    pub service: Option<String>,
    pub ports: Vec<EndpointPort>,
    pub endpoints: Vec<Endpoint>,
}

/// A slice port: matched to a Service port by name (both empty when unnamed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointPort {
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready`; unset counts as ready (the API says consumers should
    /// treat an unknown state as ready).
    pub ready: bool,
}

impl Cluster {
    /// Adds what Kubernetes implies: a namespace for every pod's namespace and the
    /// `default` service account (and every referenced one) in each namespace.
    pub fn complete(&mut self) {
        for pod in &self.pods {
            if !self.namespaces.iter().any(|n| n.name == pod.namespace) {
                self.namespaces
                    .push(Namespace::new(pod.namespace.clone(), LabelMap::new()));
            }
        }
        let mut wanted: Vec<(String, String)> = self
            .namespaces
            .iter()
            .map(|n| (n.name.clone(), "default".to_owned()))
            .collect();
        wanted.extend(
            self.pods
                .iter()
                .map(|p| (p.namespace.clone(), p.service_account.clone())),
        );
        for (namespace, name) in wanted {
            if !self
                .service_accounts
                .iter()
                .any(|s| s.namespace == namespace && s.name == name)
            {
                self.service_accounts.push(ServiceAccount {
                    namespace,
                    name,
                    labels: LabelMap::new(),
                });
            }
        }
    }
}
