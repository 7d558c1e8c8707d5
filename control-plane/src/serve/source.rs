//! The local source: a manifest directory, read file by file into separately
//! validated objects. A rescan of one file yields a [`Change`] against what the
//! source held; an object that no longer validates keeps its last good version
//! (and is reported), and a file whose YAML breaks off keeps the objects of the
//! part that could not be read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_policy::manifest::{objects, SourceObject};

/// What changed in the source: objects to put (new or different) and keys gone.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub upserts: Vec<Arc<SourceObject>>,
    pub removals: Vec<String>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }

    /// Adds the later change `next`: where both touch a key, `next` wins.
    pub fn merge(&mut self, next: Change) {
        self.upserts.retain(|o| {
            !next.removals.contains(&o.key) && !next.upserts.iter().any(|n| n.key == o.key)
        });
        self.removals
            .retain(|k| !next.upserts.iter().any(|n| &n.key == k));
        self.upserts.extend(next.upserts);
        self.removals.extend(next.removals);
    }
}

#[derive(Debug, Default)]
pub struct ManifestSource {
    /// file -> the keys it holds now (valid or kept-last-good).
    files: BTreeMap<PathBuf, BTreeSet<String>>,
    objects: BTreeMap<String, Arc<SourceObject>>,
    /// Problems found by the last scan of each file, for status and logs.
    problems: BTreeMap<PathBuf, Vec<String>>,
}

impl ManifestSource {
    pub fn objects(&self) -> &BTreeMap<String, Arc<SourceObject>> {
        &self.objects
    }

    /// Every problem of the current files, file by file.
    pub fn problems(&self) -> impl Iterator<Item = &String> {
        self.problems.values().flatten()
    }

    /// Reads `path` again (or notes it is gone) and returns what changed. An
    /// unreadable file is a problem, not a removal of its objects.
    pub fn rescan(&mut self, path: &Path) -> Change {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return self.forget(path),
            Err(e) => {
                let problem = format!("{}: {e} (its objects stay as they were)", path.display());
                self.problems.insert(path.to_owned(), vec![problem]);
                return Change::default();
            }
        };
        let name = path.display().to_string();
        let scanned = objects(&name, &text);
        let previous = self.files.remove(path).unwrap_or_default();
        let mut held = BTreeSet::new();
        let mut change = Change::default();
        let mut problems = Vec::new();

        for object in scanned.objects {
            if self.owner_elsewhere(&object.key, path) {
                problems.push(format!(
                    "{}: {} is also defined in another file; this copy is ignored",
                    object.origin, object.key
                ));
                continue;
            }
            held.insert(object.key.clone());
            let changed = self
                .objects
                .get(&object.key)
                .is_none_or(|old| old.json != object.json);
            let object = Arc::new(object);
            if changed {
                self.objects.insert(object.key.clone(), object.clone());
                change.upserts.push(object);
            }
        }
        for e in &scanned.errors {
            // The last good version of an invalid object stays in force.
            let kept = e.key.as_ref().filter(|k| previous.contains(*k));
            if let Some(key) = kept {
                held.insert(key.clone());
                problems.push(format!(
                    "{} (its last good version stays in force)",
                    e.error
                ));
            } else {
                problems.push(format!("{} (not applied)", e.error));
            }
        }
        for key in previous {
            if held.contains(&key) {
                continue;
            }
            if !scanned.complete {
                // It may be in the part of the file that could not be read.
                held.insert(key);
                continue;
            }
            if self.objects.remove(&key).is_some() {
                change.removals.push(key);
            }
        }
        self.files.insert(path.to_owned(), held);
        if problems.is_empty() {
            self.problems.remove(path);
        } else {
            self.problems.insert(path.to_owned(), problems);
        }
        change
    }

    fn owner_elsewhere(&self, key: &str, path: &Path) -> bool {
        self.files
            .iter()
            .any(|(file, keys)| file != path && keys.contains(key))
    }

    fn forget(&mut self, path: &Path) -> Change {
        self.problems.remove(path);
        let mut change = Change::default();
        for key in self.files.remove(path).unwrap_or_default() {
            if self.objects.remove(&key).is_some() {
                change.removals.push(key);
            }
        }
        change
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const NS: &str = "apiVersion: v1\nkind: Namespace\nmetadata: {name: front, labels: {a: b}}\n";
    const POLICY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: front}\nspec: {podSelector: {}, ingress: [{ports: [{port: 80}]}]}\n";
    const BROKEN: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: front}\nspec: {podSelector: {}, ingress: [{ports: [{port: 99999}]}]}\n";

    fn keys(change: &Change) -> Vec<&str> {
        change.upserts.iter().map(|o| o.key.as_str()).collect()
    }

    #[test]
    fn a_broken_object_keeps_its_last_good_version_and_the_rest_moves_on() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, format!("{NS}---\n{POLICY}")).unwrap();
        let mut source = ManifestSource::default();
        let first = source.rescan(&file);
        assert_eq!(keys(&first).len(), 2);

        let ns2 = NS.replace("a: b", "a: c");
        std::fs::write(&file, format!("{ns2}---\n{BROKEN}")).unwrap();
        let second = source.rescan(&file);
        // The namespace change goes out; the policy keeps its good version.
        assert_eq!(keys(&second), ["/Namespace//front"]);
        assert!(second.removals.is_empty());
        let good = &source.objects()["networking.k8s.io/NetworkPolicy/front/p"];
        assert!(good.json.contains("80"));
        let problems: Vec<_> = source.problems().collect();
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].contains("spec.ingress[0].ports[0]"),
            "{}",
            problems[0]
        );
        assert!(
            problems[0].contains("last good version stays"),
            "{}",
            problems[0]
        );
    }

    #[test]
    fn removed_objects_and_files_are_removals_but_a_yaml_break_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a.yaml");
        std::fs::write(&file, format!("{NS}---\n{POLICY}")).unwrap();
        let mut source = ManifestSource::default();
        source.rescan(&file);

        std::fs::write(&file, format!("{NS}---\nkind: [")).unwrap();
        assert!(source.rescan(&file).is_empty());
        assert_eq!(source.objects().len(), 2);

        std::fs::write(&file, NS).unwrap();
        let change = source.rescan(&file);
        assert_eq!(change.removals, ["networking.k8s.io/NetworkPolicy/front/p"]);

        std::fs::remove_file(&file).unwrap();
        assert_eq!(source.rescan(&file).removals, ["/Namespace//front"]);
        assert!(source.objects().is_empty());
    }

    #[test]
    fn an_object_defined_twice_keeps_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"));
        std::fs::write(&a, NS).unwrap();
        std::fs::write(&b, NS.replace("a: b", "a: x")).unwrap();
        let mut source = ManifestSource::default();
        source.rescan(&a);
        assert!(source.rescan(&b).is_empty());
        assert!(source.objects()["/Namespace//front"].json.contains("\"b\""));
        assert!(source.problems().next().unwrap().contains("also defined"));
    }
}
