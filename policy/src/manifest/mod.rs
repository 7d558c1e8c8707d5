//! Manifests in, normalized objects out: multi-document YAML, JSON, and `kind: List`.
//!
//! Every problem becomes a [`LoadError`] naming the file, the document, the object and
//! the field path, like
//! `policies.yaml: document 3 (GlobalNetworkPolicy allow-dns): spec.egress[0].destination.ports[1]: invalid port range "80:70"`.
//! One bad object is reported and skipped; the rest of the file still loads.

mod calico;
mod kubernetes;
mod objects;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

pub use objects::{object, object_key, objects, FileObjects, ObjectError, SourceObject};

use crate::model::Cluster;
use crate::policy::{Policy, Tier};

/// Everything policy-relevant loaded from a set of manifests.
#[derive(Clone, Debug, Default)]
pub struct Manifests {
    pub cluster: Cluster,
    pub policies: Vec<Policy>,
    pub tiers: Vec<Tier>,
}

/// A manifest problem, precise enough to fix without guessing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct LoadError {
    pub file: String,
    /// 1-based document number in the file; `None` when the file itself is
    /// unreadable, or the object came from the Kubernetes API, not a file.
    pub document: Option<usize>,
    /// `Kind name` or `Kind namespace/name`, when known.
    pub object: Option<String>,
    /// Dotted field path, e.g. `spec.ingress[0].ports[1]`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(doc) = self.document {
            write!(f, ": document {doc}")?;
        }
        if let Some(object) = &self.object {
            write!(f, " ({object})")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": {field}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// An error found while converting one object: the field path and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Deserializes `value` into `T`, reporting the path of the first field that does not fit.
pub(crate) fn typed<T: DeserializeOwned>(value: Value, at: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let field = match (at.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => at.to_owned(),
            (false, false) => format!("{at}.{inner}"),
        };
        FieldError::new(field, e.into_inner().to_string())
    })
}

#[derive(Deserialize)]
struct Head {
    #[serde(rename = "apiVersion", default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<HeadMetadata>,
}

#[derive(Deserialize)]
struct HeadMetadata {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
}

impl Manifests {
    /// Loads every document of `text` (YAML, or JSON when `file` ends in `.json`),
    /// adding what it finds. Returns the problems; objects without one are kept.
    pub fn load_str(&mut self, file: &str, text: &str) -> Vec<LoadError> {
        let mut errors = Vec::new();
        let documents = split_documents(file, text, &mut errors);
        for (index, document) in documents {
            self.load_value(file, Some(index), document, &mut errors);
        }
        errors
    }

    /// Loads one object given as JSON (as `palisade serve` distributes them);
    /// `origin` names it in errors.
    pub fn load_json(&mut self, origin: &str, json: &str) -> Vec<LoadError> {
        let mut errors = Vec::new();
        match serde_json::from_str::<Value>(json) {
            Ok(value) => self.load_value(origin, Some(1), value, &mut errors),
            Err(e) => errors.push(LoadError {
                file: origin.to_owned(),
                document: None,
                object: None,
                field: None,
                message: format!("invalid JSON: {e}"),
            }),
        }
        errors
    }

