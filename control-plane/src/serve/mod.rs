//! `palisade serve`: the control plane. A source -> versioned world -> per-proxy
//! streams, plus the CA service, on one mTLS gRPC port; on a cluster also the
//! sidecar injection webhook on its own HTTPS port.
//!
//! ```text
//! manifest dir --notify--> ManifestSource::rescan      (files.rs, local mesh)
//! Kubernetes API --watchers--> ClusterSource::apply    (cluster.rs, --kubernetes)
//!     -> World::next (one writer) --watch--> one stream task per proxy
//!          snapshot, then merged deltas; acks/nacks -> StatusBoard (status file)
//! Identity.Certify (bootstrap token or projected SA token + CSR) -> CA -> the pod's identity
//! ```
//!
//! What it distributes is the compiler's input, validated object by object (an
//! invalid object keeps its last good version here, so a proxy never sees it);
//! each proxy compiles the objects with the same policy crate on an update, never
//! per connection. Every proxy gets every object: per-proxy trimming to the
//! policies that select it and the peer groups they name is not done yet.
//!
//! Replicas on a cluster share nothing but the CA Secret: each watches and
//! serves on its own, so any replica serves any proxy (a proxy that moves to
//! another replica starts from a snapshot, as versions are per replica).

mod cluster;
#[cfg(test)]
mod cluster_tests;
mod files;
mod identity;
mod listener;
mod source;
mod status;
mod stream;
#[cfg(test)]
mod tests;
pub mod world;

pub use source::Change;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use palisade_api::v1::distribution_server::DistributionServer;
use palisade_api::v1::identity_server::IdentityServer;
use palisade_certs::identity::request;
use palisade_certs::{CaConfig, CertificateAuthority, Credentials, IdentityStore, SpiffeId};
use tokio::sync::watch;

use identity::Authenticator;
use source::ManifestSource;
use status::StatusBoard;
use world::World;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Manifest directory, watched: a change is applied object by object (local mesh).
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub manifests: Option<PathBuf>,
    /// Watch the Kubernetes API instead (in-cluster config, or the kubeconfig).
    #[arg(long)]
    pub kubernetes: bool,
    /// The CA's key and certificate (ca.key, ca.crt), made on first start and kept.
    #[arg(long, default_value = "/var/lib/palisade/ca")]
    pub ca_dir: PathBuf,
    /// On a cluster: keep the CA in this Secret (NAMESPACE/NAME), shared by replicas.
    #[arg(long, requires = "kubernetes")]
    pub ca_secret: Option<String>,
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Local mesh: bootstrap tokens, lines `TOKEN NAMESPACE/POD` (read at each request).
    #[arg(long, required_unless_present = "kubernetes")]
    pub bootstrap_tokens: Option<PathBuf>,
    /// On a cluster: the audience proxies' projected tokens must be for.
    #[arg(long, default_value = "palisade")]
    pub token_audience: String,
    /// Where to write the status of sources and proxies (JSON), after every change.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Lifetime of the certificates issued to proxies (renewed at half-life).
    #[arg(long, default_value_t = 86_400)]
    pub cert_lifetime_secs: u64,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    #[command(flatten)]
    pub webhook: cluster::WebhookArgs,
}

/// What every service task shares. Read-mostly; the world changes by `watch`.
#[derive(Debug)]
pub struct Shared {
    ca: CertificateAuthority,
    world: watch::Receiver<Arc<World>>,
    status: StatusBoard,
    auth: Authenticator,
    lifetime: Duration,
}

/// The status a running `serve` last wrote, if any.
pub fn read_status(file: &Path) -> Option<status::ServeStatus> {
    serde_json::from_str(&std::fs::read_to_string(file).ok()?).ok()
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener = tokio::net::TcpListener::bind(args.listen)
            .await
            .with_context(|| format!("listening on {}", args.listen))?;
        serve(args, listener).await
    })
}

async fn serve(args: ServeArgs, listener: tokio::net::TcpListener) -> anyhow::Result<()> {
    let client = if args.kubernetes {
        Some(crate::k8s::client().await?)
    } else {
        None
    };
    serve_with(args, listener, client).await
}

