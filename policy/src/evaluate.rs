//! The one evaluator. Pure: plain data in, a [`Verdict`] out, no I/O, no allocation
//! unless a `Log` rule matches. The proxies, `palisade explain`, `matrix` and `test` all
//! call this, so what the CLI says is what is enforced.

use std::net::IpAddr;

use crate::compile::{
    CompiledCluster, CompiledPolicy, CompiledRule, PolicyId, SideGroups, TierId, WorkloadId,
};
use crate::http::HttpRequest;
use crate::policy::{Action, Direction, EntityMatch, PortMatch, Protocol, TierDefault};
use crate::verdict::{Decision, DirectionVerdict, LoggedRule, PendingVerdict, Verdict};

/// One end of a flow: an address and, when a pod owns it, that pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub ip: IpAddr,
    pub workload: Option<WorkloadId>,
}

/// What is being decided: a connection, an ICMP packet, or one HTTP request.
#[derive(Clone, Copy, Debug)]
pub struct Flow<'a> {
    pub source: Endpoint,
    pub destination: Endpoint,
    pub protocol: Protocol,
    /// Destination port; `None` for protocols without ports.
    pub port: Option<u16>,
    /// ICMP (type, code).
    pub icmp: Option<(u8, u8)>,
    /// With a request, `http` clauses are active; without, a rule's `http` clause is
    /// ignored, as Felix's L4 dataplane ignores it.
    pub http: Option<HttpRequest<'a>>,
}

/// Receives every step of an evaluation. [`NoTrace`] compiles to nothing; `explain`
/// collects the steps.
pub trait Trace {
    fn tier(&mut self, _direction: Direction, _tier: TierId) {}
    fn policy(&mut self, _policy: PolicyId) {}
    fn rule(&mut self, _policy: PolicyId, _rule: u32, _matched: bool) {}
    fn tier_end(&mut self, _tier: TierId, _outcome: TierOutcome) {}
}

/// How a tier ended when no rule decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierOutcome {
    /// A Pass rule sent the traffic to the next tier.
    Passed,
    /// Nothing matched and the tier's defaultAction is Pass.
    DefaultPass,
    /// Nothing matched: the tier's implicit deny.
    EndOfTierDeny,
}

#[derive(Debug)]
pub struct NoTrace;
impl Trace for NoTrace {}

/// Which policies take part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    /// What is enforced: staged policies are ignored.
    Enforced,
    /// The pending verdict: staged policies as if enforced.
    Pending,
}

impl CompiledCluster {
    /// An endpoint for an address, resolving the pod that owns it.
    pub fn endpoint(&self, ip: IpAddr) -> Endpoint {
        Endpoint {
            ip,
            workload: self.workload_by_ip(ip),
        }
    }

    /// Decides a flow: egress at the source pod, ingress at the destination pod.
    pub fn evaluate(&self, flow: &Flow<'_>) -> Verdict {
        self.evaluate_traced(flow, &mut NoTrace)
    }

