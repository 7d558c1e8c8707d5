//! Policy test scenarios in the conformance format (shared/conformance/README.md):
//! a small cluster, the manifests applied to it, and the verdicts expected. Teams keep
//! such files next to their manifests; `palisade test` runs them.
//!
//! Parsing and running take text and give results; reading files is the caller's job.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::compile::CompiledCluster;
use crate::evaluate::{Endpoint, Flow};
use crate::http::HttpRequest;
use crate::manifest::Manifests;
use crate::model::{Cluster, LabelMap, NamedPort, Namespace, Pod, PodKey, ServiceAccount};
use crate::policy::{Direction, Protocol};
use crate::verdict::{Reference, Verdict};

/// A scenario file that cannot be run: bad YAML, a bad manifest, an unknown pod.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ScenarioError {
    pub file: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioSpec {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    source: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    cluster: Option<ClusterSpec>,
    #[serde(default)]
    policies: Option<String>,
    #[serde(default)]
    expect: Option<Vec<Value>>,
    #[serde(default)]
    steps: Option<Vec<StepSpec>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StepSpec {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    #[allow(dead_code)]
    description: Option<String>,
    #[serde(default)]
    cluster: Option<ClusterSpec>,
    #[serde(default)]
    policies: Option<String>,
    #[serde(default)]
    expect: Option<Vec<Value>>,
}

#[derive(Deserialize, Clone, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClusterSpec {
    #[serde(default)]
    namespaces: Vec<NamespaceSpec>,
    #[serde(default)]
    service_accounts: Vec<ServiceAccountSpec>,
    #[serde(default)]
    pods: Vec<PodSpec>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct NamespaceSpec {
    name: String,
    #[serde(default)]
    labels: LabelMap,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct ServiceAccountSpec {
    namespace: String,
    name: String,
    #[serde(default)]
    labels: LabelMap,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodSpec {
    name: String,
    namespace: String,
    #[serde(default)]
    labels: LabelMap,
    #[serde(default)]
    service_account: Option<String>,
    #[serde(default)]
    ip: Option<IpAddr>,
    #[serde(default)]
    ips: Vec<IpAddr>,
    #[serde(default)]
    ports: Vec<PortSpec>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct PortSpec {
    name: String,
    port: u16,
    #[serde(default)]
    protocol: Option<String>,
}

/// One expected verdict.
#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct Expectation {
    pub from: String,
    pub to: String,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub protocol: Option<String>,
    pub allowed: bool,
    #[serde(default)]
    pub http: Option<HttpSpec>,
    #[serde(default)]
    pub ingress: Option<String>,
    #[serde(default)]
    pub egress: Option<String>,
    #[serde(default)]
    pub icmp: Option<IcmpSpec>,
    #[serde(default)]
    pub pending: Option<PendingSpec>,
    #[serde(default)]
    pub logged: Option<LoggedSpec>,
}

#[derive(Deserialize, Clone, Debug)]
pub struct HttpSpec {
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub headers: Option<BTreeMap<String, String>>,
}

#[derive(Deserialize, Clone, Copy, Debug)]
#[serde(deny_unknown_fields)]
pub struct IcmpSpec {
    #[serde(rename = "type")]
    pub kind: u8,
    #[serde(default)]
    pub code: u8,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct PendingSpec {
    #[serde(default)]
    pub allowed: Option<bool>,
    #[serde(default)]
    pub ingress: Option<String>,
    #[serde(default)]
    pub egress: Option<String>,
}

#[derive(Deserialize, Clone, Debug)]
#[serde(deny_unknown_fields)]
pub struct LoggedSpec {
    #[serde(default)]
    pub ingress: Option<Vec<String>>,
    #[serde(default)]
    pub egress: Option<Vec<String>>,
}

/// What the evaluator said, in the scenario format's words.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Actual {
    pub allowed: bool,
    pub ingress: Option<String>,
    pub egress: Option<String>,
    pub pending: ActualPending,
    pub logged: ActualLogged,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ActualPending {
    pub allowed: bool,
    pub ingress: Option<String>,
    pub egress: Option<String>,
}

#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct ActualLogged {
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
}

/// One expectation checked.
#[derive(Serialize, Clone, Debug)]
pub struct ExpectationResult {
    pub file: String,
    pub scenario: String,
    /// Step index (0-based) for scenarios with steps.
    pub step: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_name: Option<String>,
    /// Index of the expectation in its list.
    pub index: usize,
    pub pass: bool,
    pub expected: Value,
    pub actual: Actual,
    /// For a failure: each mismatch in a sentence.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub mismatches: Vec<String>,
}

/// A scenario's state at one step: what the evaluator compiled.
#[derive(Debug)]
pub struct StepState {
    pub name: Option<String>,
    pub manifests: Manifests,
    pub compiled: CompiledCluster,
    pub expect: Vec<(Value, Expectation)>,
}

/// Parses a scenario file into its steps, each compiled from scratch.
pub fn load(file: &str, text: &str) -> Result<(String, Vec<StepState>), ScenarioError> {
    load_with(file, text, None)
}

/// True for a scenario of expectations only (no `cluster`, no `policies`).
pub fn needs_base(text: &str) -> bool {
    serde_norway::from_str::<ScenarioSpec>(text).is_ok_and(|spec| {
        spec.cluster.is_none()
            && spec.policies.is_none()
            && spec
                .steps
                .iter()
                .flatten()
                .all(|s| s.cluster.is_none() && s.policies.is_none())
    })
}

/// As [`load`]; a scenario that brings neither `cluster` nor `policies` (only
/// expectations) is evaluated against `base` when given: the manifests of
/// `palisade test -f DIR`, or a live cluster's.
pub fn load_with(
    file: &str,
    text: &str,
    base: Option<&Manifests>,
) -> Result<(String, Vec<StepState>), ScenarioError> {
    let error = |message: String| ScenarioError {
        file: file.to_owned(),
        message,
    };
    let spec: ScenarioSpec =
        serde_norway::from_str(text).map_err(|e| error(format!("invalid scenario: {e}")))?;
    let stepped = spec.steps.is_some();
    let self_contained = spec.cluster.is_some()
        || spec.policies.is_some()
        || spec
            .steps
            .iter()
            .flatten()
            .any(|s| s.cluster.is_some() || s.policies.is_some());
    let base = base.filter(|_| !self_contained);
    let steps: Vec<StepSpec> = match spec.steps {
        Some(steps) => steps,
        None => vec![StepSpec {
            name: None,
            description: None,
            cluster: None,
            policies: spec.policies.clone(),
            expect: spec.expect.clone(),
        }],
    };
    let mut cluster = spec.cluster.unwrap_or_default();
    let mut policies = String::new();
    let mut out = Vec::new();
    for (i, step) in steps.into_iter().enumerate() {
        let where_ = match &step.name {
            Some(n) => format!("step {i} ({n})"),
            None if stepped => format!("step {i}"),
            None => "scenario".into(),
        };
        if let Some(c) = step.cluster {
            cluster = c;
        }
        if let Some(p) = step.policies {
            policies = p;
        }
        let manifests = match base {
            Some(base) => base.clone(),
            None => {
                let mut manifests = Manifests {
                    cluster: to_cluster(&cluster).map_err(|m| error(format!("{where_}: {m}")))?,
                    ..Default::default()
                };
                let errors = manifests.load_str(&format!("{file}: {where_}: policies"), &policies);
                if let Some(first) = errors.first() {
                    return Err(error(first.to_string()));
                }
                manifests
            }
        };
        let (compiled, errors) = CompiledCluster::new(&manifests);
        if let Some(first) = errors.first() {
            return Err(error(format!("{where_}: {first}")));
        }
        let mut expect = Vec::new();
        for (j, raw) in step.expect.unwrap_or_default().into_iter().enumerate() {
            let parsed: Expectation = serde_json::from_value(raw.clone())
                .map_err(|e| error(format!("{where_}: expect[{j}]: {e}")))?;
            expect.push((raw, parsed));
        }
        out.push(StepState {
            name: step.name,
            manifests,
            compiled,
            expect,
        });
    }
    Ok((spec.name, out))
}

fn to_cluster(spec: &ClusterSpec) -> Result<Cluster, String> {
    let mut cluster = Cluster {
        services: Vec::new(),
        endpoint_slices: Vec::new(),
        namespaces: spec
            .namespaces
            .iter()
            .map(|n| Namespace::new(n.name.clone(), n.labels.clone()))
            .collect(),
        service_accounts: spec
            .service_accounts
            .iter()
            .map(|s| ServiceAccount {
                namespace: s.namespace.clone(),
                name: s.name.clone(),
                labels: s.labels.clone(),
            })
            .collect(),
        pods: Vec::new(),
    };
    for p in &spec.pods {
        let mut ips: Vec<IpAddr> = p.ip.into_iter().collect();
        ips.extend(p.ips.iter().filter(|ip| Some(**ip) != p.ip));
        let mut ports = Vec::new();
        for port in &p.ports {
            let protocol = match port.protocol.as_deref() {
                None => Protocol::TCP,
                Some(s) => s
                    .parse()
                    .map_err(|e| format!("pod {}/{}: {e}", p.namespace, p.name))?,
            };
            ports.push(NamedPort {
                name: port.name.clone(),
                port: port.port,
                protocol,
            });
        }
        cluster.pods.push(Pod {
            namespace: p.namespace.clone(),
            name: p.name.clone(),
            labels: p.labels.clone(),
            service_account: p
                .service_account
                .clone()
                .unwrap_or_else(|| "default".into()),
            ips,
            ports,
        });
    }
    Ok(cluster)
}

/// One end of a flow as written: an address, or a pod with all its addresses.
enum End {
    Address(IpAddr),
    Pod(crate::compile::WorkloadId, Vec<IpAddr>),
}

fn parse_end(compiled: &CompiledCluster, text: &str) -> Result<End, String> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(End::Address(ip));
    }
    let key = PodKey::parse(text)
        .ok_or_else(|| format!("{text:?} is neither namespace/pod nor an IP address"))?;
    let id = compiled
        .workload_by_key(&key)
        .ok_or_else(|| format!("no pod {key}"))?;
    let ips = compiled
        .workload(id)
        .map(|w| w.pod.ips.clone())
        .unwrap_or_default();
    if ips.is_empty() {
        return Err(format!("pod {key} has no IP address"));
    }
    Ok(End::Pod(id, ips))
}

/// Resolves both ends of a flow (`namespace/pod` or an IP address). A dual-stack pod
/// talks in the family of the other end.
pub fn resolve_pair(
    compiled: &CompiledCluster,
    from: &str,
    to: &str,
) -> Result<(Endpoint, Endpoint), String> {
    let (from, to) = (parse_end(compiled, from)?, parse_end(compiled, to)?);
    let family_of = |e: &End| match e {
        End::Address(ip) => Some(ip.is_ipv4()),
        End::Pod(..) => None,
    };
    let pick = |e: &End, v4: Option<bool>| match e {
        End::Address(ip) => compiled.endpoint(*ip),
        End::Pod(id, ips) => {
            let ip = v4
                .and_then(|v4| ips.iter().find(|ip| ip.is_ipv4() == v4))
                .or(ips.first())
                .copied();
            Endpoint {
                ip: ip.unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
                workload: Some(*id),
            }
        }
    };
    let source = pick(&from, family_of(&to));
    let destination = pick(&to, Some(source.ip.is_ipv4()));
    Ok((source, destination))
}

/// Evaluates one expectation's flow.
pub fn evaluate(compiled: &CompiledCluster, e: &Expectation) -> Result<Verdict, String> {
    let (source, destination) = resolve_pair(compiled, &e.from, &e.to)?;
    let protocol: Protocol = e.protocol.as_deref().unwrap_or("TCP").parse()?;
    let icmp = protocol
        .is_icmp()
        .then(|| e.icmp.map_or((8, 0), |i| (i.kind, i.code)));
    // Matched as the proxy matches it: on the canonical path.
    let canonical = match &e.http {
        Some(h) => Some(
            crate::http::parse_target(&h.path)
                .map_err(|why| format!("http.path {:?}: {why}", h.path))?
                .path,
        ),
        None => None,
    };
    let http = e
        .http
        .as_ref()
        .zip(canonical.as_deref())
        .map(|(h, path)| HttpRequest {
            method: &h.method,
            path,
        });
    Ok(compiled.evaluate(&Flow {
        source,
        destination,
        protocol,
        port: e.port,
        icmp,
        http,
    }))
}

/// What decided `direction` (enforced, or pending when `staged`); `None` when that
/// end is not a pod.
fn decided(
    compiled: &CompiledCluster,
    verdict: &Verdict,
    direction: Direction,
    staged: bool,
) -> Option<Reference> {
    let (v, pending) = match direction {
        Direction::Ingress => (verdict.ingress.as_ref()?, verdict.pending.ingress),
        Direction::Egress => (verdict.egress.as_ref()?, verdict.pending.egress),
    };
    let decision = if staged { pending? } else { v.decision };
    Some(compiled.reference(v.workload, direction, decision, staged))
}

/// The verdict in the scenario format's words.
pub fn actual(compiled: &CompiledCluster, verdict: &Verdict) -> Actual {
    let reference = |d, staged| decided(compiled, verdict, d, staged).map(|r| r.to_string());
    let logged = |d: Direction| {
        let v = match d {
            Direction::Ingress => verdict.ingress.as_ref(),
            Direction::Egress => verdict.egress.as_ref(),
        };
        v.map(|v| compiled.logged_references(d, &v.logged))
            .unwrap_or_default()
    };
    Actual {
        allowed: verdict.allowed,
        ingress: reference(Direction::Ingress, false),
        egress: reference(Direction::Egress, false),
        pending: ActualPending {
            allowed: verdict.pending.allowed,
            ingress: reference(Direction::Ingress, true),
            egress: reference(Direction::Egress, true),
        },
        logged: ActualLogged {
            ingress: logged(Direction::Ingress),
            egress: logged(Direction::Egress),
        },
    }
}

/// Every way the verdict differs from the expectation, one sentence each.
pub fn mismatches(compiled: &CompiledCluster, e: &Expectation, verdict: &Verdict) -> Vec<String> {
    let mut out = Vec::new();
    let mut check_ref =
        |label: &str, expected: &Option<String>, direction: Direction, staged: bool| {
            let Some(expected) = expected else { return };
            match decided(compiled, verdict, direction, staged) {
                Some(r) if r.answers_to(expected) => {}
                Some(r) => out.push(format!("{label}: expected {expected}, decided by {r}")),
                None => out.push(format!(
                    "{label}: expected {expected}, but that end is not a pod (no policy)"
                )),
            }
        };
    check_ref("ingress", &e.ingress, Direction::Ingress, false);
    check_ref("egress", &e.egress, Direction::Egress, false);
    if let Some(p) = &e.pending {
        check_ref("pending ingress", &p.ingress, Direction::Ingress, true);
        check_ref("pending egress", &p.egress, Direction::Egress, true);
    }
    if e.allowed != verdict.allowed {
        out.insert(
            0,
            format!("allowed: expected {}, got {}", e.allowed, verdict.allowed),
        );
    }
    if let Some(p) = &e.pending {
        if let Some(a) = p.allowed {
            if a != verdict.pending.allowed {
                out.push(format!(
                    "pending allowed: expected {a}, got {}",
                    verdict.pending.allowed
                ));
            }
        }
    }
    if let Some(l) = &e.logged {
        let actual = actual(compiled, verdict).logged;
        for (label, expected, got) in [
            ("logged ingress", &l.ingress, &actual.ingress),
            ("logged egress", &l.egress, &actual.egress),
        ] {
            if let Some(expected) = expected {
                if expected != got {
                    out.push(format!("{label}: expected {expected:?}, got {got:?}"));
                }
            }
        }
    }
    out
}

/// Runs every expectation of a scenario file.
pub fn run(file: &str, text: &str) -> Result<Vec<ExpectationResult>, ScenarioError> {
    run_with(file, text, None)
}

/// As [`run`], with `base` for expectation-only scenarios (see [`load_with`]).
pub fn run_with(
    file: &str,
    text: &str,
    base: Option<&Manifests>,
) -> Result<Vec<ExpectationResult>, ScenarioError> {
    let (scenario, steps) = load_with(file, text, base)?;
    let stepped = steps.len() > 1 || steps.first().is_some_and(|s| s.name.is_some());
    let mut results = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        for (j, (raw, e)) in step.expect.iter().enumerate() {
            let verdict = evaluate(&step.compiled, e).map_err(|m| ScenarioError {
                file: file.to_owned(),
                message: format!("step {i}: expect[{j}]: {m}"),
            })?;
            let mismatches = mismatches(&step.compiled, e, &verdict);
            results.push(ExpectationResult {
                file: file.to_owned(),
                scenario: scenario.clone(),
                step: stepped.then_some(i),
                step_name: step.name.clone(),
                index: j,
                pass: mismatches.is_empty(),
                expected: raw.clone(),
                actual: actual(&step.compiled, &verdict),
                mismatches,
            });
        }
    }
    Ok(results)
}
