//! deploy/kubernetes, checked: every document deserializes into its
//! k8s-openapi type and serializes back to what was written (so a misspelled
//! field fails), the Deployment's arguments parse as `palisade serve`'s, the
//! webhook reaches the Service port that leads to the port the Deployment
//! serves the webhook on, and RBAC grants what the control plane does and no more.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

use std::collections::BTreeSet;
use std::path::Path;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::Value;

use crate::k8s::kinds::{kubernetes_kinds, CALICO_KINDS};
use crate::serve::ServeArgs;

#[derive(Default)]
struct Deploy {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    roles: Vec<Role>,
    role_bindings: Vec<RoleBinding>,
    deployments: Vec<Deployment>,
    budgets: Vec<PodDisruptionBudget>,
    services: Vec<Service>,
    webhooks: Vec<MutatingWebhookConfiguration>,
}

/// Deserializes `doc` as `T` (naming the file and field on error) and checks it
/// serializes back to the same JSON.
fn typed<T: DeserializeOwned + serde::Serialize>(file: &str, doc: &Value) -> T {
    let object: T = serde_path_to_error::deserialize(doc.clone())
        .unwrap_or_else(|e| panic!("{file}: {}: {}", e.path(), e.inner()));
    let back = serde_json::to_value(&object).unwrap();
    assert_eq!(
        &back, doc,
        "{file}: a field k8s-openapi does not know (misspelled?)"
    );
    object
}

fn load() -> Deploy {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut d = Deploy::default();
    for path in files
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(path).unwrap();
        for document in serde_norway::Deserializer::from_str(&text) {
            let doc = Value::deserialize(document).unwrap();
            let kind = doc["kind"].as_str().unwrap_or_default().to_owned();
            match kind.as_str() {
                "Namespace" => d.namespaces.push(typed(&file, &doc)),
                "ServiceAccount" => d.service_accounts.push(typed(&file, &doc)),
                "ClusterRole" => d.cluster_roles.push(typed(&file, &doc)),
                "ClusterRoleBinding" => d.cluster_role_bindings.push(typed(&file, &doc)),
                "Role" => d.roles.push(typed(&file, &doc)),
                "RoleBinding" => d.role_bindings.push(typed(&file, &doc)),
                "Deployment" => d.deployments.push(typed(&file, &doc)),
                "PodDisruptionBudget" => d.budgets.push(typed(&file, &doc)),
                "Service" => d.services.push(typed(&file, &doc)),
                "MutatingWebhookConfiguration" => d.webhooks.push(typed(&file, &doc)),
                other => panic!("{file}: a {other:?} this test does not check"),
            }
        }
    }
    d
}

fn pod_spec(deployment: &Deployment) -> &k8s_openapi::api::core::v1::PodSpec {
    let template = &deployment.spec.as_ref().unwrap().template;
    template.spec.as_ref().unwrap()
}

fn service_ports(
    service: &Service,
) -> impl Iterator<Item = &k8s_openapi::api::core::v1::ServicePort> {
    service.spec.iter().flat_map(|s| s.ports.iter().flatten())
}

fn serve_args(deployment: &Deployment) -> ServeArgs {
    #[derive(clap::Parser)]
    struct Command {
        #[command(subcommand)]
        command: Sub,
    }
    #[derive(clap::Subcommand)]
    enum Sub {
        Serve(ServeArgs),
    }
    let container = &pod_spec(deployment).containers[0];
    assert_eq!(
        container.command.as_deref(),
        Some(&["palisade".to_owned()][..])
    );
    let argv = std::iter::once("palisade".to_owned()).chain(container.args.clone().unwrap());
    let parsed = <Command as clap::Parser>::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("Deployment args: {e}"));
    let Sub::Serve(args) = parsed.command;
    args
}

#[test]
fn every_manifest_is_its_kubernetes_type() {
    let d = load();
    assert_eq!(d.namespaces.len(), 1);
    assert_eq!(d.deployments.len(), 1);
    assert_eq!(d.services.len(), 1);
    assert_eq!(d.webhooks.len(), 1);
    assert_eq!(d.deployments[0].spec.as_ref().unwrap().replicas, Some(2));
}

