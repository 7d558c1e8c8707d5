//! Calico kinds of projectcalico.org/v3 and crd.projectcalico.org/v1: NetworkPolicy,
//! GlobalNetworkPolicy, Tier and the staged variants. Field names and validation follow
//! the v3 API reference and libcalico-go's validator.

use std::str::FromStr;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use super::{join, kubernetes, policy_types, typed, FieldError};
use crate::model::{LABEL_NAME, LABEL_NAMESPACE, NAMESPACE_PREFIX, SERVICE_ACCOUNT_PREFIX};
use crate::policy::{
    Action, EntityMatch, HttpMatch, IcmpMatch, PathMatch, Policy, PolicyKind, PolicyRef, PortMatch,
    Protocol, Rule, Tier, TierDefault, DEFAULT_TIER,
};
use crate::selector::Selector;

pub(super) enum Object {
    Policy(Box<Policy>),
    Tier(Tier),
}

#[derive(Deserialize)]
struct Envelope {
    metadata: Metadata,
    #[serde(default)]
    spec: Value,
}

#[derive(Deserialize)]
struct Metadata {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct TierSpec {
    order: Option<f64>,
    default_action: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct PolicySpec {
    tier: Option<String>,
    order: Option<f64>,
    selector: Option<String>,
    namespace_selector: Option<String>,
    service_account_selector: Option<String>,
    types: Option<Vec<String>>,
    ingress: Option<Vec<RuleSpec>>,
    egress: Option<Vec<RuleSpec>>,
    staged_action: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrString {
    Num(i64),
    Str(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RuleSpec {
    action: String,
    protocol: Option<NumOrString>,
    not_protocol: Option<NumOrString>,
    icmp: Option<IcmpSpec>,
    #[serde(rename = "notICMP")]
    not_icmp: Option<IcmpSpec>,
    ip_version: Option<i64>,
    source: Option<EntitySpec>,
    destination: Option<EntitySpec>,
    http: Option<HttpSpec>,
}

#[derive(Deserialize)]
struct IcmpSpec {
    #[serde(rename = "type")]
    kind: Option<i64>,
    code: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct EntitySpec {
    nets: Option<Vec<String>>,
    not_nets: Option<Vec<String>>,
    selector: Option<String>,
    not_selector: Option<String>,
    namespace_selector: Option<String>,
    ports: Option<Vec<NumOrString>>,
    not_ports: Option<Vec<NumOrString>>,
    service_accounts: Option<ServiceAccountSpec>,
    services: Option<Value>,
}

#[derive(Deserialize, Default)]
struct ServiceAccountSpec {
    #[serde(default)]
    names: Vec<String>,
    selector: Option<String>,
}

#[derive(Deserialize)]
struct HttpSpec {
    methods: Option<Vec<String>>,
    paths: Option<Vec<PathSpec>>,
}

#[derive(Deserialize)]
struct PathSpec {
    exact: Option<String>,
    prefix: Option<String>,
}

/// Converts a Calico object; `None` for kinds that carry no policy.
pub(super) fn load(kind: &str, value: Value) -> Option<Result<Object, FieldError>> {
    let policy_kind = match kind {
        "Tier" => return Some(tier(value).map(Object::Tier)),
        "NetworkPolicy" => PolicyKind::Calico,
        "GlobalNetworkPolicy" => PolicyKind::Global,
        "StagedNetworkPolicy" => PolicyKind::StagedCalico,
        "StagedGlobalNetworkPolicy" => PolicyKind::StagedGlobal,
        "StagedKubernetesNetworkPolicy" => PolicyKind::StagedKubernetes,
        _ => return None,
    };
    Some(policy(policy_kind, value).map(|p| Object::Policy(Box::new(p))))
}

fn tier(value: Value) -> Result<Tier, FieldError> {
    let envelope: Envelope = typed(value, "")?;
    let spec: TierSpec = if envelope.spec.is_null() {
        TierSpec::default()
    } else {
        typed(envelope.spec, "spec")?
    };
    let default_action = match spec.default_action.as_deref() {
        None | Some("Deny") => TierDefault::Deny,
        Some("Pass") => TierDefault::Pass,
        Some(other) => {
            return Err(FieldError::new(
                "spec.defaultAction",
                format!("unknown action {other:?} (Deny or Pass)"),
            ))
        }
    };
    Ok(Tier {
        name: envelope.metadata.name,
        order: spec.order,
        default_action,
    })
}

fn policy(kind: PolicyKind, value: Value) -> Result<Policy, FieldError> {
    let envelope: Envelope = typed(value, "")?;
    let Metadata { name, namespace } = envelope.metadata;
    let namespaced = matches!(
        kind,
        PolicyKind::Calico | PolicyKind::StagedCalico | PolicyKind::StagedKubernetes
    );
    let namespace = namespaced.then(|| namespace.unwrap_or_else(|| "default".into()));
    if kind == PolicyKind::StagedKubernetes {
        let namespace = namespace.unwrap_or_default();
        if let Some(action) = envelope.spec.get("stagedAction").and_then(Value::as_str) {
            staged_action(Some(action))?;
        }
        return kubernetes::staged_network_policy(namespace, name, envelope.spec);
    }
    let spec: PolicySpec = if envelope.spec.is_null() {
        PolicySpec::default()
    } else {
        typed(envelope.spec, "spec")?
    };
    staged_action(spec.staged_action.as_deref())?;

    let mut selector_parts = Vec::new();
    if let Some(ns) = &namespace {
        selector_parts.push(Selector::Eq(LABEL_NAMESPACE.into(), ns.clone()));
    }
    selector_parts
        .push(selector(spec.selector.as_deref(), "spec.selector")?.unwrap_or(Selector::All));
    if let Some(s) = selector(spec.namespace_selector.as_deref(), "spec.namespaceSelector")? {
        if namespaced {
            return Err(FieldError::new(
                "spec.namespaceSelector",
                "only GlobalNetworkPolicy has a namespaceSelector",
            ));
        }
        selector_parts.push(s.prefixed(NAMESPACE_PREFIX));
    }
    if let Some(s) = selector(
        spec.service_account_selector.as_deref(),
        "spec.serviceAccountSelector",
    )? {
        selector_parts.push(s.prefixed(SERVICE_ACCOUNT_PREFIX));
    }

    let ingress_specs = spec.ingress.unwrap_or_default();
    let egress_specs = spec.egress.unwrap_or_default();
    // Defaulting at creation (api/pkg/defaults): egress rules only -> [Egress]; both ->
    // [Ingress, Egress]; otherwise [Ingress], even with no rules at all.
    let (ingress_applies, egress_applies) = match &spec.types {
        None => match (ingress_specs.is_empty(), egress_specs.is_empty()) {
            (true, false) => (false, true),
            (false, false) => (true, true),
            _ => (true, false),
        },
        Some(types) => policy_types(types, "spec.types")?,
    };

    let ns = namespace.as_deref();
    let ingress = rules(&ingress_specs, ns, "spec.ingress")?;
    let egress = rules(&egress_specs, ns, "spec.egress")?;
    Ok(Policy {
        id: PolicyRef {
            kind,
            namespace,
            name,
        },
        tier: spec
            .tier
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| DEFAULT_TIER.into()),
        order: spec.order,
        selector: Selector::and(selector_parts),
        ingress_applies,
        egress_applies,
        ingress,
        egress,
    })
}

/// Only `Set` (the default) is supported: `Delete` previews removing an enforced
/// policy, which the pending verdict does not model yet.
fn staged_action(action: Option<&str>) -> Result<(), FieldError> {
    match action {
        None | Some("Set") => Ok(()),
        Some(other) => Err(FieldError::new(
            "spec.stagedAction",
            format!("stagedAction {other:?} is not supported (only Set)"),
        )),
    }
}

/// Parses an optional selector; blank counts as absent.
fn selector(text: Option<&str>, at: &str) -> Result<Option<Selector>, FieldError> {
    match text {
        Some(t) if !t.trim().is_empty() => Selector::parse(t)
            .map(Some)
            .map_err(|e| FieldError::new(at, e.to_string())),
        _ => Ok(None),
    }
}

fn rules(specs: &[RuleSpec], namespace: Option<&str>, at: &str) -> Result<Vec<Rule>, FieldError> {
    specs
        .iter()
        .enumerate()
        .map(|(i, r)| rule(i, r, namespace, &format!("{at}[{i}]")))
        .collect()
}

fn protocol(p: &NumOrString, at: &str) -> Result<Protocol, FieldError> {
    match p {
        NumOrString::Num(n) => u8::try_from(*n)
            .ok()
            .filter(|n| *n > 0)
            .map(Protocol)
            .ok_or_else(|| FieldError::new(at, format!("protocol {n} is not in 1-255"))),
        NumOrString::Str(s) => Protocol::from_str(s).map_err(|m| FieldError::new(at, m)),
    }
}

fn icmp(spec: &IcmpSpec, at: &str) -> Result<IcmpMatch, FieldError> {
    let byte = |v: i64, field: &str| {
        u8::try_from(v)
            .ok()
            .filter(|b| *b < 255)
            .ok_or_else(|| FieldError::new(join(at, field), format!("{v} is not in 0-254")))
    };
    let kind = match spec.kind {
        Some(k) => byte(k, "type")?,
        None => {
            return Err(FieldError::new(
                join(at, "type"),
                "an ICMP match needs a type",
            ))
        }
    };
    let code = spec.code.map(|c| byte(c, "code")).transpose()?;
    Ok(IcmpMatch { kind, code })
}

fn rule(
    index: usize,
    spec: &RuleSpec,
    namespace: Option<&str>,
    at: &str,
) -> Result<Rule, FieldError> {
    let action = match spec.action.to_ascii_lowercase().as_str() {
        "allow" => Action::Allow,
        "deny" => Action::Deny,
        "log" => Action::Log,
        "pass" | "next-tier" => Action::Pass,
        _ => {
            return Err(FieldError::new(
                join(at, "action"),
                format!(
                    "unknown action {:?} (Allow, Deny, Log or Pass)",
                    spec.action
                ),
            ))
        }
    };
    let mut rule = Rule::new(index, action);
    rule.protocol = spec
        .protocol
        .as_ref()
        .map(|p| protocol(p, &join(at, "protocol")))
        .transpose()?;
    rule.not_protocol = spec
        .not_protocol
        .as_ref()
        .map(|p| protocol(p, &join(at, "notProtocol")))
        .transpose()?;
    for (field, value, slot) in [
        ("icmp", &spec.icmp, &mut rule.icmp),
        ("notICMP", &spec.not_icmp, &mut rule.not_icmp),
    ] {
        if let Some(v) = value {
            if !rule.protocol.is_some_and(Protocol::is_icmp) {
                return Err(FieldError::new(
                    join(at, field),
                    "needs protocol ICMP or ICMPv6",
                ));
            }
            *slot = Some(icmp(v, &join(at, field))?);
        }
    }
    rule.ip_version = match spec.ip_version {
        None => None,
        Some(v @ (4 | 6)) => Some(v as u8),
        Some(v) => {
            return Err(FieldError::new(
                join(at, "ipVersion"),
                format!("must be 4 or 6, not {v}"),
            ))
        }
    };
    let empty = EntitySpec::default();
    rule.source = entity(
        spec.source.as_ref().unwrap_or(&empty),
        namespace,
        &join(at, "source"),
    )?;
    rule.destination = entity(
        spec.destination.as_ref().unwrap_or(&empty),
        namespace,
        &join(at, "destination"),
    )?;
    for (side, entity) in [("source", &rule.source), ("destination", &rule.destination)] {
        let numeric = entity
            .ports
            .iter()
            .chain(&entity.not_ports)
            .any(|p| matches!(p, PortMatch::Range { .. }));
        if numeric && !rule.protocol.is_some_and(Protocol::has_ports) {
            return Err(FieldError::new(
                join(at, &format!("{side}.ports")),
                "numeric ports need protocol TCP, UDP or SCTP",
            ));
        }
    }
    if let Some(http) = &spec.http {
        if rule.protocol.is_some_and(|p| p != Protocol::TCP) {
            return Err(FieldError::new(
                join(at, "http"),
                "an http match needs protocol TCP or none",
            ));
        }
        rule.http = Some(http_match(http, &join(at, "http"))?);
    }
    Ok(rule)
}

fn http_match(spec: &HttpSpec, at: &str) -> Result<HttpMatch, FieldError> {
    let mut paths = Vec::new();
    for (i, p) in spec.paths.iter().flatten().enumerate() {
        paths.push(match (&p.exact, &p.prefix) {
            (Some(e), None) => PathMatch::Exact(e.clone()),
            (None, Some(p)) => PathMatch::Prefix(p.clone()),
            _ => {
                return Err(FieldError::new(
                    format!("{at}.paths[{i}]"),
                    "give exactly one of exact or prefix",
                ))
            }
        });
    }
    Ok(HttpMatch {
        methods: spec.methods.clone().unwrap_or_default(),
        paths,
    })
}

/// Folds one side's endpoint criteria into a positive and a negative selector
/// (libcalico-go updateprocessors/rules.go `getEndpointSelector`).
fn entity(
    spec: &EntitySpec,
    policy_namespace: Option<&str>,
    at: &str,
) -> Result<EntityMatch, FieldError> {
    if spec.services.is_some() {
        return Err(FieldError::new(
            join(at, "services"),
            "service matches are not supported yet",
        ));
    }
    let namespace_selector = selector(
        spec.namespace_selector.as_deref(),
        &join(at, "namespaceSelector"),
    )?;
    let own_selector = selector(spec.selector.as_deref(), &join(at, "selector"))?;
    let not_selector = selector(spec.not_selector.as_deref(), &join(at, "notSelector"))?;

    // NS: the namespaceSelector if given, else the policy's own namespace.
    let ns = match &namespace_selector {
        Some(s) => Some(s.prefixed(NAMESPACE_PREFIX)),
        None => policy_namespace.map(|ns| Selector::Eq(LABEL_NAMESPACE.into(), ns.to_owned())),
    };
    // SA: label selector on the account AND its name among `names`.
    let sa = match &spec.service_accounts {
        Some(sa) => {
            let mut parts = Vec::new();
            if let Some(s) = selector(
                sa.selector.as_deref(),
                &join(at, "serviceAccounts.selector"),
            )? {
                parts.push(s.prefixed(SERVICE_ACCOUNT_PREFIX));
            }
            if !sa.names.is_empty() {
                parts.push(Selector::In(
                    format!("{SERVICE_ACCOUNT_PREFIX}{LABEL_NAME}"),
                    sa.names.clone(),
                ));
            }
            Some(Selector::and(parts))
        }
        None => None,
    };
    let positive: Vec<Selector> = sa.into_iter().chain(own_selector).collect();
    let mut pos = (!positive.is_empty()).then(|| Selector::and(positive));
    // "Limited to the namespace as soon as any of the selector fields are used,
    // including NotSelector" (NetworkPolicy reference, EntityRule).
    if let Some(ns) = ns {
        if pos.is_some() || not_selector.is_some() || namespace_selector.is_some() {
            pos = Some(Selector::and([ns, pos.unwrap_or(Selector::All)]));
        }
    }

    Ok(EntityMatch {
        selector: pos,
        not_selector,
        nets: nets(spec.nets.as_deref(), &join(at, "nets"))?,
        not_nets: nets(spec.not_nets.as_deref(), &join(at, "notNets"))?,
        ports: ports(spec.ports.as_deref(), &join(at, "ports"))?,
        not_ports: ports(spec.not_ports.as_deref(), &join(at, "notPorts"))?,
    })
}

fn nets(list: Option<&[String]>, at: &str) -> Result<Vec<IpNet>, FieldError> {
    let mut out = Vec::new();
    for (i, text) in list.unwrap_or_default().iter().enumerate() {
        // A bare address is a /32 or /128.
        let net = IpNet::from_str(text)
            .or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from))
            .map_err(|_| FieldError::new(format!("{at}[{i}]"), format!("invalid CIDR {text:?}")))?;
        out.push(net.trunc());
    }
    Ok(out)
}

fn ports(list: Option<&[NumOrString]>, at: &str) -> Result<Vec<PortMatch>, FieldError> {
    let mut out = Vec::new();
    for (i, p) in list.unwrap_or_default().iter().enumerate() {
        out.push(port(p).map_err(|m| FieldError::new(format!("{at}[{i}]"), m))?);
    }
    Ok(out)
}

/// `80`, `"80"`, `"8000:8080"` or a port name.
fn port(p: &NumOrString) -> Result<PortMatch, String> {
    let number = |text: &str| -> Result<u16, String> {
        text.trim()
            .parse::<u16>()
            .ok()
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("invalid port {text:?}"))
    };
    match p {
        NumOrString::Num(n) => {
            let n = u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("invalid port {n}"))?;
            Ok(PortMatch::Range { first: n, last: n })
        }
        NumOrString::Str(s) => {
            if let Some((lo, hi)) = s.split_once(':') {
                let (first, last) = (number(lo)?, number(hi)?);
                if last < first {
                    return Err(format!("invalid port range {s:?}"));
                }
                Ok(PortMatch::Range { first, last })
            } else if s.chars().all(|c| c.is_ascii_digit()) && !s.is_empty() {
                let n = number(s)?;
                Ok(PortMatch::Range { first: n, last: n })
            } else if !s.is_empty()
                && s.len() <= 15
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            {
                Ok(PortMatch::Named(s.clone()))
            } else {
                Err(format!(
                    "invalid port {s:?} (a number, \"first:last\" or a port name)"
                ))
            }
        }
    }
}
