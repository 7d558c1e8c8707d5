//! Kubernetes objects: Namespace, ServiceAccount, Pod, and networking.k8s.io/v1
//! NetworkPolicy, converted as Calico converts them (libcalico-go
//! `K8sNetworkPolicyToCalico`): a default-tier policy at order 1000 selecting
//! `projectcalico.org/orchestrator == 'k8s' && <podSelector>` in its namespace.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::api::networking::v1 as net;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::{join, policy_types, typed, FieldError};
use crate::model::{
    self, LabelMap, NamedPort, LABEL_NAMESPACE, LABEL_ORCHESTRATOR, NAMESPACE_PREFIX,
};
use crate::policy::{
    Action, EntityMatch, Policy, PolicyKind, PolicyRef, PortMatch, Protocol, Rule, DEFAULT_TIER,
};
use crate::selector::Selector;

/// Order Calico gives every Kubernetes NetworkPolicy in the default tier.
pub const KUBERNETES_POLICY_ORDER: f64 = 1000.0;

fn labels(map: Option<std::collections::BTreeMap<String, String>>) -> LabelMap {
    map.unwrap_or_default()
}

pub(super) fn namespace(value: Value) -> Result<model::Namespace, FieldError> {
    let ns: core::Namespace = typed(value, "")?;
    Ok(model::Namespace::new(
        ns.metadata.name.unwrap_or_default(),
        labels(ns.metadata.labels),
    ))
}

pub(super) fn service_account(value: Value) -> Result<model::ServiceAccount, FieldError> {
    let sa: core::ServiceAccount = typed(value, "")?;
    Ok(model::ServiceAccount {
        namespace: sa.metadata.namespace.unwrap_or_else(|| "default".into()),
        name: sa.metadata.name.unwrap_or_default(),
        labels: labels(sa.metadata.labels),
    })
}

pub(super) fn service(value: Value) -> Result<model::Service, FieldError> {
    let svc: core::Service = typed(value, "")?;
    let spec = svc.spec.unwrap_or_default();
    let mut cluster_ips = Vec::new();
    let listed = spec.cluster_ips.iter().flatten().enumerate();
    for (i, ip) in listed.filter(|(_, ip)| ip.as_str() != "None") {
        cluster_ips.push(parse_ip(ip, &format!("spec.clusterIPs[{i}]"))?);
    }
    if let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None" && !ip.is_empty())
    {
        let ip = parse_ip(ip, "spec.clusterIP")?;
        if !cluster_ips.contains(&ip) {
            cluster_ips.insert(0, ip);
        }
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.iter().flatten().enumerate() {
        let at = format!("spec.ports[{i}]");
        let port = u16::try_from(p.port)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| FieldError::new(join(&at, "port"), "must be 1-65535"))?;
        let target = match &p.target_port {
            None => model::TargetPort::Number(port),
            Some(IntOrString::Int(n)) => model::TargetPort::Number(
                u16::try_from(*n)
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| FieldError::new(join(&at, "targetPort"), "must be 1-65535"))?,
            ),
            Some(IntOrString::String(name)) => model::TargetPort::Name(name.clone()),
        };
        ports.push(model::ServicePort {
            name: p.name.clone().unwrap_or_default(),
            port,
            protocol: kubernetes_protocol(p.protocol.as_deref(), &join(&at, "protocol"))?,
            target,
        });
    }
    Ok(model::Service {
        namespace: svc.metadata.namespace.unwrap_or_else(|| "default".into()),
        name: svc.metadata.name.unwrap_or_default(),
        cluster_ips,
        selector: spec.selector,
        ports,
    })
}