#[test]
fn the_webhook_reaches_the_port_the_deployment_serves_it_on() {
    let d = load();
    let (deployment, service, config) = (&d.deployments[0], &d.services[0], &d.webhooks[0]);
    let webhook = &config.webhooks.as_ref().unwrap()[0];
    let target = webhook.client_config.service.as_ref().unwrap();
    assert_eq!(Some(&target.name), service.metadata.name.as_ref());
    assert_eq!(Some(&target.namespace), service.metadata.namespace.as_ref());
    assert_eq!(target.path.as_deref(), Some("/inject"));

    // Service port -> its targetPort -> the container port -> --webhook-listen.
    let port = service_ports(service)
        .find(|p| Some(p.port) == target.port)
        .expect("the webhook's port is one of the Service's");
    let pod = pod_spec(deployment);
    let container = &pod.containers[0];
    let container_port = container
        .ports
        .iter()
        .flatten()
        .find(|p| match port.target_port.as_ref().unwrap() {
            IntOrString::String(name) => p.name.as_ref() == Some(name),
            IntOrString::Int(n) => p.container_port == *n,
        })
        .expect("the Service's targetPort is a port of the container");
    let args = serve_args(deployment);
    let listen = args.webhook.webhook_listen.expect("--webhook-listen");
    assert_eq!(i32::from(listen.port()), container_port.container_port);
    // The Service selects the Deployment's pods.
    let selector = service.spec.as_ref().unwrap().selector.as_ref().unwrap();
    let labels = deployment
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .labels
        .as_ref()
        .unwrap();
    assert!(selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    // The certificate names the Service's DNS name, and the config it patches is this one.
    let dns = format!("{}.{}.svc", target.name, target.namespace);
    assert!(
        args.webhook.webhook_dns_names.contains(&dns),
        "{:?}",
        args.webhook.webhook_dns_names
    );
    assert_eq!(
        args.webhook.webhook_config.as_ref(),
        config.metadata.name.as_ref()
    );
    // Injected proxies dial the Service's gRPC port, which leads to --listen.
    let grpc = service_ports(service)
        .find(|p| p.name.as_deref() == Some("grpc"))
        .unwrap();
    assert_eq!(
        args.webhook.proxy_control_plane,
        format!("{dns}:{}", grpc.port)
    );
    assert_eq!(
        i32::from(args.listen.port()),
        container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("grpc"))
            .unwrap()
            .container_port
    );
    assert_eq!(
        args.webhook.proxy_image,
        *container.image.as_ref().unwrap(),
        "proxies run the same release"
    );
    assert!(args.kubernetes);

    // What the issue asks of the webhook configuration.
    assert_eq!(webhook.failure_policy.as_deref(), Some("Fail"));
    assert_eq!(webhook.side_effects, "None");
    assert_eq!(webhook.timeout_seconds, Some(5));
    assert!(webhook.admission_review_versions.contains(&"v1".to_owned()));
    let excluded = &webhook
        .namespace_selector
        .as_ref()
        .unwrap()
        .match_expressions
        .as_ref()
        .unwrap()[0];
    assert_eq!(
        (excluded.key.as_str(), excluded.operator.as_str()),
        ("kubernetes.io/metadata.name", "NotIn")
    );
    let values: BTreeSet<&str> = excluded
        .values
        .iter()
        .flatten()
        .map(String::as_str)
        .collect();
    assert_eq!(
        values,
        BTreeSet::from(crate::webhook::EXCLUDED_NAMESPACES),
        "what check-inject skips"
    );
    assert_eq!(
        Some(&target.namespace),
        d.namespaces[0].metadata.name.as_ref()
    );
    // The control plane runs as the ServiceAccount RBAC binds.
    assert_eq!(
        pod.service_account_name,
        d.service_accounts[0].metadata.name
    );
}

/// `(group, resource) -> verbs` over all rules.
fn grants(rules: &[PolicyRule]) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for rule in rules {
        for group in rule.api_groups.iter().flatten() {
            for resource in rule.resources.iter().flatten() {
                for verb in &rule.verbs {
                    out.insert((group.clone(), resource.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn rbac_grants_exactly_what_the_control_plane_does() {
    let d = load();
    let cluster = grants(d.cluster_roles[0].rules.as_deref().unwrap());
    let mut wanted = BTreeSet::new();
    for kind in kubernetes_kinds() {
        for verb in ["list", "watch"] {
            wanted.insert((kind.group.clone(), kind.plural.clone(), verb.to_owned()));
        }
    }
    for group in ["projectcalico.org", "crd.projectcalico.org"] {
        for kind in CALICO_KINDS {
            for verb in ["list", "watch"] {
                wanted.insert((
                    group.to_owned(),
                    format!("{}s", kind.to_lowercase()).replace("policys", "policies"),
                    verb.to_owned(),
                ));
            }
        }
    }
    wanted.insert((
        "authentication.k8s.io".into(),
        "tokenreviews".into(),
        "create".into(),
    ));
    wanted.insert((
        "admissionregistration.k8s.io".into(),
        "mutatingwebhookconfigurations".into(),
        "get".into(),
    ));
    wanted.insert((
        "admissionregistration.k8s.io".into(),
        "mutatingwebhookconfigurations".into(),
        "update".into(),
    ));
    assert_eq!(cluster, wanted, "ClusterRole grants");
    // Webhook configurations: only our own, by name.
    let rule = d.cluster_roles[0]
        .rules
        .as_ref()
        .unwrap()
        .iter()
        .find(|r| {
            r.resources
                .iter()
                .flatten()
                .any(|r| r == "mutatingwebhookconfigurations")
        })
        .unwrap();
    assert_eq!(
        rule.resource_names.as_deref(),
        Some(&["palisade-sidecar-injector".to_owned()][..])
    );
    // Secrets: only in palisade-system; read only the CA's.
    let role = &d.roles[0];
    assert_eq!(role.metadata.namespace.as_deref(), Some("palisade-system"));
    for rule in role.rules.iter().flatten() {
        if rule.verbs.contains(&"get".to_owned()) {
            assert_eq!(
                rule.resource_names.as_deref(),
                Some(&["palisade-ca".to_owned()][..])
            );
        }
        assert!(
            rule.verbs.iter().all(|v| v == "get" || v == "create"),
            "{rule:?}"
        );
    }
    let args = serve_args(&d.deployments[0]);
    assert_eq!(
        args.ca_secret.as_deref(),
        Some("palisade-system/palisade-ca")
    );
    // Both bindings name the control plane's ServiceAccount.
    let sa = d.service_accounts[0].metadata.name.clone().unwrap();
    for subjects in [
        &d.cluster_role_bindings[0].subjects,
        &d.role_bindings[0].subjects,
    ] {
        assert_eq!(subjects.as_ref().unwrap()[0].name, sa);
    }
}
