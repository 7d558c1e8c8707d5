//! `palisade check-inject`: pods that should have a sidecar and do not (made
//! before their namespace was labelled, or while the webhook was down), read
//! from the cluster of the kubeconfig. The same decision the webhook makes.
//! Exit 1 when there are any, so CI can gate on it.

use std::collections::BTreeMap;
use std::process::ExitCode;

use clap::Args;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use serde::Serialize;

use super::Output;
use crate::webhook::{decide, Decision, EXCLUDED_NAMESPACES};

#[derive(Args, Debug)]
pub struct CheckInjectArgs {
    #[arg(long, short = 'o', value_enum, default_value_t)]
    output: Output,
}

/// A pod without the proxy it should have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Missing {
    /// `namespace/name`
    pub pod: String,
    /// Why it should have one, or what stops it from getting one.
    pub reason: String,
}

pub fn run(args: CheckInjectArgs) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (namespaces, pods) = runtime.block_on(async {
        let client = crate::k8s::client().await?;
        crate::k8s::list::namespaces_and_pods(&client).await
    })?;
    let found = missing(&namespaces, &pods);
    match args.output {
        Output::Json => println!("{}", serde_json::to_string_pretty(&found)?),
        Output::Text if found.is_empty() => {
            println!(
                "every pod that should have a sidecar has one ({} pods checked)",
                pods.len()
            )
        }
        Output::Text => {
            let width = found.iter().map(|m| m.pod.len()).max().unwrap_or(0).max(3);
            println!("{:width$}  WHY", "POD");
            for m in &found {
                println!("{:width$}  {}", m.pod, m.reason);
            }
            println!(
                "\n{} pods without a sidecar: restart their workloads (kubectl rollout restart ...) to inject them",
                found.len()
            );
        }
    }
    Ok(if found.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Running pods the webhook would inject now: they have no proxy.
pub fn missing(namespaces: &[Namespace], pods: &[Pod]) -> Vec<Missing> {
    let labels: BTreeMap<&str, BTreeMap<String, String>> = namespaces
        .iter()
        .filter_map(|n| {
            Some((
                n.metadata.name.as_deref()?,
                n.metadata.labels.clone().unwrap_or_default(),
            ))
        })
        .collect();
    let mut out = Vec::new();
    for pod in pods {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
        let finished = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.as_deref())
            .is_some_and(|p| p == "Succeeded" || p == "Failed");
        if EXCLUDED_NAMESPACES.contains(&namespace) || finished {
            continue;
        }
        let name = format!(
            "{namespace}/{}",
            pod.metadata.name.as_deref().unwrap_or_default()
        );
        let empty = BTreeMap::new();
        match decide(pod, labels.get(namespace).unwrap_or(&empty)) {
            Ok(Decision::Inject(_)) => out.push(Missing {
                pod: name,
                reason: "opted in, created without the proxy".into(),
            }),
            Ok(Decision::Skip(_)) => {}
            Err(e) => out.push(Missing {
                pod: name,
                reason: format!("the webhook would refuse it: {e}"),
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::indexing_slicing)]

    use super::*;
    use crate::k8s::fake_api::fixture;

    fn items<T: serde::de::DeserializeOwned>(name: &str) -> Vec<T> {
        let list: serde_json::Value = serde_json::from_str(&fixture(name)).unwrap();
        serde_json::from_value(list["items"].clone()).unwrap()
    }

    #[test]
    fn lists_opted_in_pods_without_a_proxy_and_nothing_else() {
        let namespaces: Vec<Namespace> = items("namespaces.list.json");
        let mut pods: Vec<Pod> = items("pods.list.json");
        // Both recorded pods are in namespaces labelled palisade.io/inject=enabled.
        let found: Vec<String> = missing(&namespaces, &pods)
            .into_iter()
            .map(|m| m.pod)
            .collect();
        assert_eq!(
            found,
            [
                "front/nginx-front-6d8f7b9c5-k2xjq",
                "back/nginx-back-7c9d4f6b8-q8wzt"
            ]
        );
        // One injected (it carries the sidecar), one opted out, one in kube-system, one finished.
        let mut injected = pods[0].clone();
        injected.metadata.annotations = Some(BTreeMap::from([(
            "palisade.io/injected".into(),
            "0.1.0".into(),
        )]));
        let mut opted_out = pods[1].clone();
        opted_out.metadata.annotations = Some(BTreeMap::from([(
            "palisade.io/inject".into(),
            "disabled".into(),
        )]));
        let mut system = pods[1].clone();
        system.metadata.namespace = Some("kube-system".into());
        system.metadata.annotations = Some(BTreeMap::from([(
            "palisade.io/inject".into(),
            "enabled".into(),
        )]));
        let mut done = pods[0].clone();
        done.status.as_mut().unwrap().phase = Some("Succeeded".into());
        pods = vec![injected, opted_out, system, done];
        assert!(
            missing(&namespaces, &pods).is_empty(),
            "{:?}",
            missing(&namespaces, &pods)
        );
        // A pod the webhook would refuse is reported with why.
        let mut bad = items::<Pod>("pods.list.json")[0].clone();
        bad.metadata.annotations = Some(BTreeMap::from([(
            "config.linkerd.io/skip-outbound-ports".into(),
            "smtp".into(),
        )]));
        let found = missing(&namespaces, &[bad]);
        assert!(found[0].reason.contains("skip-outbound-ports"), "{found:?}");
    }
}
