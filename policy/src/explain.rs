//! `palisade explain`: every tier, policy and rule the evaluator considered, in order,
//! and the one that decided. Built from the evaluator's own [`Trace`], so it cannot
//! drift from what is enforced.

use std::fmt::Write as _;

use serde::Serialize;

use crate::compile::{CompiledCluster, PolicyId, TierId};
use crate::evaluate::{Flow, TierOutcome, Trace};
use crate::policy::{Direction, EntityMatch, PathMatch, Rule};
use crate::verdict::{Decision, Verdict};

#[derive(Serialize, Debug)]
pub struct Explanation {
    pub allowed: bool,
    /// Egress at the source; absent when the source is not a pod.
    pub egress: Option<DirectionExplanation>,
    /// Ingress at the destination; absent when the destination is not a pod.
    pub ingress: Option<DirectionExplanation>,
    pub pending: PendingExplanation,
}

#[derive(Serialize, Debug)]
pub struct PendingExplanation {
    pub allowed: bool,
    pub egress: Option<String>,
    pub ingress: Option<String>,
}

#[derive(Serialize, Debug)]
pub struct DirectionExplanation {
    pub direction: String,
    /// `namespace/pod` where this direction was decided.
    pub endpoint: String,
    pub allowed: bool,
    /// The reference of what decided: `gnp/allow-dns:0`, `end-of-tier/default`, ...
    pub decided_by: String,
    /// The same in a sentence.
    pub reason: String,
    pub tiers: Vec<TierStep>,
    pub logged: Vec<String>,
}

#[derive(Serialize, Debug)]
pub struct TierStep {
    pub tier: String,
    pub policies: Vec<PolicyStep>,
    /// `decided`, `pass`, `default-pass` or `end-of-tier-deny`.
    pub outcome: String,
}

#[derive(Serialize, Debug)]
pub struct PolicyStep {
    pub policy: String,
    pub order: Option<f64>,
    pub rules: Vec<RuleStep>,
}

#[derive(Serialize, Debug)]
pub struct RuleStep {
    /// Index as written in the policy.
    pub index: usize,
    pub action: String,
    pub matched: bool,
    pub rule: String,
    /// An `http` clause where Calico does not accept one (Palisade extension).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub http_extension: bool,
}

struct Collector<'c> {
    cluster: &'c CompiledCluster,
    direction: Direction,
    egress: Vec<TierStep>,
    ingress: Vec<TierStep>,
}

impl Collector<'_> {
    fn tiers(&mut self) -> &mut Vec<TierStep> {
        match self.direction {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }
}

impl Trace for Collector<'_> {
    fn tier(&mut self, direction: Direction, tier: TierId) {
        self.direction = direction;
        let name = self
            .cluster
            .tier(tier)
            .map_or_else(String::new, |t| t.name.clone());
        self.tiers().push(TierStep {
            tier: name,
            policies: Vec::new(),
            outcome: "decided".into(),
        });
    }

    fn policy(&mut self, policy: PolicyId) {
        let Some(p) = self.cluster.policy(policy) else {
            return;
        };
        let step = PolicyStep {
            policy: p.policy.id.to_string(),
            order: p.policy.order,
            rules: Vec::new(),
        };
        if let Some(t) = self.tiers().last_mut() {
            t.policies.push(step);
        }
    }

    fn rule(&mut self, policy: PolicyId, rule: u32, matched: bool) {
        let direction = self.direction;
        let Some(r) = self
            .cluster
            .policy(policy)
            .and_then(|p| p.rules(direction).get(rule as usize))
        else {
            return;
        };
        let step = RuleStep {
            index: r.rule.index,
            action: r.rule.action.to_string(),
            matched,
            rule: describe_rule(&r.rule),
            http_extension: r.rule.http_is_extension(direction),
        };
        if let Some(p) = self.tiers().last_mut().and_then(|t| t.policies.last_mut()) {
            p.rules.push(step);
        }
    }

    fn tier_end(&mut self, _tier: TierId, outcome: TierOutcome) {
        let outcome = match outcome {
            TierOutcome::Passed => "pass",
            TierOutcome::DefaultPass => "default-pass",
            TierOutcome::EndOfTierDeny => "end-of-tier-deny",
        };
        if let Some(t) = self.tiers().last_mut() {
            t.outcome = outcome.into();
        }
    }
}

