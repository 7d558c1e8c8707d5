//! What the injector adds to a pod, and whether it should: a pure function of
//! the pod, its namespace's labels and the mesh settings.
//!
//! The pod gets, as init containers in this order, before any of its own:
//! - `palisade-init`: `palisade-proxy init` with NET_ADMIN/NET_RAW, writes the
//!   iptables interception rules and exits;
//! - `palisade-proxy`: a native sidecar (init container with
//!   `restartPolicy: Always`). The kubelet starts the pod's own init containers
//!   and app only once its startup probe (`/ready`: identity and policy held)
//!   passes, and a Job completes when its app containers exit.
//!
//! plus a projected service-account token for audience `palisade` (the proxy's
//! proof of identity, checked with TokenReview) and the `palisade.io/injected`
//! annotation. Kubelet probes come from the node's address, which init leaves
//! to reach the app directly (`$(HOST_IP)`), as Calico lets the host reach its
//! own pods.

use std::collections::BTreeMap;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};

use super::annotations::{self, PodOptions, INJECT, INJECTED};

pub const PROXY_CONTAINER: &str = "palisade-proxy";
pub const INIT_CONTAINER: &str = "palisade-init";
pub const TOKEN_VOLUME: &str = "palisade-token";
pub const TOKEN_DIR: &str = "/var/run/secrets/palisade/tokens";
/// The proxy's admin port: probes and metrics; never intercepted.
pub const ADMIN_PORT: u16 = 15020;

/// Mesh-wide settings of the injector (flags of `palisade serve`).
#[derive(Clone, Debug)]
pub struct InjectConfig {
    pub proxy_image: String,
    /// HOST:PORT of the control plane, as proxies reach it.
    pub control_plane: String,
    pub trust_domain: String,
    /// The control plane's root certificate(s), PEM, given to each proxy.
    pub ca_pem: String,
    pub token_audience: String,
    pub proxy_uid: i64,
}

/// Whether a pod gets a proxy, and why not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Inject(PodOptions),
    Skip(String),
}

/// Decides for `pod` in a namespace labelled `namespace_labels`. A pod's own
/// annotation wins over its namespace's label, as with Istio.
pub fn decide(pod: &Pod, namespace_labels: &BTreeMap<String, String>) -> Result<Decision, String> {
    let meta = &pod.metadata;
    let empty = BTreeMap::new();
    let pod_annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let options = annotations::read(pod_annotations)?;
    let spec = pod.spec.as_ref();
    let has = |name: &str| {
        spec.is_some_and(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
                .any(|c| c.name == name)
        })
    };
    if pod_annotations.contains_key(INJECTED) || has(PROXY_CONTAINER) || has(INIT_CONTAINER) {
        return Ok(Decision::Skip("already injected".into()));
    }
    match options.inject {
        Some(false) => return Ok(Decision::Skip("opted out by annotation".into())),
        Some(true) => {}
        None => match namespace_labels.get(INJECT).map(String::as_str) {
            Some("enabled") => {}
            _ => {
                return Ok(Decision::Skip(format!(
                    "neither the pod's annotation nor its namespace's label {INJECT} is enabled"
                )))
            }
        },
    }
    if spec.and_then(|s| s.host_network) == Some(true) {
        // iptables in the host's namespace would capture the node's own traffic.
        return Ok(Decision::Skip("hostNetwork pod".into()));
    }
    Ok(Decision::Inject(options))
}

/// The JSON patch that injects the proxy into `pod`.
pub fn patch(pod: &Pod, options: &PodOptions, config: &InjectConfig) -> Patch {
    let spec = pod.spec.as_ref();
    let mut ops = Vec::new();
    let mut add = |path: &[&str], value: Value| {
        ops.push(PatchOperation::Add(AddOperation {
            path: PointerBuf::from_tokens(path.iter().copied()),
            value,
        }));
    };
    let (init, proxy) = (init_container(options, config), proxy_container(config));
    if spec
        .and_then(|s| s.init_containers.as_ref())
        .is_some_and(|c| !c.is_empty())
    {
        // Both before the pod's own init containers, init first.
        add(&["spec", "initContainers", "0"], proxy);
        add(&["spec", "initContainers", "0"], init);
    } else {
        add(&["spec", "initContainers"], json!([init, proxy]));
    }
    let volume = token_volume(config);
    if spec.and_then(|s| s.volumes.as_ref()).is_some() {
        add(&["spec", "volumes", "-"], volume);
    } else {
        add(&["spec", "volumes"], json!([volume]));
    }
    let version = env!("CARGO_PKG_VERSION");
    if pod.metadata.annotations.is_some() {
        add(&["metadata", "annotations", INJECTED], json!(version));
    } else {
        add(&["metadata", "annotations"], json!({ INJECTED: version }));
    }
    Patch(ops)
}

