//! Each workload's policy list: tiers in order, policies in order inside each tier
//! (ascending `order`, unordered last, ties by name; felix/calc/policy_sorter.go).

use super::{CompiledCluster, PolicyId, TierPolicies, WorkloadId, WorkloadPolicy};
use crate::policy::{order_key, Direction, PolicyKind};

impl CompiledCluster {
    fn sort_key(&self, id: PolicyId) -> Option<(u32, f64, &str, Option<&str>, PolicyKind)> {
        let p = &self.policy(id)?.policy;
        let tier = self.tier_ids.get(&p.tier)?.0;
        Some((
            tier,
            order_key(p.order),
            &p.id.name,
            p.id.namespace.as_deref(),
            p.id.kind,
        ))
    }

    fn build_lists(&self, mut ids: Vec<PolicyId>) -> WorkloadPolicy {
        ids.sort_by(|a, b| match (self.sort_key(*a), self.sort_key(*b)) {
            (Some(a), Some(b)) => {
                a.0.cmp(&b.0)
                    .then(a.1.total_cmp(&b.1))
                    .then_with(|| a.2.cmp(b.2))
                    .then_with(|| a.3.cmp(&b.3))
                    .then(a.4.cmp(&b.4))
            }
            _ => std::cmp::Ordering::Equal,
        });
        let mut out = WorkloadPolicy::default();
        for id in ids {
            let Some(p) = self.policy(id) else { continue };
            let Some(&tier) = self.tier_ids.get(&p.policy.tier) else {
                continue;
            };
            for (direction, list) in [
                (Direction::Ingress, &mut out.ingress),
                (Direction::Egress, &mut out.egress),
            ] {
                if !p.policy.applies(direction) {
                    continue;
                }
                match list.last_mut() {
                    Some(last) if last.tier == tier => last.policies.push(id),
                    _ => list.push(TierPolicies {
                        tier,
                        policies: vec![id],
                    }),
                }
            }
        }
        out
    }

    pub(super) fn workload_policy_of(&self, w: WorkloadId) -> WorkloadPolicy {
        let ids = self
            .policies()
            .filter(|(_, p)| self.groups.contains(p.applies_to, w))
            .map(|(id, _)| id)
            .collect();
        self.build_lists(ids)
    }

    pub(super) fn rebuild_all_workload_policies(&mut self) {
        let mut per_workload: Vec<Vec<PolicyId>> = vec![Vec::new(); self.workloads.len()];
        for (id, p) in self.policies() {
            if let Some(group) = self.groups.get(p.applies_to) {
                for w in group.members() {
                    if let Some(list) = per_workload.get_mut(w.index()) {
                        list.push(id);
                    }
                }
            }
        }
        let lists: Vec<WorkloadPolicy> = per_workload
            .into_iter()
            .map(|ids| self.build_lists(ids))
            .collect();
        for (slot, list) in self.workloads.iter_mut().zip(lists) {
            if let Some(w) = slot {
                w.policy = list;
            }
        }
    }
}
