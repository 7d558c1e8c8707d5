//! Services as the outbound proxy resolves them (kube-proxy semantics): a
//! connection to `clusterIP:port` goes to one pod the Service's selector picks, at
//! its target port, and policy is evaluated on that pod and port (post-DNAT, as
//! Calico does).

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::compile::{CompiledCluster, WorkloadId};
use crate::model::{Service, TargetPort};
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
    pub fn build(services: &[Service], cluster: &CompiledCluster) -> ServiceTable {
        let mut frontends = HashMap::new();
        for svc in services {
            // No selector: endpoints are managed by hand; not supported.
            let Some(selector) = &svc.selector else {
                continue;
            };
            let pods: Vec<_> = cluster
                .workloads()
                .filter(|(_, w)| w.pod.namespace == svc.namespace)
                .filter(|(_, w)| selector.iter().all(|(k, v)| w.pod.labels.get(k) == Some(v)))
                .collect();
            for port in svc.ports.iter().filter(|p| p.protocol == Protocol::TCP) {
                for &ip in &svc.cluster_ips {
                    let backends = pods
                        .iter()
                        .filter_map(|(id, w)| {
                            // A pod is an endpoint in the family of the frontend.
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
                                workload: *id,
                                addr: SocketAddr::new(*pod_ip, target),
                            })
                        })
                        .collect();
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
        let table = ServiceTable::build(&m.cluster.services, &c);
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
}
