//! One normalized model for every policy kind. Kubernetes NetworkPolicy is converted
//! into it the way Calico converts it (libcalico-go `K8sNetworkPolicyToCalico`), so
//! the compiler and the evaluator know a single language.

use std::fmt;
use std::str::FromStr;

use ipnet::IpNet;

use crate::selector::Selector;

/// The tier every Kubernetes NetworkPolicy, and every Calico policy without
/// `spec.tier`, belongs to.
pub const DEFAULT_TIER: &str = "default";

/// An IP protocol number, with Calico's names for the common ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const ICMP: Protocol = Protocol(1);
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const ICMPV6: Protocol = Protocol(58);
    pub const SCTP: Protocol = Protocol(132);
    pub const UDPLITE: Protocol = Protocol(136);

    /// Numeric ports (and ranges) are only meaningful for these (Calico validator).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::TCP | Protocol::UDP | Protocol::SCTP)
    }

    pub fn is_icmp(self) -> bool {
        matches!(self, Protocol::ICMP | Protocol::ICMPV6)
    }
}

impl FromStr for Protocol {
    type Err = String;

    /// Calico's names (case-insensitive, as `numorstring.Protocol` accepts) or 1-255.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_uppercase().as_str() {
            "TCP" => Protocol::TCP,
            "UDP" => Protocol::UDP,
            "ICMP" => Protocol::ICMP,
            "ICMPV6" => Protocol::ICMPV6,
            "SCTP" => Protocol::SCTP,
            "UDPLITE" => Protocol::UDPLITE,
            _ => match s.parse::<u8>() {
                Ok(n) if n > 0 => Protocol(n),
                _ => return Err(format!("unknown protocol {s:?} (expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or 1-255)")),
            },
        })
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::TCP => f.write_str("TCP"),
            Protocol::UDP => f.write_str("UDP"),
            Protocol::ICMP => f.write_str("ICMP"),
            Protocol::ICMPV6 => f.write_str("ICMPv6"),
            Protocol::SCTP => f.write_str("SCTP"),
            Protocol::UDPLITE => f.write_str("UDPLite"),
            Protocol(n) => write!(f, "{n}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Ingress,
    Egress,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Ingress => "ingress",
            Direction::Egress => "egress",
        })
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Action {
    Allow,
    Deny,
    /// Record and go on with the next rule.
    Log,
    /// Skip the rest of this tier, go to the next one.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// Which API object a policy came from; decides how references are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PolicyKind {
    /// networking.k8s.io/v1 NetworkPolicy: `knp/<ns>/<name>`.
    Kubernetes,
    /// Calico NetworkPolicy: `cnp/<ns>/<name>`.
    Calico,
    /// Calico GlobalNetworkPolicy: `gnp/<name>`.
    Global,
    StagedCalico,
    StagedGlobal,
    StagedKubernetes,
}

impl PolicyKind {
    /// Staged policies are evaluated for the pending verdict only, never enforced.
    pub fn is_staged(self) -> bool {
        matches!(
            self,
            PolicyKind::StagedCalico | PolicyKind::StagedGlobal | PolicyKind::StagedKubernetes
        )
    }

    pub fn prefix(self) -> &'static str {
        match self {
            PolicyKind::Kubernetes => "knp",
            PolicyKind::Calico => "cnp",
            PolicyKind::Global => "gnp",
            PolicyKind::StagedCalico => "snp",
            PolicyKind::StagedGlobal => "sgnp",
            PolicyKind::StagedKubernetes => "sknp",
        }
    }

    /// The API kind, for messages.
    pub fn api_kind(self) -> &'static str {
        match self {
            PolicyKind::Kubernetes => "NetworkPolicy (networking.k8s.io)",
            PolicyKind::Calico => "NetworkPolicy",
            PolicyKind::Global => "GlobalNetworkPolicy",
            PolicyKind::StagedCalico => "StagedNetworkPolicy",
            PolicyKind::StagedGlobal => "StagedGlobalNetworkPolicy",
            PolicyKind::StagedKubernetes => "StagedKubernetesNetworkPolicy",
        }
    }
}

/// Names a policy: `knp/<ns>/<name>`, `gnp/<name>`, ...
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    /// `None` for global kinds.
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{}/{}/{}", self.kind.prefix(), ns, self.name),
            None => write!(f, "{}/{}", self.kind.prefix(), self.name),
        }
    }
}