pub(super) fn endpoint_slice(value: Value) -> Result<model::EndpointSlice, FieldError> {
    let slice: k8s_openapi::api::discovery::v1::EndpointSlice = typed(value, "")?;
    let mut ports = Vec::new();
    for (i, p) in slice.ports.iter().flatten().enumerate() {
        let at = format!("ports[{i}]");
        // A port without a number means "all ports" (for a selectorless Service
        // with no ports); nothing a frontend can be resolved to.
        let Some(port) = p.port else { continue };
        let port = u16::try_from(port)
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| FieldError::new(join(&at, "port"), "must be 1-65535"))?;
        ports.push(model::EndpointPort {
            name: p.name.clone().unwrap_or_default(),
            port,
            protocol: kubernetes_protocol(p.protocol.as_deref(), &join(&at, "protocol"))?,
        });
    }
    let ip_family = matches!(slice.address_type.as_str(), "IPv4" | "IPv6");
    let mut endpoints = Vec::new();
    for (i, e) in slice.endpoints.iter().enumerate() {
        if !ip_family {
            break; // addressType FQDN: names, not addresses; nothing to resolve to.
        }
        let mut addresses = Vec::new();
        for (j, a) in e.addresses.iter().enumerate() {
            addresses.push(parse_ip(a, &format!("endpoints[{i}].addresses[{j}]"))?);
        }
        endpoints.push(model::Endpoint {
            addresses,
            ready: e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true),
        });
    }
    Ok(model::EndpointSlice {
        namespace: slice.metadata.namespace.unwrap_or_else(|| "default".into()),
        name: slice.metadata.name.unwrap_or_default(),
        service: slice
            .metadata
            .labels
            .and_then(|mut l| l.remove("kubernetes.io/service-name")),
        ports,
        endpoints,
    })
}

pub(super) fn pod(value: Value) -> Result<model::Pod, FieldError> {
    let pod: core::Pod = typed(value, "")?;
    let spec = pod.spec.unwrap_or_default();
    let mut ips = Vec::new();
    if let Some(status) = &pod.status {
        let listed = status
            .pod_ips
            .iter()
            .flatten()
            .map(|p| p.ip.clone())
            .enumerate();
        for (i, ip) in listed {
            ips.push(parse_ip(&ip, &format!("status.podIPs[{i}].ip"))?);
        }
        if let Some(ip) = &status.pod_ip {
            let ip = parse_ip(ip, "status.podIP")?;
            if !ips.contains(&ip) {
                ips.insert(0, ip);
            }
        }
    }
    let mut ports = Vec::new();
    for (c, container) in spec.containers.iter().enumerate() {
        for (p, port) in container.ports.iter().flatten().enumerate() {
            let Some(name) = &port.name else { continue };
            let at = format!("spec.containers[{c}].ports[{p}]");
            let number = u16::try_from(port.container_port)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| FieldError::new(join(&at, "containerPort"), "must be 1-65535"))?;
            let protocol = kubernetes_protocol(port.protocol.as_deref(), &join(&at, "protocol"))?;
            ports.push(NamedPort {
                name: name.clone(),
                port: number,
                protocol,
            });
        }
    }
    Ok(model::Pod {
        namespace: pod.metadata.namespace.unwrap_or_else(|| "default".into()),
        name: pod.metadata.name.unwrap_or_default(),
        labels: labels(pod.metadata.labels),
        service_account: spec
            .service_account_name
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| "default".into()),
        ips,
        ports,
    })
}

fn parse_ip(text: &str, at: &str) -> Result<IpAddr, FieldError> {
    text.parse()
        .map_err(|_| FieldError::new(at, format!("invalid IP address {text:?}")))
}

/// Kubernetes allows TCP (the default), UDP and SCTP.
fn kubernetes_protocol(protocol: Option<&str>, at: &str) -> Result<Protocol, FieldError> {
    match protocol {
        None | Some("TCP") => Ok(Protocol::TCP),
        Some("UDP") => Ok(Protocol::UDP),
        Some("SCTP") => Ok(Protocol::SCTP),
        Some(other) => Err(FieldError::new(
            at,
            format!("unsupported protocol {other:?} (TCP, UDP or SCTP)"),
        )),
    }
}

pub(super) fn network_policy(value: Value) -> Result<Policy, FieldError> {
    let np: net::NetworkPolicy = typed(value, "")?;
    let namespace = np.metadata.namespace.unwrap_or_else(|| "default".into());
    let name = np.metadata.name.unwrap_or_default();
    convert(
        PolicyKind::Kubernetes,
        namespace,
        name,
        np.spec.unwrap_or_default(),
    )
}

/// StagedKubernetesNetworkPolicy: a NetworkPolicy spec (plus `stagedAction`), staged.
pub(super) fn staged_network_policy(
    namespace: String,
    name: String,
    spec: Value,
) -> Result<Policy, FieldError> {
    let spec: net::NetworkPolicySpec = typed(spec, "spec")?;
    convert(PolicyKind::StagedKubernetes, namespace, name, spec)
}

