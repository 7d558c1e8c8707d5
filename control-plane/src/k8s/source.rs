//! The cluster source: watcher events of every watched kind -> the same
//! [`Change`]s the manifest directory yields, so the world, the streams and the
//! proxies do not care where objects come from.
//!
//! Each object is validated alone by the policy crate's loader. One that does not
//! validate is logged with its kind, name and field and skipped; if an earlier
//! version of it was good, that version stays in force (as with a bad edit of a
//! manifest file). It never stops the watch. A relist (watcher `Init` ..
//! `InitDone`) replaces everything of that kind at once, so objects deleted while
//! a watch was down are removed then.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use kube::core::{ApiResource, DynamicObject};
use kube::runtime::watcher::Event;
use palisade_policy::manifest::{object, object_key, SourceObject};
use serde_json::Value;

use crate::serve::Change;

#[derive(Debug, Default)]
pub struct ClusterSource {
    objects: BTreeMap<String, Arc<SourceObject>>,
    /// Kind prefix (`group/Kind/`) -> what its current relist has delivered so far.
    relisting: BTreeMap<String, BTreeMap<String, Arc<SourceObject>>>,
    /// Kind prefixes whose first list is complete.
    listed: BTreeSet<String>,
    /// Object key -> why its current version is not applied.
    problems: BTreeMap<String, String>,
}

impl ClusterSource {
    pub fn objects(&self) -> &BTreeMap<String, Arc<SourceObject>> {
        &self.objects
    }

    pub fn problems(&self) -> impl Iterator<Item = &String> {
        self.problems.values()
    }

    /// True once every kind in `kinds` has been listed completely: before that a
    /// world would lack policies that exist, and allow what they deny.
    pub fn synced(&self, kinds: &[ApiResource]) -> bool {
        kinds.iter().all(|k| self.listed.contains(&prefix(k)))
    }

    /// Applies one watcher event of `kind` and returns what changed.
    pub fn apply(&mut self, kind: &ApiResource, event: Event<DynamicObject>) -> Change {
        let prefix = prefix(kind);
        match event {
            Event::Init => {
                self.relisting.insert(prefix, BTreeMap::new());
                Change::default()
            }
            Event::InitApply(obj) => {
                let (key, valid) = self.convert(kind, obj);
                let held = valid.or_else(|| self.objects.get(&key).cloned());
                if let (Some(listing), Some(held)) = (self.relisting.get_mut(&prefix), held) {
                    listing.insert(key, held);
                }
                Change::default()
            }
            Event::InitDone => {
                let listing = self.relisting.remove(&prefix).unwrap_or_default();
                self.listed.insert(prefix.clone());
                let gone: Vec<String> = self
                    .objects
                    .range(prefix.clone()..)
                    .take_while(|(k, _)| k.starts_with(&prefix))
                    .filter(|(k, _)| !listing.contains_key(*k))
                    .map(|(k, _)| k.clone())
                    .collect();
                let mut change = Change::default();
                for key in gone {
                    self.remove(&key, &mut change);
                }
                for (_, object) in listing {
                    self.put(object, &mut change);
                }
                change
            }
            Event::Apply(obj) => {
                let mut change = Change::default();
                if let (_, Some(object)) = self.convert(kind, obj) {
                    self.put(object, &mut change);
                }
                change
            }
            Event::Delete(obj) => {
                let mut change = Change::default();
                let key = key(kind, &obj);
                self.problems.remove(&key);
                self.remove(&key, &mut change);
                change
            }
        }
    }

    fn put(&mut self, object: Arc<SourceObject>, change: &mut Change) {
        let changed = self
            .objects
            .get(&object.key)
            .is_none_or(|old| old.json != object.json);
        if changed {
            self.objects.insert(object.key.clone(), object.clone());
            change.upserts.push(object);
        }
    }

    fn remove(&mut self, key: &str, change: &mut Change) {
        if self.objects.remove(key).is_some() {
            change.removals.push(key.to_owned());
        }
    }

    /// The object's key and, when it validates and carries policy, its
    /// `SourceObject`. A problem is logged once per object version.
    fn convert(
        &mut self,
        kind: &ApiResource,
        obj: DynamicObject,
    ) -> (String, Option<Arc<SourceObject>>) {
        let key = key(kind, &obj);
        let origin = format!("kubernetes {} {}", kind.api_version, name_of(&obj));
        match object(&origin, to_manifest(kind, obj)) {
            Ok(valid) => {
                self.problems.remove(&key);
                (key, valid.map(Arc::new))
            }
            Err(errors) => {
                let message = errors
                    .iter()
                    .map(|e| e.error.to_string())
                    .collect::<Vec<_>>()
                    .join("; ");
                let kept = if self.objects.contains_key(&key) {
                    " (its last good version stays in force)"
                } else {
                    " (skipped)"
                };
                let problem = format!("{message}{kept}");
                if self.problems.get(&key) != Some(&problem) {
                    eprintln!("error: {problem}");
                }
                self.problems.insert(key.clone(), problem);
                (key, None)
            }
        }
    }
}

fn prefix(kind: &ApiResource) -> String {
    // The key of an object with empty namespace and name, less the two slashes.
    let key = object_key(&kind.api_version, &kind.kind, "", "");
    key.trim_end_matches('/').to_owned() + "/"
}

fn key(kind: &ApiResource, obj: &DynamicObject) -> String {
    object_key(
        &kind.api_version,
        &kind.kind,
        obj.metadata.namespace.as_deref().unwrap_or_default(),
        obj.metadata.name.as_deref().unwrap_or_default(),
    )
}

fn name_of(obj: &DynamicObject) -> String {
    let name = obj.metadata.name.as_deref().unwrap_or("<no name>");
    match &obj.metadata.namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_owned(),
    }
}

/// The object as a manifest: `apiVersion` and `kind` set (list items come
/// without them), and what only the API server needs removed, so a status or
/// managedFields update does not look like a change to distribute.
pub fn to_manifest(kind: &ApiResource, obj: DynamicObject) -> Value {
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    if let Some(map) = value.as_object_mut() {
        map.insert("apiVersion".into(), kind.api_version.clone().into());
        map.insert("kind".into(), kind.kind.clone().into());
        if let Some(Value::Object(meta)) = map.get_mut("metadata") {
            for noise in [
                "managedFields",
                "resourceVersion",
                "generation",
                "uid",
                "creationTimestamp",
            ] {
                meta.remove(noise);
            }
            if let Some(Value::Object(annotations)) = meta.get_mut("annotations") {
                annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
            }
        }
        if kind.kind == "Pod" {
            trim_pod_status(map);
        }
    }
    value
}

/// Of a Pod's status, policy reads only its IPs; the rest (conditions,
/// container states) changes often and would make every probe a new version.
fn trim_pod_status(pod: &mut serde_json::Map<String, Value>) {
    if let Some(Value::Object(status)) = pod.get_mut("status") {
        status.retain(|k, _| k == "podIP" || k == "podIPs" || k == "phase");
    }
}
