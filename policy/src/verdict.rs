//! What the evaluator answers: allowed or not, and for each direction what decided.
//! A denial is a [`Verdict`] with its reason, never an error.
//!
//! Verdicts hold ids, not names, so evaluating allocates nothing; [`CompiledCluster`]
//! turns them into references such as `gnp/allow-dns:0` for logs and the CLI.

use std::fmt;

use crate::compile::{CompiledCluster, PolicyId, TierId, WorkloadId};
use crate::policy::{Action, Direction, DEFAULT_TIER};

/// What decided one direction at one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    /// No enforced policy applies to the endpoint in this direction: allowed
    /// ("If no network policies apply to a pod, then all traffic to/from that pod is
    /// allowed"; Calico profile `kns.<ns>`).
    NoPolicy,
    /// An Allow or Deny rule matched. `rule` indexes the compiled rules of that
    /// direction; [`CompiledCluster::rule_index`] gives the index as written.
    Rule {
        policy: PolicyId,
        rule: u32,
        action: Action,
    },
    /// Policies of the tier applied and none decided: the tier's implicit deny.
    EndOfTier { tier: TierId },
    /// Policies applied but every tier passed the traffic on: the profile allowed.
    PassToProfile,
}

impl Decision {
    pub fn allows(self) -> bool {
        match self {
            Decision::NoPolicy | Decision::PassToProfile => true,
            Decision::Rule { action, .. } => action == Action::Allow,
            Decision::EndOfTier { .. } => false,
        }
    }
}

/// A `Log` rule that matched before the decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoggedRule {
    pub policy: PolicyId,
    pub rule: u32,
}

/// One direction at one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirectionVerdict {
    pub workload: WorkloadId,
    pub decision: Decision,
    /// Log rules hit, in evaluation order.
    pub logged: Vec<LoggedRule>,
}

/// The verdict if every staged policy were enforced (Calico's `policies.pending`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PendingVerdict {
    pub allowed: bool,
    pub egress: Option<Decision>,
    pub ingress: Option<Decision>,
}

/// The answer for one connection (or one HTTP request).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Egress allowed at the source AND ingress allowed at the destination.
    pub allowed: bool,
    /// `None` when the source is not a pod: an outside address has no policy.
    pub egress: Option<DirectionVerdict>,
    /// `None` when the destination is not a pod.
    pub ingress: Option<DirectionVerdict>,
    pub pending: PendingVerdict,
}

impl Verdict {
    pub fn decision(&self, direction: Direction) -> Option<Decision> {
        match direction {
            Direction::Ingress => self.ingress.as_ref().map(|d| d.decision),
            Direction::Egress => self.egress.as_ref().map(|d| d.decision),
        }
    }
}

/// A reference to what decided, as the conformance format and flow logs write it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference {
    /// `knp/<ns>/<name>:<i>`, `gnp/<name>:<i>`, ...
    Rule(String),
    /// `end-of-tier/<tier>`, with the policies of that tier that applied.
    EndOfTier {
        tier: String,
        applied: Vec<String>,
    },
    DefaultAllow,
    PassToProfile,
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Rule(r) => f.write_str(r),
            Reference::EndOfTier { tier, applied } => {
                // Kubernetes phrasing: a default tier holding only one Kubernetes policy
                // for this pod ends as "isolated by knp/<ns>/<name>".
                match applied.as_slice() {
                    [only] if tier == DEFAULT_TIER && only.starts_with("knp/") => f.write_str(only),
                    _ => write!(f, "end-of-tier/{tier}"),
                }
            }
            Reference::DefaultAllow => f.write_str("default-allow"),
            Reference::PassToProfile => f.write_str("pass-to-profile"),
        }
    }
}

impl Reference {
    /// Does this reference answer to `expected`? `end-of-tier/default` and the bare
    /// `knp/<ns>/<name>` of a Kubernetes policy that applied in that tier are two names
    /// for the same verdict.
    pub fn answers_to(&self, expected: &str) -> bool {
        match self {
            Reference::EndOfTier { tier, applied } => {
                expected == format!("end-of-tier/{tier}")
                    || (tier == DEFAULT_TIER
                        && expected.starts_with("knp/")
                        && applied.iter().any(|a| a == expected))
            }
            other => other.to_string() == expected,
        }
    }
}

impl CompiledCluster {
    /// The rule's index as written in its policy (a Kubernetes rule with several
    /// peers or ports compiles to several rules sharing one index).
    pub fn rule_index(&self, policy: PolicyId, direction: Direction, rule: u32) -> Option<usize> {
        self.policy(policy)?
            .rules(direction)
            .get(rule as usize)
            .map(|r| r.rule.index)
    }

    /// `knp/x/allow-web:0`.
    pub fn rule_reference(&self, policy: PolicyId, direction: Direction, rule: u32) -> String {
        match (
            self.policy(policy),
            self.rule_index(policy, direction, rule),
        ) {
            (Some(p), Some(i)) => format!("{}:{i}", p.policy.id),
            _ => "unknown".into(),
        }
    }

    /// The reference for a decision at `workload` in `direction`.
    pub fn reference(
        &self,
        workload: WorkloadId,
        direction: Direction,
        decision: Decision,
        staged: bool,
    ) -> Reference {
        match decision {
            Decision::NoPolicy => Reference::DefaultAllow,
            Decision::PassToProfile => Reference::PassToProfile,
            Decision::Rule { policy, rule, .. } => {
                Reference::Rule(self.rule_reference(policy, direction, rule))
            }
            Decision::EndOfTier { tier } => {
                let applied = self
                    .workload(workload)
                    .map(|w| w.policy.get(direction))
                    .unwrap_or_default()
                    .iter()
                    .filter(|t| t.tier == tier)
                    .flat_map(|t| &t.policies)
                    .filter_map(|id| self.policy(*id))
                    .filter(|p| staged || !p.is_staged())
                    .map(|p| p.policy.id.to_string())
                    .collect();
                let name = self
                    .tier(tier)
                    .map_or_else(|| "unknown".into(), |t| t.name.clone());
                Reference::EndOfTier {
                    tier: name,
                    applied,
                }
            }
        }
    }

    pub fn logged_references(&self, direction: Direction, logged: &[LoggedRule]) -> Vec<String> {
        logged
            .iter()
            .map(|l| self.rule_reference(l.policy, direction, l.rule))
            .collect()
    }
}
