//! Services as the outbound proxy resolves them (kube-proxy semantics): a
//! connection to `clusterIP:port` goes to one ready endpoint of the Service's
//! EndpointSlices (or, without slices, one pod its selector picks) at its port, and policy is evaluated on that pod and port (post-DNAT, as
//! Calico does).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use crate::compile::{CompiledCluster, Workload, WorkloadId};
use crate::model::{Cluster, EndpointSlice, ServicePort, TargetPort};
use crate::policy::Protocol;

/// Where connections to one Service frontend can go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frontend {
    /// `namespace/name`
    pub service: String,
    pub backends: Vec<Backend>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backend {
    pub workload: WorkloadId,
    pub addr: SocketAddr,
}

/// `clusterIP:port` (TCP) -> its backends, computed once per state.
#[derive(Clone, Debug, Default)]
pub struct ServiceTable {
    frontends: HashMap<SocketAddr, Frontend>,
}

impl ServiceTable {
    /// Every TCP frontend of `cluster`'s Services. A Service that has
    /// EndpointSlices goes to their ready addresses that are pods, as kube-proxy
    /// reads slices rather than selectors; one without (manifests written by
    /// hand, the local mesh) goes to the pods its selector picks.
    pub fn build(cluster: &Cluster, compiled: &CompiledCluster) -> ServiceTable {
        let by_ip: HashMap<IpAddr, (WorkloadId, &Workload)> = compiled
            .workloads()
            .flat_map(|(id, w)| w.pod.ips.iter().map(move |ip| (*ip, (id, w))))
            .collect();
        let mut frontends = HashMap::new();
        for svc in &cluster.services {
            let slices: Vec<&EndpointSlice> = cluster
                .endpoint_slices
                .iter()
                .filter(|s| s.namespace == svc.namespace && s.service.as_deref() == Some(&svc.name))
                .collect();
            let selected: Vec<(WorkloadId, &Workload)> = match &svc.selector {
                _ if !slices.is_empty() => Vec::new(),
                // No selector and no slices: nothing to go to.
                None => continue,
                Some(selector) => compiled
                    .workloads()
                    .filter(|(_, w)| w.pod.namespace == svc.namespace)
                    .filter(|(_, w)| selector.iter().all(|(k, v)| w.pod.labels.get(k) == Some(v)))
                    .collect(),
            };
            for port in svc.ports.iter().filter(|p| p.protocol == Protocol::TCP) {
                for &ip in &svc.cluster_ips {
                    let backends = if slices.is_empty() {
                        selected
                            .iter()
                            .filter_map(|(id, w)| selector_backend(*id, w, port, ip))
                            .collect()
                    } else {
                        slice_backends(&slices, &by_ip, port, ip)
                    };
                    frontends.insert(
                        SocketAddr::new(ip, port.port),
                        Frontend {
                            service: format!("{}/{}", svc.namespace, svc.name),
                            backends,
                        },
                    );
                }
            }
        }
        ServiceTable { frontends }
    }

    pub fn get(&self, frontend: SocketAddr) -> Option<&Frontend> {
        self.frontends.get(&frontend)
    }

    pub fn len(&self) -> usize {
        self.frontends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.frontends.is_empty()
    }
}

/// A selected pod as an endpoint in the family of the frontend `ip`.
fn selector_backend(
    id: WorkloadId,
    w: &Workload,
    port: &ServicePort,
    ip: IpAddr,
) -> Option<Backend> {
    let pod_ip = w.pod.ips.iter().find(|a| a.is_ipv4() == ip.is_ipv4())?;
    let target = match &port.target {
        TargetPort::Number(n) => *n,
        // Named target ports are resolved per pod.
        TargetPort::Name(name) => {
            w.pod
                .ports
                .iter()
                .find(|p| &p.name == name && p.protocol == Protocol::TCP)?
                .port
        }
    };
    Some(Backend {
        workload: id,
        addr: SocketAddr::new(*pod_ip, target),
    })
}

