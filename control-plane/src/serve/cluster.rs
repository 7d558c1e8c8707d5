//! `palisade serve --kubernetes`: the cluster source's writer, and the
//! injection webhook beside it.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use futures::{Stream, StreamExt};
use kube::core::ApiResource;
use tokio::sync::watch;

use super::source::Change;
use super::world::World;
use super::{publish_status, ServeArgs, Shared};
use crate::k8s::kinds::{discover_calico, kubernetes_kinds};
use crate::k8s::source::ClusterSource;
use crate::k8s::watch::{events, KindEvent};
use crate::webhook::{self, InjectConfig};

/// Up to this many events that are ready at once make one version.
const BATCH: usize = 512;

pub type Events = Pin<Box<dyn Stream<Item = Vec<KindEvent>> + Send>>;

#[derive(clap::Args, Debug, Clone)]
pub struct WebhookArgs {
    /// Serve the sidecar injection webhook (HTTPS, POST /inject) on this address.
    #[arg(long, requires = "kubernetes")]
    pub webhook_listen: Option<SocketAddr>,
    /// DNS names of the webhook's serving certificate (its Service's names).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "palisade-control-plane.palisade-system.svc"
    )]
    pub webhook_dns_names: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle this control plane keeps
    /// set to its CA root.
    #[arg(long)]
    pub webhook_config: Option<String>,
    /// The image injected proxies run (both `palisade-proxy init` and `run`).
    #[arg(long, default_value = "ghcr.io/palisade-mesh/palisade:0.1.0")]
    pub proxy_image: String,
    /// HOST:PORT injected proxies reach the control plane at.
    #[arg(
        long,
        default_value = "palisade-control-plane.palisade-system.svc:15012"
    )]
    pub proxy_control_plane: String,
}

/// Discovers what to watch and reads every kind completely: a world made
/// before that would lack policies that exist, and allow what they deny.
pub async fn sync(client: kube::Client) -> anyhow::Result<(ClusterSource, Events)> {
    let calico = loop {
        match discover_calico(&client).await {
            Ok(calico) => break calico,
            Err(e) => {
                eprintln!("warning: discovering Calico's API group: {e} (retrying)");
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    let mut kinds: Vec<ApiResource> = kubernetes_kinds();
    kinds.extend(calico.kinds().iter().cloned());
    eprintln!(
        "watching {}",
        kinds
            .iter()
            .map(|k| format!("{} {}", k.api_version, k.plural))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut stream: Events = Box::pin(events(client, &kinds).ready_chunks(BATCH));
    let mut source = ClusterSource::default();
    while !source.synced(&kinds) {
        let Some(batch) = stream.next().await else {
            anyhow::bail!("the watches ended before the first list was complete");
        };
        for (kind, event) in batch {
            source.apply(&kind, event);
        }
    }
    Ok((source, stream))
}

/// The one writer of the world on a cluster: each batch of watch events -> the
/// next version.
pub async fn follow(
    mut source: ClusterSource,
    mut stream: Events,
    world_tx: watch::Sender<Arc<World>>,
    shared: Arc<Shared>,
    trust_domain: String,
) {
    while let Some(batch) = stream.next().await {
        let mut change = Change::default();
        for (kind, event) in batch {
            change.merge(source.apply(&kind, event));
        }
        if !change.is_empty() {
            super::world::publish(&world_tx, change, &trust_domain);
        }
        publish_status(&shared, source.problems());
    }
}

/// Starts the injection webhook when `--webhook-listen` is given: a serving
/// certificate from the CA (re-issued daily, valid 30 days), the caBundle of
/// the webhook configuration kept at the CA root, namespaces' labels read from
/// the world.
pub async fn start_webhook(
    args: &ServeArgs,
    client: kube::Client,
    shared: &Arc<Shared>,
) -> anyhow::Result<()> {
    let Some(addr) = args.webhook.webhook_listen else {
        return Ok(());
    };
    let names = args.webhook.webhook_dns_names.clone();
    let tls = Arc::new(ArcSwap::from_pointee(serving_config(shared, &names)?));
    {
        let (tls, shared, names) = (tls.clone(), shared.clone(), names.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(24 * 3600)).await;
                match serving_config(&shared, &names) {
                    Ok(config) => tls.store(Arc::new(config)),
                    Err(e) => eprintln!("warning: re-issuing the webhook's certificate: {e}"),
                }
            }
        });
    }
    if let Some(name) = args.webhook.webhook_config.clone() {
        let ca_pem = shared.ca.root_pem().to_owned();
        tokio::spawn(async move {
            while let Err(e) =
                crate::k8s::ca_secret::publish_ca_bundle(&client, &name, &ca_pem).await
            {
                eprintln!("warning: setting the caBundle: {e:#} (retrying)");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        });
    }
    let config = Arc::new(InjectConfig {
        proxy_image: args.webhook.proxy_image.clone(),
        control_plane: args.webhook.proxy_control_plane.clone(),
        trust_domain: args.trust_domain.clone(),
        ca_pem: shared.ca.root_pem().to_owned(),
        token_audience: args.token_audience.clone(),
        proxy_uid: 1337,
    });
    let world = shared.world.clone();
    let labels: webhook::NamespaceLabels = Arc::new(move |ns| world.borrow().namespace_labels(ns));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    eprintln!("injection webhook on https://{addr}/inject");
    tokio::spawn(async move {
        if let Err(e) = webhook::serve(listener, tls, config, labels).await {
            eprintln!("error: the injection webhook stopped: {e}");
        }
    });
    Ok(())
}

fn serving_config(shared: &Shared, names: &[String]) -> anyhow::Result<rustls::ServerConfig> {
    let cert = shared
        .ca
        .issue_serving(names, Duration::from_secs(30 * 24 * 3600))?;
    let chain = vec![cert.der, shared.ca.root().clone()];
    Ok(palisade_certs::tls::serving_config(chain, &cert.key_pem)?)
}
