//! The sidecar injector: a mutating admission webhook (admission.k8s.io/v1).
//!
//! ```text
//! POST /inject (TLS) -> review(): AdmissionReview -> decide() -> patch() -> AdmissionReview
//! ```
//!
//! The API server sends every pod CREATE in a namespace the webhook
//! configuration selects. The answer echoes the request's uid and carries a
//! JSONPatch, or no patch when the pod is skipped. A body that is not a valid
//! AdmissionReview (or a pod that does not parse) gets an error response naming
//! what is wrong; nothing in it can panic the control plane. A dry-run request
//! gets the same answer, but is not counted or logged as an injection (the
//! webhook declares `sideEffects: None`).

mod annotations;
mod inject;
mod server;
#[cfg(test)]
pub(crate) mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview, Operation};
use kube::core::DynamicObject;

pub use inject::{decide, Decision, InjectConfig};
#[cfg(test)]
use inject::{INIT_CONTAINER, PROXY_CONTAINER};

/// Namespaces the webhook configuration never sends (deploy/kubernetes says the
/// same; a test checks they agree).
pub const EXCLUDED_NAMESPACES: [&str; 2] = ["kube-system", "palisade-system"];
pub use server::{serve, NamespaceLabels};

/// The answer to one AdmissionReview, and what happened, for logs and counters.
#[derive(Debug)]
pub struct Reviewed {
    pub review: AdmissionReview<DynamicObject>,
    pub outcome: Outcome,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Injected `namespace/name` (the name may be a generateName prefix).
    Injected(String),
    /// The same, for a dry run: nothing to record.
    DryRun(String),
    Skipped(String),
    /// Not a pod CREATE: allowed unchanged.
    NotApplicable,
    Refused(String),
}

/// Answers the AdmissionReview in `body`. `namespace_labels` looks up the labels
/// of a namespace by name (from the control plane's watched state).
pub fn review(
    body: &[u8],
    config: &InjectConfig,
    namespace_labels: impl Fn(&str) -> Option<BTreeMap<String, String>>,
) -> Reviewed {
    let refuse = |response: AdmissionResponse, why: String| Reviewed {
        review: response.into_review(),
        outcome: Outcome::Refused(why),
    };
    // The API server matches the answer by uid: echo it whenever the body has
    // one, even if the rest does not parse.
    let invalid = |why: &str| {
        let mut response = AdmissionResponse::invalid(why);
        response.uid = uid_of(body);
        response
    };
    let parsed: AdmissionReview<DynamicObject> = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => {
            let why = format!("not a valid AdmissionReview: {e}");
            return refuse(invalid(&why), why);
        }
    };
    if parsed.types.api_version != "admission.k8s.io/v1" || parsed.types.kind != "AdmissionReview" {
        let why = format!(
            "expected admission.k8s.io/v1 AdmissionReview, got {:?} {:?}",
            parsed.types.api_version, parsed.types.kind
        );
        return refuse(invalid(&why), why);
    }
    let request: AdmissionRequest<DynamicObject> = match parsed.try_into() {
        Ok(r) => r,
        Err(_) => {
            let why = "the AdmissionReview has no request".to_owned();
            return refuse(invalid(&why), why);
        }
    };
    let response = AdmissionResponse::from(&request);
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    if !is_pod || request.operation != Operation::Create || request.sub_resource.is_some() {
        return Reviewed {
            review: response.into_review(),
            outcome: Outcome::NotApplicable,
        };
    }
    let Some(object) = request.object.as_ref() else {
        let why = "a pod CREATE without an object".to_owned();
        return refuse(response.deny(&why), why);
    };
    let pod: Pod = match serde_json::to_value(object)
        .map_err(|e| e.to_string())
        .and_then(|v| {
            serde_path_to_error::deserialize(v).map_err(|e| format!("{}: {}", e.path(), e.inner()))
        }) {
        Ok(pod) => pod,
        Err(e) => {
            let why = format!("request.object is not a valid Pod: {e}");
            return refuse(response.deny(&why), why);
        }
    };
    let namespace = request
        .namespace
        .clone()
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let name = pod
        .metadata
        .name
        .clone()
        .or_else(|| pod.metadata.generate_name.clone())
        .unwrap_or_default();
    let who = format!("{namespace}/{name}");
    let labels = namespace_labels(&namespace).unwrap_or_default();
    let options = match inject::decide(&pod, &labels) {
        Ok(inject::Decision::Inject(options)) => options,
        Ok(inject::Decision::Skip(why)) => {
            return Reviewed {
                review: response.into_review(),
                outcome: Outcome::Skipped(format!("{who}: {why}")),
            }
        }
        Err(why) => {
            let why = format!("{who}: {why}");
            return refuse(response.deny(&why), why);
        }
    };
    let patch = inject::patch(&pod, &options, config);
    match response.clone().with_patch(patch) {
        Ok(patched) => Reviewed {
            review: patched.into_review(),
            outcome: if request.dry_run {
                Outcome::DryRun(who)
            } else {
                Outcome::Injected(who)
            },
        },
        Err(e) => {
            let why = format!("{who}: the patch did not serialize: {e}");
            refuse(response.deny(&why), why)
        }
    }
}

/// `request.uid` of a body that may not be a valid AdmissionReview; empty if none.
fn uid_of(body: &[u8]) -> String {
    serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v.pointer("/request/uid")?.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The answer as the API server reads it. `AdmissionResponse.patch` is a Go
/// `[]byte`, which JSON carries as a base64 string (the admission.k8s.io/v1
/// reference); kube-core writes the bytes as a number array, so the patch is
/// re-encoded here.
pub fn to_json(review: &AdmissionReview<DynamicObject>) -> serde_json::Result<Vec<u8>> {
    use base64::Engine;
    let mut value = serde_json::to_value(review)?;
    if let Some(patch) = value.pointer_mut("/response/patch") {
        if let Some(numbers) = patch.as_array() {
            let bytes: Vec<u8> = numbers
                .iter()
                .filter_map(|n| n.as_u64().and_then(|n| u8::try_from(n).ok()))
                .collect();
            *patch = base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into();
        }
    }
    serde_json::to_vec(&value)
}