    /// Whether an HTTP clause takes part in `direction`'s verdict for this connection
    /// (`flow.http` is ignored): some rule reached by the L4 walk matched on its other
    /// criteria and carries `http`. If none does, a request cannot change the walk (an
    /// `http` clause only narrows a rule), so every request on the connection gets the
    /// connection's verdict and the proxy need not parse HTTP. If one does, the
    /// connection's L4 verdict means nothing (Felix ignores `http`) and each request
    /// must be decided on its own.
    pub fn depends_on_http(&self, flow: &Flow<'_>, direction: Direction) -> bool {
        struct HttpRuleReached<'c> {
            cluster: &'c CompiledCluster,
            direction: Direction,
            reached: bool,
        }
        impl Trace for HttpRuleReached<'_> {
            fn rule(&mut self, policy: PolicyId, rule: u32, matched: bool) {
                let has_http = || {
                    self.cluster.policy(policy).is_some_and(|p| {
                        p.rules(self.direction)
                            .get(rule as usize)
                            .is_some_and(|r| r.rule.http.is_some())
                    })
                };
                self.reached |= matched && has_http();
            }
        }
        let workload = match direction {
            Direction::Egress => flow.source.workload,
            Direction::Ingress => flow.destination.workload,
        };
        let Some(w) = workload else {
            return false;
        };
        let l4 = Flow {
            http: None,
            ..*flow
        };
        let mut trace = HttpRuleReached {
            cluster: self,
            direction,
            reached: false,
        };
        self.decide(
            w,
            direction,
            &l4,
            Mode::Enforced,
            &mut Vec::new(),
            &mut trace,
        );
        trace.reached
    }

    /// [`evaluate`](Self::evaluate), reporting every step to `trace`.
    pub fn evaluate_traced(&self, flow: &Flow<'_>, trace: &mut impl Trace) -> Verdict {
        let egress = flow
            .source
            .workload
            .map(|w| self.direction(w, Direction::Egress, flow, trace));
        let ingress = flow
            .destination
            .workload
            .map(|w| self.direction(w, Direction::Ingress, flow, trace));
        let allowed = egress.as_ref().is_none_or(|v| v.decision.allows())
            && ingress.as_ref().is_none_or(|v| v.decision.allows());
        let pending_egress = flow
            .source
            .workload
            .map(|w| self.pending(w, Direction::Egress, flow, &egress));
        let pending_ingress = flow
            .destination
            .workload
            .map(|w| self.pending(w, Direction::Ingress, flow, &ingress));
        let pending = PendingVerdict {
            allowed: pending_egress.is_none_or(Decision::allows)
                && pending_ingress.is_none_or(Decision::allows),
            egress: pending_egress,
            ingress: pending_ingress,
        };
        Verdict {
            allowed,
            egress,
            ingress,
            pending,
        }
    }

    fn direction(
        &self,
        w: WorkloadId,
        direction: Direction,
        flow: &Flow<'_>,
        trace: &mut impl Trace,
    ) -> DirectionVerdict {
        let mut logged = Vec::new();
        let decision = self.decide(w, direction, flow, Mode::Enforced, &mut logged, trace);
        DirectionVerdict {
            workload: w,
            decision,
            logged,
        }
    }

    fn pending(
        &self,
        w: WorkloadId,
        direction: Direction,
        flow: &Flow<'_>,
        enforced: &Option<DirectionVerdict>,
    ) -> Decision {
        let has_staged = self.workload(w).is_some_and(|wl| {
            wl.policy
                .get(direction)
                .iter()
                .flat_map(|t| &t.policies)
                .any(|p| self.policy(*p).is_some_and(CompiledPolicy::is_staged))
        });
        match enforced {
            Some(v) if !has_staged => v.decision,
            _ => self.decide(
                w,
                direction,
                flow,
                Mode::Pending,
                &mut Vec::new(),
                &mut NoTrace,
            ),
        }
    }

    /// Calico's tiered evaluation of one direction at one endpoint
    /// (docs "How policy is evaluated"; felix/rules/endpoints.go).
    fn decide(
        &self,
        w: WorkloadId,
        direction: Direction,
        flow: &Flow<'_>,
        mode: Mode,
        logged: &mut Vec<LoggedRule>,
        trace: &mut impl Trace,
    ) -> Decision {
        let Some(workload) = self.workload(w) else {
            return Decision::NoPolicy;
        };
        let mut any_tier_applied = false;
        for tier_policies in workload.policy.get(direction) {
            let tier = tier_policies.tier;
            let mut tier_applied = false;
            let mut passed = false;
            'policies: for &pid in &tier_policies.policies {
                let Some(policy) = self.policy(pid) else {
                    continue;
                };
                // Staged policies are never enforced; a tier whose only applicable
                // policies are staged is skipped entirely (app-policy EnforcedOnly).
                if mode == Mode::Enforced && policy.is_staged() {
                    continue;
                }
                if !tier_applied {
                    trace.tier(direction, tier);
                }
                tier_applied = true;
                trace.policy(pid);
                for (i, rule) in policy.rules(direction).iter().enumerate() {
                    let matched = self.rule_matches(rule, flow);
                    trace.rule(pid, i as u32, matched);
                    if !matched {
                        continue;
                    }
                    match rule.rule.action {
                        // "After a Log action, processing continues with the next rule."
                        Action::Log => logged.push(LoggedRule {
                            policy: pid,
                            rule: i as u32,
                        }),
                        // "Allow and Deny are immediate and final."
                        action @ (Action::Allow | Action::Deny) => {
                            return Decision::Rule {
                                policy: pid,
                                rule: i as u32,
                                action,
                            }
                        }
                        // Pass skips the rest of the tier and its end-of-tier deny.
                        Action::Pass => {
                            passed = true;
                            break 'policies;
                        }
                    }
                }
            }
            // "If no policies within a tier apply to endpoints, the tier is skipped."
            if !tier_applied {
                continue;
            }
            any_tier_applied = true;
            if passed {
                trace.tier_end(tier, TierOutcome::Passed);
                continue;
            }
            if self
                .tier(tier)
                .is_some_and(|t| t.default_action == TierDefault::Pass)
            {
                trace.tier_end(tier, TierOutcome::DefaultPass);
                continue;
            }
            trace.tier_end(tier, TierOutcome::EndOfTierDeny);
            return Decision::EndOfTier { tier };
        }
        // Every applicable tier passed: "that endpoint's Profiles are evaluated", and a
        // pod's namespace profile allows.
        if any_tier_applied {
            Decision::PassToProfile
        } else {
            Decision::NoPolicy
        }
    }

    /// All present criteria must hold (Calico rule reference).
    fn rule_matches(&self, compiled: &CompiledRule, flow: &Flow<'_>) -> bool {
        let rule = &compiled.rule;
        if rule.protocol.is_some_and(|p| p != flow.protocol)
            || rule.not_protocol == Some(flow.protocol)
        {
            return false;
        }
        // ipVersion: the rule never matches the other family.
        if let Some(v) = rule.ip_version {
            if v != family(flow.destination.ip) {
                return false;
            }
        }
        if let Some(icmp) = rule.icmp {
            if !flow.icmp.is_some_and(|(t, c)| icmp.matches(t, c)) {
                return false;
            }
        }
        if let Some(icmp) = rule.not_icmp {
            if flow.icmp.is_some_and(|(t, c)| icmp.matches(t, c)) {
                return false;
            }
        }
        // Source ports are not known to the policy (ephemeral); a rule that
        // restricts them never matches.
        if !self.side_matches(
            &rule.source,
            compiled.source,
            &flow.source,
            None,
            flow.protocol,
        ) {
            return false;
        }
        if !self.side_matches(
            &rule.destination,
            compiled.destination,
            &flow.destination,
            flow.port,
            flow.protocol,
        ) {
            return false;
        }
        match (&rule.http, &flow.http) {
            (Some(m), Some(request)) => request.matches(m),
            _ => true,
        }
    }

    fn side_matches(
        &self,
        m: &EntityMatch,
        groups: SideGroups,
        endpoint: &Endpoint,
        port: Option<u16>,
        protocol: Protocol,
    ) -> bool {
        if let Some(g) = groups.selector {
            // A selector matches pods only, never an outside address.
            if !endpoint
                .workload
                .is_some_and(|w| self.groups().contains(g, w))
            {
                return false;
            }
        }
        if let Some(g) = groups.not_selector {
            if endpoint
                .workload
                .is_some_and(|w| self.groups().contains(g, w))
            {
                return false;
            }
        }
        if !m.nets.is_empty() && !m.nets.iter().any(|n| n.contains(&endpoint.ip)) {
            return false;
        }
        if !m.not_nets.is_empty() {
            // A rule whose notNets are all of the other family is dropped for this
            // family (felix/rules/policy.go FilterRuleToIPVersion).
            let fam = family(endpoint.ip);
            if m.not_nets.iter().all(|n| net_family(n) != fam) {
                return false;
            }
            if m.not_nets.iter().any(|n| n.contains(&endpoint.ip)) {
                return false;
            }
        }
        if !m.ports.is_empty()
            && !m
                .ports
                .iter()
                .any(|p| self.port_matches(p, groups, endpoint, port, protocol))
        {
            return false;
        }
        if m.not_ports
            .iter()
            .any(|p| self.port_matches(p, groups, endpoint, port, protocol))
        {
            return false;
        }
        true
    }

    /// A named port matches when the address belongs to a pod that declares a port of
    /// that name with this number and protocol, and (if the side has a selector) that
    /// pod matches it (felix/calc/rule_scanner.go, labelindex named ports).
    fn port_matches(
        &self,
        p: &PortMatch,
        groups: SideGroups,
        endpoint: &Endpoint,
        port: Option<u16>,
        protocol: Protocol,
    ) -> bool {
        let Some(port) = port else { return false };
        match p {
            PortMatch::Range { first, last } => (*first..=*last).contains(&port),
            PortMatch::Named(name) => {
                let Some(w) = endpoint.workload else {
                    return false;
                };
                if groups
                    .selector
                    .is_some_and(|g| !self.groups().contains(g, w))
                {
                    return false;
                }
                self.workload(w).is_some_and(|wl| {
                    wl.pod
                        .ports
                        .iter()
                        .any(|np| &np.name == name && np.port == port && np.protocol == protocol)
                })
            }
        }
    }
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        4
    } else {
        6
    }
}

fn net_family(net: &ipnet::IpNet) -> u8 {
    match net {
        ipnet::IpNet::V4(_) => 4,
        ipnet::IpNet::V6(_) => 6,
    }
}