/// `serve` with the Kubernetes client given (tests give one backed by recorded
/// API responses).
async fn serve_with(
    args: ServeArgs,
    listener: tokio::net::TcpListener,
    client: Option<kube::Client>,
) -> anyhow::Result<()> {
    let ca_config = CaConfig {
        trust_domain: args.trust_domain.clone(),
        ..CaConfig::default()
    };
    let ca = match (&client, &args.ca_secret) {
        (Some(client), Some(secret)) => {
            let (namespace, name) = secret
                .split_once('/')
                .context("--ca-secret is NAMESPACE/NAME")?;
            crate::k8s::ca_secret::load_or_create(client, namespace, name, ca_config).await?
        }
        _ => CertificateAuthority::load_or_generate(ca_config, &args.ca_dir)
            .with_context(|| format!("the CA in {}", args.ca_dir.display()))?,
    };
    let server_identity = own_identity(&ca, &args.trust_domain)?;
    let tls = palisade_certs::tls::control_plane_server_config(
        server_identity.clone(),
        &palisade_certs::TrustBundle::new([ca.root().clone()]),
    )?;

    // The first world: everything the source holds once it has read it all.
    let (first, problems, source) = match (&client, &args.manifests) {
        (Some(client), _) => {
            let (source, rest) = cluster::sync(client.clone()).await?;
            let problems: Vec<String> = source.problems().cloned().collect();
            (
                source.objects().clone(),
                problems,
                Source::Cluster(source, rest),
            )
        }
        (None, Some(dir)) => {
            let mut source = ManifestSource::default();
            for file in crate::cli::manifest_files(dir)? {
                source.rescan(&file);
            }
            let problems: Vec<String> = source.problems().cloned().collect();
            (
                source.objects().clone(),
                problems,
                Source::Files(dir.clone(), source),
            )
        }
        (None, None) => anyhow::bail!("--manifests DIR or --kubernetes is required"),
    };
    report_problems(problems.iter());
    let (world_tx, world_rx) = watch::channel(Arc::new(World::first(first, &args.trust_domain)));
    let auth = match (&client, &args.bootstrap_tokens) {
        (Some(client), _) => {
            Authenticator::TokenReview(crate::k8s::tokenreview::TokenReviewer::new(
                client.clone(),
                args.token_audience.clone(),
            ))
        }
        (None, Some(file)) => Authenticator::Tokens(file.clone()),
        (None, None) => anyhow::bail!("--bootstrap-tokens FILE is required without --kubernetes"),
    };
    let shared = Arc::new(Shared {
        ca,
        world: world_rx,
        status: StatusBoard::new(args.status_file.clone()),
        auth,
        lifetime: Duration::from_secs(args.cert_lifetime_secs),
    });
    publish_status(&shared, problems.iter());

    // The control plane's own certificate, renewed like a proxy's.
    let renewing = {
        let shared = shared.clone();
        let trust_domain = args.trust_domain.clone();
        server_identity.keep_renewed(
            trust_domain,
            Duration::from_secs(5),
            move |csr| {
                let id =
                    shared
                        .ca
                        .issue(csr, &control_plane_id(shared.ca.trust_domain())?, None)?;
                Ok::<_, anyhow::Error>(vec![id.der])
            },
            |r| {
                if let Err(e) = r {
                    eprintln!("warning: renewing the control plane's certificate: {e}");
                }
            },
        )
    };
    tokio::spawn(renewing);

    let mut _file_watcher = None;
    let what = match source {
        Source::Files(dir, source) => {
            let what = dir.display().to_string();
            _file_watcher = Some(files::watch_manifests(
                dir,
                source,
                world_tx,
                shared.clone(),
                args.trust_domain.clone(),
            )?);
            what
        }
        Source::Cluster(source, rest) => {
            tokio::spawn(cluster::follow(
                source,
                rest,
                world_tx,
                shared.clone(),
                args.trust_domain.clone(),
            ));
            if let Some(client) = &client {
                cluster::start_webhook(&args, client.clone(), &shared).await?;
            }
            "the Kubernetes API".to_owned()
        }
    };

    eprintln!(
        "palisade serve: {what} on {}, version {} ({} objects)",
        args.listen,
        shared.world.borrow().version,
        shared.world.borrow().objects.len()
    );
    let incoming = listener::incoming(listener, tls, args.trust_domain.clone());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let stop = async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    tonic::transport::Server::builder()
        // A proxy that vanished without a FIN is noticed and marked disconnected.
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(IdentityServer::new(identity::IdentityService(
            shared.clone(),
        )))
        .add_service(DistributionServer::new(stream::DistributionService(shared)))
        .serve_with_incoming_shutdown(incoming, stop)
        .await?;
    Ok(())
}

/// Where objects come from, after the first full read.
enum Source {
    Files(PathBuf, ManifestSource),
    Cluster(crate::k8s::source::ClusterSource, cluster::Events),
}

fn control_plane_id(trust_domain: &str) -> anyhow::Result<SpiffeId> {
    Ok(palisade_api::control_plane_identity(trust_domain).parse()?)
}

fn own_identity(
    ca: &CertificateAuthority,
    trust_domain: &str,
) -> anyhow::Result<Arc<IdentityStore>> {
    let id = control_plane_id(trust_domain)?;
    let (pending, csr) = request(&id)?;
    let issued = ca.issue(&csr, &id, None)?;
    Ok(IdentityStore::new(Credentials::new(
        pending,
        vec![issued.der],
        trust_domain,
    )?))
}

fn report_problems<'a>(problems: impl Iterator<Item = &'a String>) {
    for problem in problems {
        eprintln!("error: {problem}");
    }
}

fn publish_status<'a>(shared: &Shared, problems: impl Iterator<Item = &'a String>) {
    let world = shared.world.borrow().clone();
    let problems: Vec<String> = problems.cloned().collect();
    shared.status.update(|s| {
        s.version = world.version;
        s.version_made_at_ms = world.made_at_ms;
        s.problems = problems;
    });
}