impl CompiledCluster {
    /// Evaluates `flow` and explains every step.
    pub fn explain(&self, flow: &Flow<'_>) -> (Verdict, Explanation) {
        let mut collector = Collector {
            cluster: self,
            direction: Direction::Egress,
            egress: Vec::new(),
            ingress: Vec::new(),
        };
        let verdict = self.evaluate_traced(flow, &mut collector);
        let Collector {
            egress, ingress, ..
        } = collector;
        let direction = |d: Direction, tiers: Vec<TierStep>| {
            let v = match d {
                Direction::Egress => verdict.egress.as_ref(),
                Direction::Ingress => verdict.ingress.as_ref(),
            }?;
            let endpoint = self
                .workload(v.workload)
                .map_or_else(String::new, |w| w.pod.key().to_string());
            let reference = self.reference(v.workload, d, v.decision, false);
            Some(DirectionExplanation {
                direction: d.to_string(),
                endpoint,
                allowed: v.decision.allows(),
                decided_by: reference.to_string(),
                reason: self.reason(d, v.decision),
                tiers,
                logged: self.logged_references(d, &v.logged),
            })
        };
        let pending_ref = |d: Direction, decision: Option<Decision>| {
            let w = match d {
                Direction::Egress => flow.source.workload,
                Direction::Ingress => flow.destination.workload,
            }?;
            Some(self.reference(w, d, decision?, true).to_string())
        };
        let explanation = Explanation {
            allowed: verdict.allowed,
            egress: direction(Direction::Egress, egress),
            ingress: direction(Direction::Ingress, ingress),
            pending: PendingExplanation {
                allowed: verdict.pending.allowed,
                egress: pending_ref(Direction::Egress, verdict.pending.egress),
                ingress: pending_ref(Direction::Ingress, verdict.pending.ingress),
            },
        };
        (verdict, explanation)
    }

    /// One sentence on why a direction was decided the way it was.
    pub fn reason(&self, direction: Direction, decision: Decision) -> String {
        match decision {
            Decision::NoPolicy => {
                format!("no policy applies to this pod for {direction}: allowed by default")
            }
            Decision::PassToProfile => {
                "every tier that applied passed: the namespace profile allows".into()
            }
            Decision::Rule {
                policy,
                rule,
                action,
            } => {
                let tier = self.policy(policy).map_or("", |p| p.policy.tier.as_str());
                format!(
                    "{action} by rule {} in tier {tier}",
                    self.rule_reference(policy, direction, rule)
                )
            }
            Decision::EndOfTier { tier } => {
                let name = self.tier(tier).map_or("", |t| t.name.as_str());
                format!("policies of tier {name} apply to this pod and none matched: the tier's implicit deny")
            }
        }
    }
}

/// A selector for people: the namespace and service-account labels that Calico
/// stores under `pcns.` / `pcsa.` are shown as `ns:` / `sa:`.
pub fn human_selector(s: &crate::selector::Selector) -> String {
    s.to_string()
        .replace(crate::model::NAMESPACE_PREFIX, "ns:")
        .replace(crate::model::SERVICE_ACCOUNT_PREFIX, "sa:")
}

fn describe_side(m: &EntityMatch) -> String {
    let mut parts = Vec::new();
    if let Some(s) = &m.selector {
        parts.push(format!("pods matching {}", human_selector(s)));
    }
    if let Some(s) = &m.not_selector {
        parts.push(format!("not pods matching {}", human_selector(s)));
    }
    let list = |v: &[String]| v.join(", ");
    if !m.nets.is_empty() {
        parts.push(format!(
            "nets {}",
            list(&m.nets.iter().map(ToString::to_string).collect::<Vec<_>>())
        ));
    }
    if !m.not_nets.is_empty() {
        parts.push(format!(
            "not nets {}",
            list(
                &m.not_nets
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            )
        ));
    }
    if !m.ports.is_empty() {
        parts.push(format!(
            "ports {}",
            list(&m.ports.iter().map(ToString::to_string).collect::<Vec<_>>())
        ));
    }
    if !m.not_ports.is_empty() {
        parts.push(format!(
            "not ports {}",
            list(
                &m.not_ports
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
            )
        ));
    }
    parts.join(", ")
}

/// A rule in one line: `Allow TCP from pods matching app == 'x' to ports 80`.
pub fn describe_rule(rule: &Rule) -> String {
    let mut s = rule.action.to_string();
    if let Some(p) = rule.protocol {
        let _ = write!(s, " {p}");
    }
    if let Some(p) = rule.not_protocol {
        let _ = write!(s, " not {p}");
    }
    if let Some(v) = rule.ip_version {
        let _ = write!(s, " IPv{v}");
    }
    for (label, icmp) in [("icmp", rule.icmp), ("not icmp", rule.not_icmp)] {
        if let Some(i) = icmp {
            let _ = write!(s, " {label} type {}", i.kind);
            if let Some(c) = i.code {
                let _ = write!(s, " code {c}");
            }
        }
    }
    let from = describe_side(&rule.source);
    let to = describe_side(&rule.destination);
    if !from.is_empty() {
        let _ = write!(s, " from {from}");
    }
    if !to.is_empty() {
        let _ = write!(s, " to {to}");
    }
    if from.is_empty() && to.is_empty() && rule.protocol.is_none() {
        s.push_str(" everything");
    }
    if let Some(h) = &rule.http {
        let methods = if h.methods.is_empty() {
            "any method".into()
        } else {
            h.methods.join("|")
        };
        let paths: Vec<String> = h
            .paths
            .iter()
            .map(|p| match p {
                PathMatch::Exact(e) => format!("exact {e}"),
                PathMatch::Prefix(p) => format!("prefix {p}"),
            })
            .collect();
        let paths = if paths.is_empty() {
            "any path".into()
        } else {
            paths.join(" | ")
        };
        let _ = write!(s, " http {methods} {paths}");
    }
    s
}
