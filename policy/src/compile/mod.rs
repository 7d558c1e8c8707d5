//! Compile, do not interpret: cluster + policies -> per-workload ordered policy lists
//! (tiers -> policies -> rules), with every selector turned into a shared
//! [`PeerGroup`]. The compiled cluster has one writer; the evaluator only reads it.
//!
//! What a change costs:
//! - a pod's labels: re-test that pod against the groups of its namespace and the
//!   unscoped ones; recompute its own policy list only if a policy's own selector
//!   changed its mind. No rule is recompiled.
//! - a namespace's or service account's labels: the same for each pod using it.
//! - a policy: compile that policy alone, then refresh the policy lists of the pods
//!   it selects (before and after).
//! - a tier: re-sort every pod's policy list.

mod order;
mod peer_group;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

pub use peer_group::{GroupId, MembershipChange, PeerGroup, PeerGroups, WorkloadId};

use crate::manifest::Manifests;
use crate::model::{EndpointLabels, LabelMap, Namespace, Pod, PodKey, ServiceAccount};
use crate::policy::{order_key, Direction, Policy, PolicyRef, Rule, Tier, DEFAULT_TIER};
use crate::selector::Selector;

/// Index of a compiled policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyId(pub(crate) u32);

/// Index of a tier in evaluation order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TierId(pub(crate) u32);

/// A rule whose selectors have been replaced by peer groups.
#[derive(Clone, Debug)]
pub struct CompiledRule {
    pub rule: Rule,
    pub source: SideGroups,
    pub destination: SideGroups,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SideGroups {
    pub selector: Option<GroupId>,
    pub not_selector: Option<GroupId>,
}

/// One policy, compiled once and shared by every workload it applies to.
#[derive(Debug)]
pub struct CompiledPolicy {
    pub policy: Policy,
    /// The group of workloads the policy applies to.
    pub applies_to: GroupId,
    pub ingress: Vec<CompiledRule>,
    pub egress: Vec<CompiledRule>,
}

impl CompiledPolicy {
    pub fn rules(&self, direction: Direction) -> &[CompiledRule] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }

    pub fn is_staged(&self) -> bool {
        self.policy.id.kind.is_staged()
    }
}

/// Policies of one tier that apply to a workload in one direction, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TierPolicies {
    pub tier: TierId,
    pub policies: Vec<PolicyId>,
}

/// A workload's compiled policy: which policies, in which order, per direction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WorkloadPolicy {
    pub ingress: Vec<TierPolicies>,
    pub egress: Vec<TierPolicies>,
}