fn convert(
    kind: PolicyKind,
    namespace: String,
    name: String,
    spec: net::NetworkPolicySpec,
) -> Result<Policy, FieldError> {
    let pod_selector = label_selector(spec.pod_selector.as_ref(), "spec.podSelector")?;
    let selector = Selector::and([
        Selector::Eq(LABEL_NAMESPACE.into(), namespace.clone()),
        Selector::Eq(LABEL_ORCHESTRATOR.into(), "k8s".into()),
        pod_selector,
    ]);

    // API server defaulting: Ingress always, Egress too when egress rules exist.
    let has_egress_rules = spec.egress.as_ref().is_some_and(|e| !e.is_empty());
    let (ingress_applies, egress_applies) = match spec.policy_types.as_deref() {
        None | Some([]) => (true, has_egress_rules),
        Some(types) => policy_types(types, "spec.policyTypes")?,
    };

    let mut ingress = Vec::new();
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let at = format!("spec.ingress[{i}]");
        let peers = peers(rule.from.as_deref(), &namespace, &join(&at, "from"))?;
        ingress.extend(expand(i, peers, rule.ports.as_deref(), &at, true)?);
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let at = format!("spec.egress[{i}]");
        let peers = peers(rule.to.as_deref(), &namespace, &join(&at, "to"))?;
        egress.extend(expand(i, peers, rule.ports.as_deref(), &at, false)?);
    }

    Ok(Policy {
        id: PolicyRef {
            kind,
            namespace: Some(namespace),
            name,
        },
        tier: DEFAULT_TIER.into(),
        order: Some(KUBERNETES_POLICY_ORDER),
        selector,
        ingress_applies,
        egress_applies,
        ingress,
        egress,
    })
}

/// One Kubernetes rule = (any peer) AND (any port): one Calico rule per pair, all
/// carrying the Kubernetes rule's index.
fn expand(
    index: usize,
    peers: Vec<EntityMatch>,
    ports: Option<&[net::NetworkPolicyPort]>,
    at: &str,
    ingress: bool,
) -> Result<Vec<Rule>, FieldError> {
    // An empty or missing `ports` list means every port of every protocol.
    let ports: Vec<(Option<Protocol>, Option<PortMatch>)> = match ports {
        None | Some([]) => vec![(None, None)],
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, p)| port(p, &format!("{at}.ports[{i}]")).map(|(proto, m)| (Some(proto), m)))
            .collect::<Result<_, _>>()?,
    };
    let mut rules = Vec::with_capacity(peers.len() * ports.len());
    for peer in &peers {
        for (protocol, port) in &ports {
            let mut rule = Rule::new(index, Action::Allow);
            rule.protocol = *protocol;
            if ingress {
                rule.source = peer.clone();
            } else {
                rule.destination = peer.clone();
            }
            rule.destination.ports.extend(port.clone());
            rules.push(rule);
        }
    }
    Ok(rules)
}

fn port(p: &net::NetworkPolicyPort, at: &str) -> Result<(Protocol, Option<PortMatch>), FieldError> {
    let protocol = kubernetes_protocol(p.protocol.as_deref(), &join(at, "protocol"))?;
    let matched = match (&p.port, p.end_port) {
        (None, None) => None,
        (None, Some(_)) => {
            return Err(FieldError::new(
                join(at, "endPort"),
                "endPort needs a numeric port",
            ))
        }
        (Some(IntOrString::String(name)), None) => {
            if name.is_empty() || name.len() > 15 {
                return Err(FieldError::new(
                    join(at, "port"),
                    format!("invalid port name {name:?}"),
                ));
            }
            Some(PortMatch::Named(name.clone()))
        }
        (Some(IntOrString::String(_)), Some(_)) => {
            return Err(FieldError::new(
                join(at, "endPort"),
                "endPort cannot be used with a named port",
            ))
        }
        (Some(IntOrString::Int(n)), end) => {
            let first = port_number(*n, &join(at, "port"))?;
            let last = match end {
                Some(e) => port_number(e, &join(at, "endPort"))?,
                None => first,
            };
            if last < first {
                return Err(FieldError::new(
                    join(at, "endPort"),
                    format!("endPort {last} is below port {first}"),
                ));
            }
            Some(PortMatch::Range { first, last })
        }
    };
    Ok((protocol, matched))
}

fn port_number(n: i32, at: &str) -> Result<u16, FieldError> {
    u16::try_from(n)
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| FieldError::new(at, format!("port {n} is not in 1-65535")))
}

