//! What the control plane serves: every valid object at one version, the deltas
//! that led to the last few versions, and who each pod is. Immutable: a change
//! makes the next `World`, published to every stream through a `watch` channel by
//! the one writer (the source loop).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use palisade_certs::SpiffeId;
use palisade_policy::manifest::SourceObject;
use palisade_policy::Manifests;

use super::source::Change;

/// How many deltas are kept: a stream further behind gets a snapshot.
const HISTORY: usize = 64;

#[derive(Debug)]
pub struct World {
    pub version: u64,
    /// When this version was made, in milliseconds since the epoch.
    pub made_at_ms: u64,
    pub objects: BTreeMap<String, Arc<SourceObject>>,
    /// (version, the change that made it), oldest first.
    history: VecDeque<(u64, Arc<Change>)>,
    /// `namespace/name` -> the identity the pod's proxy may hold.
    pods: HashMap<String, SpiffeId>,
}

/// What one stream is sent to move from its version to the current one.
#[derive(Debug, Default)]
pub struct Catchup {
    pub snapshot: bool,
    pub upserts: Vec<Arc<SourceObject>>,
    pub removals: Vec<String>,
}

/// Makes the next version from `change` and publishes it to every stream (the
/// one writer's last step, whichever the source).
pub fn publish(
    world_tx: &tokio::sync::watch::Sender<Arc<World>>,
    change: Change,
    trust_domain: &str,
) {
    let (upserts, removals) = (change.upserts.len(), change.removals.len());
    let next = Arc::new(world_tx.borrow().next(change, trust_domain));
    eprintln!(
        "version {}: {upserts} objects changed, {removals} removed",
        next.version
    );
    world_tx.send_replace(next);
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl World {
    /// The first version is the start time in milliseconds, so that versions keep
    /// growing across restarts of the control plane.
    pub fn first(objects: BTreeMap<String, Arc<SourceObject>>, trust_domain: &str) -> World {
        let made_at_ms = now_ms();
        World {
            version: made_at_ms,
            made_at_ms,
            pods: pod_identities(&objects, trust_domain),
            objects,
            history: VecDeque::new(),
        }
    }

    pub fn next(&self, change: Change, trust_domain: &str) -> World {
        let mut objects = self.objects.clone();
        for o in &change.upserts {
            objects.insert(o.key.clone(), o.clone());
        }
        for key in &change.removals {
            objects.remove(key);
        }
        let version = self.version + 1;
        let mut history = self.history.clone();
        if history.len() == HISTORY {
            history.pop_front();
        }
        // Only the pods that changed are read again (a label change in a 10k-pod
        // cluster must not re-parse every pod).
        let pod_keys = |k: &String| k.strip_prefix("/Pod/").map(str::to_owned);
        let pods_changed = change
            .upserts
            .iter()
            .map(|o| &o.key)
            .chain(&change.removals)
            .any(|k| pod_keys(k).is_some());
        let pods = if pods_changed {
            let mut pods = self.pods.clone();
            for key in change.removals.iter().filter_map(pod_keys) {
                pods.remove(&key);
            }
            for object in change.upserts.iter().filter(|o| o.key.starts_with("/Pod/")) {
                match pod_identity(object, trust_domain) {
                    Some((pod, id)) => pods.insert(pod, id),
                    None => object
                        .key
                        .strip_prefix("/Pod/")
                        .and_then(|p| pods.remove(p)),
                };
            }
            pods
        } else {
            self.pods.clone()
        };
        history.push_back((version, Arc::new(change)));
        World {
            version,
            made_at_ms: now_ms(),
            pods,
            objects,
            history,
        }
    }

    pub fn identity_of(&self, pod: &str) -> Option<&SpiffeId> {
        self.pods.get(pod)
    }

    /// The labels of namespace `name`, if the world holds it (for the injector).
    pub fn namespace_labels(&self, name: &str) -> Option<BTreeMap<String, String>> {
        let object = self.objects.get(&format!("/Namespace//{name}"))?;
        let value: serde_json::Value = serde_json::from_str(&object.json).ok()?;
        serde_json::from_value(value.pointer("/metadata/labels")?.clone()).ok()
    }

    /// The deltas after `version`, merged; a snapshot when `version` is unknown
    /// (0, another control plane's, or older than the history).
    pub fn since(&self, version: u64) -> Catchup {
        if version == self.version {
            return Catchup::default();
        }
        let start = self.history.iter().position(|(v, _)| *v == version + 1);
        let Some(start) = start else {
            return Catchup {
                snapshot: true,
                upserts: self.objects.values().cloned().collect(),
                removals: Vec::new(),
            };
        };
        // Later changes win: the last word on each key.
        let mut merged: BTreeMap<&str, Option<&Arc<SourceObject>>> = BTreeMap::new();
        for (_, change) in self.history.iter().skip(start) {
            for o in &change.upserts {
                merged.insert(&o.key, Some(o));
            }
            for key in &change.removals {
                merged.insert(key, None);
            }
        }
        let mut out = Catchup::default();
        for (key, object) in merged {
            match object {
                Some(o) => out.upserts.push(o.clone()),
                None => out.removals.push(key.to_owned()),
            }
        }
        out
    }
}

fn pod_identities(
    objects: &BTreeMap<String, Arc<SourceObject>>,
    trust_domain: &str,
) -> HashMap<String, SpiffeId> {
    objects
        .range("/Pod/".to_owned()..)
        .take_while(|(k, _)| k.starts_with("/Pod/"))
        .filter_map(|(_, o)| pod_identity(o, trust_domain))
        .collect()
}

/// `namespace/name` of a Pod object and the identity its proxy may hold.
fn pod_identity(object: &SourceObject, trust_domain: &str) -> Option<(String, SpiffeId)> {
    let mut manifests = Manifests::default();
    manifests.load_json(&object.origin, &object.json);
    let pod = manifests.cluster.pods.first()?;
    let id = SpiffeId::new(trust_domain, &pod.namespace, &pod.service_account).ok()?;
    Some((format!("{}/{}", pod.namespace, pod.name), id))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    fn object(key: &str, json: &str) -> Arc<SourceObject> {
        Arc::new(SourceObject {
            key: key.into(),
            origin: "t".into(),
            json: json.into(),
        })
    }

    #[test]
    fn a_stream_behind_gets_the_merged_deltas_and_an_unknown_version_a_snapshot() {
        let pod = r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"front"},"spec":{"serviceAccountName":"web"},"status":{"podIP":"10.0.0.1"}}"#;
        let w0 = World::first(
            BTreeMap::from([("/Pod/front/p".into(), object("/Pod/front/p", pod))]),
            "cluster.local",
        );
        assert_eq!(
            w0.identity_of("front/p")
                .map(ToString::to_string)
                .as_deref(),
            Some("spiffe://cluster.local/ns/front/sa/web")
        );
        let add = |key: &str| Change {
            upserts: vec![object(key, "{}")],
            removals: vec![],
        };
        let w1 = w0.next(add("/Namespace//a"), "cluster.local");
        let w2 = w1.next(add("/Namespace//b"), "cluster.local");
        let w3 = w2.next(
            Change {
                upserts: vec![],
                removals: vec!["/Namespace//a".into()],
            },
            "cluster.local",
        );
        let from1 = w3.since(w1.version);
        assert!(!from1.snapshot);
        assert_eq!(from1.upserts.len(), 1);
        assert_eq!(from1.upserts[0].key, "/Namespace//b");
        assert_eq!(from1.removals, ["/Namespace//a"]);
        assert!(w3.since(w3.version).upserts.is_empty());
        let fresh = w3.since(0);
        assert!(fresh.snapshot);
        assert_eq!(fresh.upserts.len(), 2);
    }

    #[test]
    fn pod_identities_follow_only_the_pods_that_changed() {
        let pod = |name: &str, sa: &str| {
            object(
                &format!("/Pod/front/{name}"),
                &format!(
                    r#"{{"apiVersion":"v1","kind":"Pod","metadata":{{"name":"{name}","namespace":"front"}},"spec":{{"serviceAccountName":"{sa}"}}}}"#
                ),
            )
        };
        let id = |w: &World, p: &str| w.identity_of(p).map(ToString::to_string);
        let w0 = World::first(
            BTreeMap::from([
                ("/Pod/front/a".into(), pod("a", "web")),
                ("/Pod/front/b".into(), pod("b", "web")),
            ]),
            "cluster.local",
        );
        let w1 = w0.next(
            Change {
                upserts: vec![pod("a", "admin"), pod("c", "web")],
                removals: vec!["/Pod/front/b".into()],
            },
            "cluster.local",
        );
        assert_eq!(
            id(&w1, "front/a").as_deref(),
            Some("spiffe://cluster.local/ns/front/sa/admin")
        );
        assert_eq!(id(&w1, "front/b"), None);
        assert_eq!(
            id(&w1, "front/c").as_deref(),
            Some("spiffe://cluster.local/ns/front/sa/web")
        );
        assert_eq!(
            id(&w0, "front/a").as_deref(),
            Some("spiffe://cluster.local/ns/front/sa/web"),
            "w0 unchanged"
        );
    }
}