impl WorkloadPolicy {
    pub fn get(&self, direction: Direction) -> &[TierPolicies] {
        match direction {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Workload {
    pub pod: Pod,
    pub labels: EndpointLabels,
    pub policy: WorkloadPolicy,
}

/// A policy that could not be compiled (it is left out; the rest still applies).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{policy}: {field}: {message}")]
pub struct CompileError {
    pub policy: String,
    pub field: String,
    pub message: String,
}

/// The whole cluster, compiled for evaluation.
#[derive(Debug, Default)]
pub struct CompiledCluster {
    tiers: Vec<Tier>,
    tier_ids: HashMap<String, TierId>,
    policies: Vec<Option<Arc<CompiledPolicy>>>,
    policy_ids: HashMap<PolicyRef, PolicyId>,
    groups: PeerGroups,
    workloads: Vec<Option<Workload>>,
    free_workloads: Vec<u32>,
    by_key: HashMap<PodKey, WorkloadId>,
    by_ip: HashMap<IpAddr, WorkloadId>,
    by_namespace: HashMap<String, Vec<WorkloadId>>,
    /// Labels a `namespaceSelector` sees, per namespace.
    namespaces: HashMap<String, Arc<LabelMap>>,
    /// Labels a service-account selector sees, per (namespace, name).
    service_accounts: HashMap<(String, String), Arc<LabelMap>>,
}

impl CompiledCluster {
    /// Compiles everything loaded from manifests. Policies naming a tier that does
    /// not exist are reported and left out.
    pub fn new(manifests: &Manifests) -> (CompiledCluster, Vec<CompileError>) {
        let mut cluster = CompiledCluster::default();
        let mut cluster_objects = manifests.cluster.clone();
        cluster_objects.complete();
        cluster.set_tiers(&manifests.tiers);
        for ns in &cluster_objects.namespaces {
            cluster
                .namespaces
                .insert(ns.name.clone(), Arc::new(ns.selector_labels()));
        }
        for sa in &cluster_objects.service_accounts {
            cluster.service_accounts.insert(
                (sa.namespace.clone(), sa.name.clone()),
                Arc::new(sa.selector_labels()),
            );
        }
        for pod in &cluster_objects.pods {
            cluster.insert_workload(pod.clone());
        }
        let mut errors = Vec::new();
        for policy in &manifests.policies {
            if let Err(e) = cluster.insert_policy(policy.clone()) {
                errors.push(e);
            }
        }
        cluster.rebuild_all_workload_policies();
        (cluster, errors)
    }

    // ----- reading -------------------------------------------------------------

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    pub fn tier(&self, id: TierId) -> Option<&Tier> {
        self.tiers.get(id.0 as usize)
    }

    pub fn policy(&self, id: PolicyId) -> Option<&CompiledPolicy> {
        self.policies.get(id.0 as usize).and_then(Option::as_deref)
    }

    /// The shared compiled form of a policy (tests compare these by pointer).
    pub fn policy_arc(&self, id: &PolicyRef) -> Option<Arc<CompiledPolicy>> {
        let pid = self.policy_ids.get(id)?;
        self.policies.get(pid.0 as usize).and_then(Clone::clone)
    }

    pub fn policies(&self) -> impl Iterator<Item = (PolicyId, &CompiledPolicy)> {
        self.policies
            .iter()
            .enumerate()
            .filter_map(|(i, p)| p.as_deref().map(|p| (PolicyId(i as u32), p)))
    }

    pub fn groups(&self) -> &PeerGroups {
        &self.groups
    }

    pub fn workload(&self, id: WorkloadId) -> Option<&Workload> {
        self.workloads.get(id.index()).and_then(Option::as_ref)
    }

    pub fn workloads(&self) -> impl Iterator<Item = (WorkloadId, &Workload)> {
        self.workloads
            .iter()
            .enumerate()
            .filter_map(|(i, w)| w.as_ref().map(|w| (WorkloadId(i as u32), w)))
    }

    pub fn workload_by_key(&self, key: &PodKey) -> Option<WorkloadId> {
        self.by_key.get(key).copied()
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<WorkloadId> {
        self.by_ip.get(&ip).copied()
    }

    // ----- writing: pods, namespaces, service accounts ---------------------------

    /// Adds or updates a pod. Returns the peer-group membership changes: the delta a
    /// proxy needs. Compiled rules are untouched.
    pub fn apply_pod(&mut self, pod: Pod) -> Vec<MembershipChange> {
        let key = pod.key();
        if !self.namespaces.contains_key(&pod.namespace) {
            let ns = Namespace::new(pod.namespace.clone(), LabelMap::new());
            self.namespaces
                .insert(ns.name.clone(), Arc::new(ns.selector_labels()));
        }
        let Some(&id) = self.by_key.get(&key) else {
            let id = self.insert_workload(pod);
            let mut changes = Vec::new();
            self.refresh_workload(id, &mut changes);
            return changes;
        };
        if let Some(Some(old)) = self.workloads.get(id.index()) {
            for ip in &old.pod.ips {
                self.by_ip.remove(ip);
            }
        }
        for ip in &pod.ips {
            self.by_ip.insert(*ip, id);
        }
        let labels = self.endpoint_labels(&pod);
        if let Some(Some(w)) = self.workloads.get_mut(id.index()) {
            w.pod = pod;
            w.labels = labels;
        }
        let mut changes = Vec::new();
        self.refresh_workload(id, &mut changes);
        changes
    }

    /// Removes a pod; returns the groups it left.
    pub fn remove_pod(&mut self, key: &PodKey) -> Vec<MembershipChange> {
        let mut changes = Vec::new();
        let Some(id) = self.by_key.remove(key) else {
            return changes;
        };
        self.groups
            .update_workload(id, &key.namespace, None, &mut changes);
        if let Some(slot) = self.workloads.get_mut(id.index()) {
            if let Some(w) = slot.take() {
                for ip in &w.pod.ips {
                    self.by_ip.remove(ip);
                }
            }
        }
        if let Some(list) = self.by_namespace.get_mut(&key.namespace) {
            list.retain(|w| *w != id);
        }
        self.free_workloads.push(id.0);
        changes
    }

    /// Adds or updates a namespace's labels.
    pub fn apply_namespace(&mut self, namespace: Namespace) -> Vec<MembershipChange> {
        self.namespaces.insert(
            namespace.name.clone(),
            Arc::new(namespace.selector_labels()),
        );
        self.refresh_namespace(&namespace.name, |_| true)
    }

    /// Adds or updates a service account's labels.
    pub fn apply_service_account(&mut self, sa: ServiceAccount) -> Vec<MembershipChange> {
        let name = sa.name.clone();
        self.service_accounts.insert(
            (sa.namespace.clone(), sa.name.clone()),
            Arc::new(sa.selector_labels()),
        );
        self.refresh_namespace(&sa.namespace, |w| w.pod.service_account == name)
    }

    fn refresh_namespace(
        &mut self,
        namespace: &str,
        which: impl Fn(&Workload) -> bool,
    ) -> Vec<MembershipChange> {
        let ids: Vec<WorkloadId> = self
            .by_namespace
            .get(namespace)
            .cloned()
            .unwrap_or_default();
        let mut changes = Vec::new();
        for id in ids {
            let Some(Some(w)) = self.workloads.get(id.index()) else {
                continue;
            };
            if !which(w) {
                continue;
            }
            let labels = self.endpoint_labels(&w.pod);
            if let Some(Some(w)) = self.workloads.get_mut(id.index()) {
                w.labels = labels;
            }
            self.refresh_workload(id, &mut changes);
        }
        changes
    }

    fn endpoint_labels(&self, pod: &Pod) -> EndpointLabels {
        let empty = || Arc::new(LabelMap::new());
        let sa_key = (pod.namespace.clone(), pod.service_account.clone());
        EndpointLabels {
            pod: pod.labels.clone(),
            namespace: pod.namespace.clone(),
            service_account: (pod.service_account.len() < 63).then(|| pod.service_account.clone()),
            namespace_labels: self
                .namespaces
                .get(&pod.namespace)
                .cloned()
                .unwrap_or_else(empty),
            service_account_labels: self.service_accounts.get(&sa_key).cloned().unwrap_or_else(
                || {
                    let mut labels = LabelMap::new();
                    labels.insert(crate::model::LABEL_NAME.into(), pod.service_account.clone());
                    Arc::new(labels)
                },
            ),
        }
    }

    fn insert_workload(&mut self, pod: Pod) -> WorkloadId {
        if let Some(old) = self.by_key.get(&pod.key()).copied() {
            // A duplicate pod in the input replaces the earlier one.
            let _ = self.remove_pod(&pod.key());
            debug_assert!(self.workload(old).is_none());
        }
        let labels = self.endpoint_labels(&pod);
        let id = match self.free_workloads.pop() {
            Some(slot) => WorkloadId(slot),
            None => {
                self.workloads.push(None);
                WorkloadId(self.workloads.len() as u32 - 1)
            }
        };
        for ip in &pod.ips {
            self.by_ip.insert(*ip, id);
        }
        self.by_key.insert(pod.key(), id);
        self.by_namespace
            .entry(pod.namespace.clone())
            .or_default()
            .push(id);
        if let Some(slot) = self.workloads.get_mut(id.index()) {
            *slot = Some(Workload {
                pod,
                labels,
                policy: WorkloadPolicy::default(),
            });
        }
        id
    }

    /// Re-tests one workload against the groups and, if a policy's own selector
    /// changed its mind, recomputes its policy list.
    fn refresh_workload(&mut self, id: WorkloadId, changes: &mut Vec<MembershipChange>) {
        let Some(Some(w)) = self.workloads.get(id.index()) else {
            return;
        };
        let start = changes.len();
        let namespace = w.pod.namespace.clone();
        let labels = w.labels.clone();
        self.groups
            .update_workload(id, &namespace, Some(&labels), changes);
        let policy_selectors_changed = changes
            .iter()
            .skip(start)
            .any(|c| self.is_policy_selector(c.group));
        let is_new = self
            .workload(id)
            .is_some_and(|w| w.policy == WorkloadPolicy::default());
        if policy_selectors_changed || is_new {
            let policy = self.workload_policy_of(id);
            if let Some(Some(w)) = self.workloads.get_mut(id.index()) {
                w.policy = policy;
            }
        }
    }

    fn is_policy_selector(&self, group: GroupId) -> bool {
        self.policies
            .iter()
            .flatten()
            .any(|p| p.applies_to == group)
    }

    // ----- writing: policies and tiers ------------------------------------------

    /// Adds or replaces a policy; compiles that policy alone.
    pub fn apply_policy(&mut self, policy: Policy) -> Result<(), CompileError> {
        let old_members = self.remove_policy_inner(&policy.id);
        let result = self.insert_policy(policy.clone());
        let new_members = self
            .policy_ids
            .get(&policy.id)
            .and_then(|id| self.policy(*id))
            .and_then(|p| self.groups.get(p.applies_to))
            .map(|g| g.members().collect::<Vec<_>>())
            .unwrap_or_default();
        for id in old_members.into_iter().chain(new_members) {
            let list = self.workload_policy_of(id);
            if let Some(Some(w)) = self.workloads.get_mut(id.index()) {
                w.policy = list;
            }
        }
        result
    }

    /// Removes a policy; refreshes the pods it applied to.
    pub fn remove_policy(&mut self, id: &PolicyRef) {
        for w in self.remove_policy_inner(id) {
            let list = self.workload_policy_of(w);
            if let Some(Some(slot)) = self.workloads.get_mut(w.index()) {
                slot.policy = list;
            }
        }
    }

    fn remove_policy_inner(&mut self, id: &PolicyRef) -> Vec<WorkloadId> {
        let Some(pid) = self.policy_ids.remove(id) else {
            return Vec::new();
        };
        let Some(compiled) = self.policies.get_mut(pid.0 as usize).and_then(Option::take) else {
            return Vec::new();
        };
        let members = self
            .groups
            .get(compiled.applies_to)
            .map(|g| g.members().collect())
            .unwrap_or_default();
        self.groups.release(compiled.applies_to);
        for rule in compiled.ingress.iter().chain(&compiled.egress) {
            for side in [rule.source, rule.destination] {
                for g in [side.selector, side.not_selector].into_iter().flatten() {
                    self.groups.release(g);
                }
            }
        }
        members
    }

    /// Replaces the tiers (the built-in ones always exist) and re-sorts every
    /// workload's policy list.
    pub fn apply_tiers(&mut self, tiers: &[Tier]) {
        self.set_tiers(tiers);
        self.rebuild_all_workload_policies();
    }

    fn set_tiers(&mut self, tiers: &[Tier]) {
        let mut all = Tier::builtin();
        for t in tiers {
            match all.iter_mut().find(|b| b.name == t.name) {
                // The default tier's order is fixed (Calico rejects changing it).
                Some(b) if b.name == DEFAULT_TIER => b.default_action = t.default_action,
                Some(b) => *b = t.clone(),
                None => all.push(t.clone()),
            }
        }
        all.sort_by(|a, b| {
            order_key(a.order)
                .total_cmp(&order_key(b.order))
                .then_with(|| a.name.cmp(&b.name))
        });
        self.tier_ids = all
            .iter()
            .enumerate()
            .map(|(i, t)| (t.name.clone(), TierId(i as u32)))
            .collect();
        self.tiers = all;
    }

    fn insert_policy(&mut self, policy: Policy) -> Result<(), CompileError> {
        if !self.tier_ids.contains_key(&policy.tier) {
            return Err(CompileError {
                policy: format!("{} {}", policy.id.kind.api_kind(), policy.id),
                field: "spec.tier".into(),
                message: format!("tier {:?} does not exist", policy.tier),
            });
        }
        if self.policy_ids.contains_key(&policy.id) {
            self.remove_policy_inner(&policy.id);
        }
        let applies_to = self.intern(policy.selector.clone());
        let ingress = policy
            .ingress
            .iter()
            .map(|r| self.compile_rule(r))
            .collect();
        let egress = policy.egress.iter().map(|r| self.compile_rule(r)).collect();
        let compiled = Arc::new(CompiledPolicy {
            policy,
            applies_to,
            ingress,
            egress,
        });
        let id = PolicyId(self.policies.len() as u32);
        self.policy_ids.insert(compiled.policy.id.clone(), id);
        self.policies.push(Some(compiled));
        Ok(())
    }

    fn compile_rule(&mut self, rule: &Rule) -> CompiledRule {
        let mut side = |m: &crate::policy::EntityMatch| SideGroups {
            selector: m.selector.clone().map(|s| self.intern(s)),
            not_selector: m.not_selector.clone().map(|s| self.intern(s)),
        };
        let source = side(&rule.source);
        let destination = side(&rule.destination);
        CompiledRule {
            rule: rule.clone(),
            source,
            destination,
        }
    }

    fn intern(&mut self, selector: Selector) -> GroupId {
        let workloads = &self.workloads;
        let by_namespace = &self.by_namespace;
        self.groups.intern(selector, |namespace| {
            let labels = |id: &WorkloadId| {
                workloads
                    .get(id.index())
                    .and_then(Option::as_ref)
                    .map(|w| (*id, &w.labels))
            };
            match namespace {
                Some(ns) => by_namespace
                    .get(ns)
                    .map(|ids| ids.iter().filter_map(labels).collect())
                    .unwrap_or_default(),
                None => workloads
                    .iter()
                    .enumerate()
                    .filter_map(|(i, w)| w.as_ref().map(|w| (WorkloadId(i as u32), &w.labels)))
                    .collect(),
            }
        })
    }
}