/// A port criterion: a number or inclusive range, or a named container port.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PortMatch {
    Range { first: u16, last: u16 },
    Named(String),
}

impl fmt::Display for PortMatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortMatch::Range { first, last } if first == last => write!(f, "{first}"),
            PortMatch::Range { first, last } => write!(f, "{first}:{last}"),
            PortMatch::Named(name) => f.write_str(name),
        }
    }
}

/// ICMP type and optional code; no code matches every code of the type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub kind: u8,
    pub code: Option<u8>,
}

impl IcmpMatch {
    pub fn matches(&self, kind: u8, code: u8) -> bool {
        self.kind == kind && self.code.is_none_or(|c| c == code)
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PathMatch {
    Exact(String),
    Prefix(String),
}

/// Calico's `HTTPMatch`: methods OR'ed, paths OR'ed, the two AND'ed; absent = any.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct HttpMatch {
    pub methods: Vec<String>,
    pub paths: Vec<PathMatch>,
}

/// One side (source or destination) of a rule, with every endpoint criterion already
/// folded into one positive and one negative selector (libcalico-go
/// updateprocessors/rules.go `getEndpointSelector`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntityMatch {
    /// The address must be a pod matching this (namespace scoping included).
    pub selector: Option<Selector>,
    /// The address must not be a pod matching this.
    pub not_selector: Option<Selector>,
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    pub ports: Vec<PortMatch>,
    pub not_ports: Vec<PortMatch>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Index of the rule as written in its direction's list. A Kubernetes rule with
    /// several peers or ports becomes several rules with the same index.
    pub index: usize,
    pub action: Action,
    pub protocol: Option<Protocol>,
    pub not_protocol: Option<Protocol>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    pub ip_version: Option<u8>,
    pub source: EntityMatch,
    pub destination: EntityMatch,
    pub http: Option<HttpMatch>,
}

impl Rule {
    pub fn new(index: usize, action: Action) -> Self {
        Rule {
            index,
            action,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            ip_version: None,
            source: EntityMatch::default(),
            destination: EntityMatch::default(),
            http: None,
        }
    }

    /// Calico accepts `http` only on ingress Allow rules; Palisade also on Deny and
    /// egress rules. `explain` marks those as an extension.
    pub fn http_is_extension(&self, direction: Direction) -> bool {
        self.http.is_some() && (direction == Direction::Egress || self.action != Action::Allow)
    }
}

/// A policy of any kind, normalized.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub id: PolicyRef,
    pub tier: String,
    /// `None` sorts after every ordered policy of the tier.
    pub order: Option<f64>,
    /// Which endpoints it applies to, namespace scoping and service-account selector
    /// included.
    pub selector: Selector,
    pub ingress_applies: bool,
    pub egress_applies: bool,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl Policy {
    pub fn applies(&self, direction: Direction) -> bool {
        match direction {
            Direction::Ingress => self.ingress_applies,
            Direction::Egress => self.egress_applies,
        }
    }

    pub fn rules(&self, direction: Direction) -> &[Rule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What a tier does with traffic that its applicable policies did not decide.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TierDefault {
    Deny,
    Pass,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Tier {
    pub name: String,
    /// `None` sorts after every ordered tier.
    pub order: Option<f64>,
    pub default_action: TierDefault,
}

impl Tier {
    /// The tiers Calico always has (api/pkg/apis/projectcalico/v3/tier.go).
    pub fn builtin() -> Vec<Tier> {
        vec![
            Tier {
                name: "kube-admin".into(),
                order: Some(1_000.0),
                default_action: TierDefault::Pass,
            },
            Tier {
                name: DEFAULT_TIER.into(),
                order: Some(1_000_000.0),
                default_action: TierDefault::Deny,
            },
            Tier {
                name: "kube-baseline".into(),
                order: Some(10_000_000.0),
                default_action: TierDefault::Pass,
            },
        ]
    }
}

/// Ascending order, unordered last, ties by name (felix/calc/policy_sorter.go).
pub fn order_key(order: Option<f64>) -> f64 {
    order.unwrap_or(f64::INFINITY)
}
