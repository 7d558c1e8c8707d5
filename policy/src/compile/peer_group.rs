//! Peer groups: every distinct selector a compiled policy uses, with its members.
//!
//! Rules refer to a group by id; a label change updates membership bits here and never
//! touches compiled rules (the way Calico uses IP sets and Cilium identities). Groups
//! are interned by selector, so the same selector in many policies is one group.

use std::collections::HashMap;

use fixedbitset::FixedBitSet;

use crate::model::{EndpointLabels, LABEL_NAMESPACE};
use crate::selector::Selector;

/// Index of a peer group.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(pub(crate) u32);

/// Index of a workload (pod) in the compiled cluster. Stable while the pod exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadId(pub(crate) u32);

impl WorkloadId {
    pub(crate) fn index(self) -> usize {
        self.0 as usize
    }
}

/// One selector and the workloads that match it.
#[derive(Clone, Debug)]
pub struct PeerGroup {
    pub selector: Selector,
    /// When the selector requires `projectcalico.org/namespace == ns`, only pods of
    /// that namespace are ever tested against it.
    pub namespace: Option<String>,
    members: FixedBitSet,
    /// How many compiled rules and policies use this group; it is dropped at zero.
    users: u32,
}

impl PeerGroup {
    pub fn contains(&self, w: WorkloadId) -> bool {
        self.members.contains(w.index())
    }

    pub fn members(&self) -> impl Iterator<Item = WorkloadId> + '_ {
        self.members.ones().map(|i| WorkloadId(i as u32))
    }

    pub fn len(&self) -> usize {
        self.members.count_ones(..)
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_clear()
    }
}

/// A membership change: `workload` joined (`true`) or left (`false`) `group`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipChange {
    pub group: GroupId,
    pub workload: WorkloadId,
    pub joined: bool,
}

/// All peer groups of a compiled cluster. One writer: [`super::CompiledCluster`].
#[derive(Clone, Debug, Default)]
pub struct PeerGroups {
    slots: Vec<Option<PeerGroup>>,
    free: Vec<u32>,
    by_selector: HashMap<Selector, GroupId>,
    /// Groups to test for a pod of namespace `ns`: `scoped[ns]` plus `unscoped`.
    unscoped: Vec<GroupId>,
    scoped: HashMap<String, Vec<GroupId>>,
}

impl PeerGroups {
    pub fn get(&self, id: GroupId) -> Option<&PeerGroup> {
        self.slots.get(id.0 as usize).and_then(Option::as_ref)
    }

    /// Is `w` a member of `id`? The evaluator's one question, O(1).
    #[inline]
    pub fn contains(&self, id: GroupId, w: WorkloadId) -> bool {
        self.slots
            .get(id.0 as usize)
            .and_then(Option::as_ref)
            .is_some_and(|g| g.contains(w))
    }

    pub fn len(&self) -> usize {
        self.by_selector.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_selector.is_empty()
    }

    /// Returns the group for `selector`, creating it (and computing its members from
    /// `candidates`) when it is new. Each call counts one more user.
    pub(crate) fn intern<'a>(
        &mut self,
        selector: Selector,
        candidates: impl Fn(Option<&str>) -> Vec<(WorkloadId, &'a EndpointLabels)>,
    ) -> GroupId {
        if let Some(&id) = self.by_selector.get(&selector) {
            if let Some(Some(group)) = self.slots.get_mut(id.0 as usize) {
                group.users += 1;
            }
            return id;
        }
        let namespace = selector.required_value(LABEL_NAMESPACE).map(str::to_owned);
        let mut members = FixedBitSet::new();
        for (w, labels) in candidates(namespace.as_deref()) {
            if selector.matches(labels) {
                members.grow(w.index() + 1);
                members.insert(w.index());
            }
        }
        let group = PeerGroup {
            selector: selector.clone(),
            namespace: namespace.clone(),
            members,
            users: 1,
        };
        let id = match self.free.pop() {
            Some(slot) => {
                if let Some(s) = self.slots.get_mut(slot as usize) {
                    *s = Some(group);
                }
                GroupId(slot)
            }
            None => {
                self.slots.push(Some(group));
                GroupId(self.slots.len() as u32 - 1)
            }
        };
        self.by_selector.insert(selector, id);
        match namespace {
            Some(ns) => self.scoped.entry(ns).or_default().push(id),
            None => self.unscoped.push(id),
        }
        id
    }

    /// One user fewer; the group goes when nobody uses it.
    pub(crate) fn release(&mut self, id: GroupId) {
        let Some(slot) = self.slots.get_mut(id.0 as usize) else {
            return;
        };
        let Some(group) = slot else { return };
        group.users = group.users.saturating_sub(1);
        if group.users > 0 {
            return;
        }
        let group = slot.take();
        self.free.push(id.0);
        if let Some(group) = group {
            self.by_selector.remove(&group.selector);
            let list = match &group.namespace {
                Some(ns) => self.scoped.get_mut(ns),
                None => Some(&mut self.unscoped),
            };
            if let Some(list) = list {
                list.retain(|g| *g != id);
            }
        }
    }

    /// Re-tests `w` (now in namespace `namespace` with `labels`, or gone when `None`)
    /// against every group that could contain it, and reports what changed.
    pub(crate) fn update_workload(
        &mut self,
        w: WorkloadId,
        namespace: &str,
        labels: Option<&EndpointLabels>,
        changes: &mut Vec<MembershipChange>,
    ) {
        let scoped = self
            .scoped
            .get(namespace)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let ids: Vec<GroupId> = if labels.is_none() {
            // A removed pod leaves every group, whatever its scope.
            self.slots
                .iter()
                .enumerate()
                .filter(|(_, g)| g.is_some())
                .map(|(i, _)| GroupId(i as u32))
                .collect()
        } else {
            self.unscoped.iter().chain(scoped).copied().collect()
        };
        for id in ids {
            let Some(Some(group)) = self.slots.get_mut(id.0 as usize) else {
                continue;
            };
            let now = labels.is_some_and(|l| group.selector.matches(l));
            let before = group.contains(w);
            if now != before {
                group.members.grow(w.index() + 1);
                group.members.set(w.index(), now);
                changes.push(MembershipChange {
                    group: id,
                    workload: w,
                    joined: now,
                });
            }
        }
    }
}