    /// Objects held, of every kind.
    pub fn len(&self) -> usize {
        let c = &self.cluster;
        c.namespaces.len()
            + c.service_accounts.len()
            + c.pods.len()
            + c.services.len()
            + c.endpoint_slices.len()
            + self.policies.len()
            + self.tiers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn load_value(
        &mut self,
        file: &str,
        document: Option<usize>,
        value: Value,
        errors: &mut Vec<LoadError>,
    ) {
        let error = |object: Option<String>, e: FieldError| LoadError {
            file: file.to_owned(),
            document,
            object,
            field: (!e.field.is_empty()).then_some(e.field),
            message: e.message,
        };
        if value.is_null() {
            return;
        }
        let head: Head = match typed(value.clone(), "") {
            Ok(head) => head,
            Err(e) => return errors.push(error(None, e)),
        };
        let kind = head.kind.clone().unwrap_or_default();
        if kind == "List" || kind.ends_with("List") {
            // `kind: List` (kubectl get -o yaml) and typed lists: each item in turn.
            let items = match value.get("items") {
                Some(Value::Array(items)) => items.clone(),
                _ => {
                    return errors.push(error(
                        Some(kind),
                        FieldError::new("items", "a List needs an items array"),
                    ))
                }
            };
            for (i, item) in items.into_iter().enumerate() {
                let mut sub = Vec::new();
                self.load_value(file, document, item, &mut sub);
                for mut e in sub {
                    e.field = Some(match e.field {
                        Some(f) => format!("items[{i}].{f}"),
                        None => format!("items[{i}]"),
                    });
                    errors.push(e);
                }
            }
            return;
        }
        let name = head.metadata.as_ref().and_then(|m| m.name.clone());
        let namespace = head.metadata.as_ref().and_then(|m| m.namespace.clone());
        let object = Some(match (&name, &namespace) {
            (Some(n), Some(ns)) => format!("{kind} {ns}/{n}"),
            (Some(n), None) => format!("{kind} {n}"),
            _ => kind.clone(),
        });
        let Some(api_version) = head.api_version else {
            return errors.push(error(object, FieldError::new("apiVersion", "missing")));
        };
        if kind.is_empty() {
            return errors.push(error(object, FieldError::new("kind", "missing")));
        }
        if name.as_deref().is_none_or(str::is_empty) {
            return errors.push(error(object, FieldError::new("metadata.name", "missing")));
        }
        let result = match (api_version.as_str(), kind.as_str()) {
            ("v1", "Namespace") => {
                kubernetes::namespace(value).map(|n| self.cluster.namespaces.push(n))
            }
            ("v1", "ServiceAccount") => {
                kubernetes::service_account(value).map(|s| self.cluster.service_accounts.push(s))
            }
            ("v1", "Pod") => kubernetes::pod(value).map(|p| self.cluster.pods.push(p)),
            ("v1", "Service") => kubernetes::service(value).map(|s| self.cluster.services.push(s)),
            ("discovery.k8s.io/v1", "EndpointSlice") => {
                kubernetes::endpoint_slice(value).map(|s| self.cluster.endpoint_slices.push(s))
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                kubernetes::network_policy(value).map(|p| self.policies.push(p))
            }
            ("projectcalico.org/v3" | "crd.projectcalico.org/v1", _) => {
                match calico::load(&kind, value) {
                    Some(Ok(calico::Object::Policy(p))) => {
                        self.policies.push(*p);
                        Ok(())
                    }
                    Some(Ok(calico::Object::Tier(t))) => {
                        self.tiers.push(t);
                        Ok(())
                    }
                    Some(Err(e)) => Err(e),
                    None => Ok(()), // another Calico kind (IPPool, ...): not policy
                }
            }
            // Deployments and the rest carry no policy.
            _ => Ok(()),
        };
        if let Err(e) = result {
            errors.push(error(object, e));
        }
    }
}

/// Splits a file into (1-based document number, value) pairs.
fn split_documents(file: &str, text: &str, errors: &mut Vec<LoadError>) -> Vec<(usize, Value)> {
    let whole_file_error = |document, message: String| LoadError {
        file: file.to_owned(),
        document,
        object: None,
        field: None,
        message,
    };
    if file.ends_with(".json") {
        return match serde_json::from_str::<Value>(text) {
            Ok(v) => vec![(1, v)],
            Err(e) => {
                errors.push(whole_file_error(Some(1), format!("invalid JSON: {e}")));
                Vec::new()
            }
        };
    }
    let mut out = Vec::new();
    for (i, document) in serde_norway::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(document) {
            Ok(v) => out.push((i + 1, v)),
            Err(e) => {
                // The YAML stream cannot be resumed after a syntax error.
                errors.push(whole_file_error(Some(i + 1), format!("invalid YAML: {e}")));
                break;
            }
        }
    }
    out
}

/// `types` / `policyTypes` as written: (ingress, egress).
pub(crate) fn policy_types(types: &[String], at: &str) -> Result<(bool, bool), FieldError> {
    let mut out = (false, false);
    for (i, t) in types.iter().enumerate() {
        match t.as_str() {
            "Ingress" => out.0 = true,
            "Egress" => out.1 = true,
            other => {
                return Err(FieldError::new(
                    format!("{at}[{i}]"),
                    format!("unknown policy type {other:?} (Ingress or Egress)"),
                ))
            }
        }
    }
    Ok(out)
}

/// `at` + `.field`, for building error paths.
pub(crate) fn join(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_owned()
    } else {
        format!("{at}.{field}")
    }
}