/// Ready slice addresses for the Service port of the same name. Addresses that
/// are no pod of the cluster (a selectorless Service to an outside database)
/// have no identity for policy to name, so they are left out.
fn slice_backends(
    slices: &[&EndpointSlice],
    by_ip: &HashMap<IpAddr, (WorkloadId, &Workload)>,
    port: &ServicePort,
    ip: IpAddr,
) -> Vec<Backend> {
    let mut out = Vec::new();
    for slice in slices {
        let Some(target) = slice
            .ports
            .iter()
            .find(|p| p.name == port.name && p.protocol == Protocol::TCP)
        else {
            continue;
        };
        for endpoint in slice.endpoints.iter().filter(|e| e.ready) {
            for addr in endpoint
                .addresses
                .iter()
                .filter(|a| a.is_ipv4() == ip.is_ipv4())
            {
                if let Some((id, _)) = by_ip.get(addr) {
                    out.push(Backend {
                        workload: *id,
                        addr: SocketAddr::new(*addr, target.port),
                    });
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Manifests;

    #[test]
    fn numbered_and_named_target_ports_per_pod() {
        let mut m = Manifests::default();
        let errors = m.load_str(
            "m.yaml",
            "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web, labels: {app: web}}
spec: {containers: [{name: c, ports: [{name: http, containerPort: 9090}]}]}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: other, namespace: elsewhere, labels: {app: web}}
status: {podIP: 10.0.0.3}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: web}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{port: 80, targetPort: http}, {port: 81, targetPort: 7000}]
---
apiVersion: v1
kind: Service
metadata: {name: bad, namespace: web}
spec: {clusterIP: 10.96.0.2, ports: [{port: 80, targetPort: 70000}]}
",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("spec.ports[0].targetPort"),
            "{}",
            errors[0]
        );
        let (c, _) = CompiledCluster::new(&m);
        let table = ServiceTable::build(&m.cluster, &c);
        let addrs = |port: u16| -> Vec<String> {
            let f = table
                .get(SocketAddr::new("10.96.0.1".parse().unwrap(), port))
                .unwrap();
            assert_eq!(f.service, "web/web");
            f.backends.iter().map(|b| b.addr.to_string()).collect()
        };
        assert_eq!(addrs(80), ["10.0.0.1:8080", "10.0.0.2:9090"]);
        assert_eq!(addrs(81), ["10.0.0.1:7000", "10.0.0.2:7000"]);
        assert!(table.get("10.96.0.1:82".parse().unwrap()).is_none());
    }

    #[test]
    fn endpoint_slices_decide_over_the_selector_and_only_ready_pods_count() {
        let mut m = Manifests::default();
        let errors = m.load_str(
            "m.yaml",
            "
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: web, labels: {app: web}}
status: {podIP: 10.0.0.1}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: web, labels: {app: web}}
status: {podIP: 10.0.0.2}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: web}
spec:
  clusterIP: 10.96.0.1
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 81, targetPort: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-abc, namespace: web, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080, protocol: TCP}]
endpoints:
- {addresses: [10.0.0.1], conditions: {ready: true}}
- {addresses: [10.0.0.2], conditions: {ready: false, terminating: true}}
- {addresses: [192.0.2.50]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: broken, namespace: web}
addressType: IPv4
endpoints: [{addresses: [not-an-ip]}]
",
        );
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(
            errors[0].to_string().contains("endpoints[0].addresses[0]"),
            "{}",
            errors[0]
        );
        let (c, _) = CompiledCluster::new(&m);
        let table = ServiceTable::build(&m.cluster, &c);
        let addrs = |port: u16| -> Vec<String> {
            let f = table
                .get(SocketAddr::new("10.96.0.1".parse().unwrap(), port))
                .unwrap();
            f.backends.iter().map(|b| b.addr.to_string()).collect()
        };
        // b is not ready; 192.0.2.50 is no pod; the selector is not consulted.
        assert_eq!(addrs(80), ["10.0.0.1:8080"]);
        // No slice port named `admin`: no backends (kube-proxy rejects such connections).
        assert!(addrs(81).is_empty());
    }
}
