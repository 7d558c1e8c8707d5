//! A manifest file as separate objects, each validated on its own: the unit the
//! control plane keeps, versions and distributes. One bad object is an
//! [`ObjectError`] under its key, so the caller can keep that object's last good
//! version while the rest of the file moves on.

use serde_json::Value;

use super::{split_documents, typed, Head, LoadError, Manifests};

/// One valid object that carries policy or cluster state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceObject {
    /// `group/Kind/namespace/name` (core group empty, both Calico API groups as
    /// `projectcalico.org`), unique in a cluster.
    pub key: String,
    /// `file: document N`, for messages.
    pub origin: String,
    /// The object, as compact JSON.
    pub json: String,
}

/// An object that did not validate: its key when the head was readable.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectError {
    pub key: Option<String>,
    pub error: LoadError,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FileObjects {
    pub objects: Vec<SourceObject>,
    pub errors: Vec<ObjectError>,
    /// false when the file could not be read to its end (a YAML syntax error stops
    /// the stream): objects it held before may still be in the unread part.
    pub complete: bool,
}

/// Splits `text` (YAML, or JSON when `file` ends in `.json`) into objects, expanding
/// Lists, and validates each one alone with the same loader `Manifests` uses.
/// Objects that carry nothing policy-relevant (Deployments, ...) are left out.
pub fn objects(file: &str, text: &str) -> FileObjects {
    let mut whole_file = Vec::new();
    let documents = split_documents(file, text, &mut whole_file);
    let mut out = FileObjects {
        complete: whole_file.is_empty(),
        errors: whole_file
            .into_iter()
            .map(|error| ObjectError { key: None, error })
            .collect(),
        ..FileObjects::default()
    };
    for (document, value) in documents {
        let items = match value.get("items") {
            Some(Value::Array(items)) if is_list(&value) => items.clone(),
            _ => vec![value],
        };
        for item in items {
            if item.is_null() {
                continue;
            }
            match validate(file, Some(document), item) {
                Ok(Some(object)) => out.objects.push(object),
                Ok(None) => {}
                Err(errors) => out.errors.extend(errors),
            }
        }
    }
    out
}

/// Validates one object that did not come from a file (a Kubernetes watch, say):
/// `Ok(None)` when it carries nothing policy-relevant. `origin` names it in errors.
pub fn object(origin: &str, value: Value) -> Result<Option<SourceObject>, Vec<ObjectError>> {
    validate(origin, None, value)
}

fn validate(
    file: &str,
    document: Option<usize>,
    item: Value,
) -> Result<Option<SourceObject>, Vec<ObjectError>> {
    let key = key_of(&item);
    let mut scratch = Manifests::default();
    let mut errors = Vec::new();
    scratch.load_value(file, document, item.clone(), &mut errors);
    if !errors.is_empty() {
        return Err(errors
            .into_iter()
            .map(|error| ObjectError {
                key: key.clone(),
                error,
            })
            .collect());
    }
    Ok(match (key, scratch.is_empty()) {
        (Some(key), false) => Some(SourceObject {
            key,
            origin: match document {
                Some(document) => format!("{file}: document {document}"),
                None => file.to_owned(),
            },
            json: item.to_string(),
        }),
        _ => None,
    })
}

/// The key an object of `api_version`/`kind` named `namespace/name` is held under
/// (`namespace` empty for cluster-scoped kinds).
pub fn object_key(api_version: &str, kind: &str, namespace: &str, name: &str) -> String {
    let group = match api_version.split_once('/') {
        Some(("crd.projectcalico.org" | "projectcalico.org", _)) => "projectcalico.org",
        Some((group, _)) => group,
        None => "",
    };
    format!("{group}/{kind}/{namespace}/{name}")
}

fn is_list(value: &Value) -> bool {
    value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"))
}

fn key_of(value: &Value) -> Option<String> {
    let head: Head = typed(value.clone(), "").ok()?;
    let metadata = head.metadata?;
    Some(object_key(
        &head.api_version?,
        &head.kind?,
        &metadata.namespace.unwrap_or_default(),
        &metadata.name?,
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;

    const FILE: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: front}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: front}
---
apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-all}
spec: {selector: all(), types: [Ingress]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: front}
spec: {podSelector: {}, ingress: [{ports: [{port: 99999}]}]}
";

    #[test]
    fn each_object_is_keyed_and_validated_alone() {
        let got = objects("p.yaml", FILE);
        assert!(got.complete);
        let keys: Vec<_> = got.objects.iter().map(|o| o.key.as_str()).collect();
        // The Deployment carries no policy; the broken policy is an error under its key.
        assert_eq!(
            keys,
            [
                "/Namespace//front",
                "projectcalico.org/GlobalNetworkPolicy//deny-all"
            ]
        );
        assert_eq!(got.objects[1].origin, "p.yaml: document 3");
        assert_eq!(got.errors.len(), 1);
        assert_eq!(
            got.errors[0].key.as_deref(),
            Some("networking.k8s.io/NetworkPolicy/front/broken")
        );
        let message = got.errors[0].error.to_string();
        assert!(message.contains("document 4"), "{message}");
        assert!(message.contains("spec.ingress[0].ports[0]"), "{message}");
    }

    #[test]
    fn a_yaml_syntax_error_marks_the_file_incomplete() {
        let got = objects(
            "p.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata: {name: a}\n---\nkind: [",
        );
        assert!(!got.complete);
        assert_eq!(got.objects.len(), 1);
        assert_eq!(got.errors[0].key, None);
    }

    #[test]
    fn objects_load_back_from_their_json() {
        let got = objects("p.yaml", FILE);
        let mut manifests = Manifests::default();
        for o in &got.objects {
            assert!(manifests.load_json(&o.origin, &o.json).is_empty());
        }
        assert_eq!(manifests.cluster.namespaces.len(), 1);
        assert_eq!(manifests.policies.len(), 1);
    }
}