/// Peers of one rule; a missing or empty list matches every address.
fn peers(
    list: Option<&[net::NetworkPolicyPeer]>,
    namespace: &str,
    at: &str,
) -> Result<Vec<EntityMatch>, FieldError> {
    let Some(list) = list.filter(|l| !l.is_empty()) else {
        return Ok(vec![EntityMatch::default()]);
    };
    list.iter()
        .enumerate()
        .map(|(i, p)| peer(p, namespace, &format!("{at}[{i}]")))
        .collect()
}

fn peer(p: &net::NetworkPolicyPeer, namespace: &str, at: &str) -> Result<EntityMatch, FieldError> {
    let mut entity = EntityMatch::default();
    if let Some(block) = &p.ip_block {
        if p.pod_selector.is_some() || p.namespace_selector.is_some() {
            return Err(FieldError::new(
                at,
                "ipBlock cannot be combined with podSelector or namespaceSelector",
            ));
        }
        let cidr = cidr(&block.cidr, &join(at, "ipBlock.cidr"))?;
        for (i, except) in block.except.iter().flatten().enumerate() {
            let where_ = format!("{at}.ipBlock.except[{i}]");
            let except = self::cidr(except, &where_)?;
            if !cidr.contains(&except) || except.prefix_len() <= cidr.prefix_len() {
                return Err(FieldError::new(
                    where_,
                    format!("{except} is not a strict subset of {cidr}"),
                ));
            }
            entity.not_nets.push(except);
        }
        entity.nets.push(cidr);
        return Ok(entity);
    }
    // podSelector alone: pods of the policy's namespace. namespaceSelector (with or
    // without podSelector): pods of the selected namespaces.
    let pods = match &p.pod_selector {
        Some(s) => label_selector(Some(s), &join(at, "podSelector"))?,
        None => Selector::All,
    };
    let namespaces = match &p.namespace_selector {
        Some(s) => {
            label_selector(Some(s), &join(at, "namespaceSelector"))?.prefixed(NAMESPACE_PREFIX)
        }
        None if p.pod_selector.is_some() => {
            Selector::Eq(LABEL_NAMESPACE.into(), namespace.to_owned())
        }
        None => {
            return Err(FieldError::new(
                at,
                "a peer needs podSelector, namespaceSelector or ipBlock",
            ))
        }
    };
    entity.selector = Some(Selector::and([namespaces, pods]));
    Ok(entity)
}

fn cidr(text: &str, at: &str) -> Result<IpNet, FieldError> {
    IpNet::from_str(text)
        .map(|n| n.trunc())
        .map_err(|_| FieldError::new(at, format!("invalid CIDR {text:?}")))
}

/// A Kubernetes label selector as a Calico selector; empty selects everything.
pub(crate) fn label_selector(
    selector: Option<&LabelSelector>,
    at: &str,
) -> Result<Selector, FieldError> {
    let Some(selector) = selector else {
        return Ok(Selector::All);
    };
    let mut parts = Vec::new();
    for (k, v) in selector.match_labels.iter().flatten() {
        parts.push(Selector::Eq(k.clone(), v.clone()));
    }
    for (i, e) in selector.match_expressions.iter().flatten().enumerate() {
        let at = format!("{at}.matchExpressions[{i}]");
        let values = e.values.clone().unwrap_or_default();
        let needs_values = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(FieldError::new(
                    join(&at, "values"),
                    format!("operator {} needs values", e.operator),
                ))
            }
        };
        let must_be_empty = |ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(FieldError::new(
                    join(&at, "values"),
                    format!("operator {} takes no values", e.operator),
                ))
            }
        };
        parts.push(match e.operator.as_str() {
            "In" => {
                needs_values(!values.is_empty())?;
                Selector::In(e.key.clone(), values)
            }
            "NotIn" => {
                needs_values(!values.is_empty())?;
                Selector::NotIn(e.key.clone(), values)
            }
            "Exists" => {
                must_be_empty(values.is_empty())?;
                Selector::Has(e.key.clone())
            }
            "DoesNotExist" => {
                must_be_empty(values.is_empty())?;
                Selector::Not(Box::new(Selector::Has(e.key.clone())))
            }
            other => {
                return Err(FieldError::new(
                    join(&at, "operator"),
                    format!("unknown operator {other:?} (In, NotIn, Exists, DoesNotExist)"),
                ))
            }
        });
    }
    Ok(Selector::and(parts))
}