fn init_container(options: &PodOptions, config: &InjectConfig) -> Value {
    let join = |items: Vec<String>| items.join(",");
    let mut inbound_ports = vec![ADMIN_PORT.to_string()];
    inbound_ports.extend(options.exclude_inbound_ports.iter().map(|p| p.to_string()));
    // The node (kubelet probes) reaches the app directly.
    let mut inbound_cidrs = vec!["$(HOST_IP)".to_owned()];
    inbound_cidrs.extend(options.exclude_inbound_cidrs.iter().map(|n| n.to_string()));
    let mut args = vec![
        "init".to_owned(),
        "--proxy-uid".to_owned(),
        config.proxy_uid.to_string(),
        "--exclude-inbound-ports".to_owned(),
        join(inbound_ports),
        "--exclude-inbound-cidrs".to_owned(),
        join(inbound_cidrs),
    ];
    if !options.exclude_outbound_ports.is_empty() {
        args.push("--exclude-outbound-ports".into());
        args.push(join(
            options
                .exclude_outbound_ports
                .iter()
                .map(|p| p.to_string())
                .collect(),
        ));
    }
    if !options.exclude_outbound_cidrs.is_empty() {
        args.push("--exclude-outbound-cidrs".into());
        args.push(join(
            options
                .exclude_outbound_cidrs
                .iter()
                .map(|n| n.to_string())
                .collect(),
        ));
    }
    json!({
        "name": INIT_CONTAINER,
        "image": config.proxy_image,
        "command": ["palisade-proxy"],
        "imagePullPolicy": "IfNotPresent",
        "args": args,
        "env": [{"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}}],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "10Mi"},
            "limits": {"cpu": "100m", "memory": "50Mi"}
        }
    })
}

fn proxy_container(config: &InjectConfig) -> Value {
    let probe = |path: &str, period: u32, failures: u32| {
        json!({
            "httpGet": {"path": path, "port": ADMIN_PORT},
            "periodSeconds": period,
            "failureThreshold": failures
        })
    };
    let field = |name: &str, path: &str| json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    json!({
        "name": PROXY_CONTAINER,
        "image": config.proxy_image,
        "command": ["palisade-proxy"],
        "imagePullPolicy": "IfNotPresent",
        "restartPolicy": "Always",
        "args": [
            "run",
            "--admin", format!("0.0.0.0:{ADMIN_PORT}"),
            "--trust-domain", config.trust_domain
        ],
        "env": [
            field("POD_NAME", "metadata.name"),
            field("POD_NAMESPACE", "metadata.namespace"),
            {"name": "PALISADE_POD", "value": "$(POD_NAMESPACE)/$(POD_NAME)"},
            {"name": "PALISADE_CONTROL_PLANE", "value": config.control_plane},
            {"name": "PALISADE_BOOTSTRAP_TOKEN_FILE", "value": format!("{TOKEN_DIR}/token")},
            {"name": "PALISADE_CONTROL_PLANE_CA_PEM", "value": config.ca_pem}
        ],
        "ports": [{"name": "palisade-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}],
        // Startup: the app starts only once the proxy holds identity and policy.
        "startupProbe": probe("/ready", 1, 120),
        "readinessProbe": probe("/ready", 5, 3),
        "livenessProbe": probe("/live", 10, 3),
        "securityContext": {
            "runAsUser": config.proxy_uid,
            "runAsGroup": config.proxy_uid,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]}
        },
        "resources": {
            "requests": {"cpu": "10m", "memory": "20Mi"},
            "limits": {"memory": "128Mi"}
        },
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}]
    })
}

fn token_volume(config: &InjectConfig) -> Value {
    json!({
        "name": TOKEN_VOLUME,
        "projected": {"sources": [{"serviceAccountToken": {
            "audience": config.token_audience,
            "expirationSeconds": 3600,
            "path": "token"
        }}]}
    })
}
