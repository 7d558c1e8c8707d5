//! `palisade serve`: the control plane. Sources -> versioned world -> per-proxy
//! streams, plus the CA service, on one mTLS gRPC port.
//!
//! ```text
//! manifest dir --notify--> ManifestSource::rescan (per file, per object)
//!     -> World::next (one writer) --watch--> one stream task per proxy
//!          snapshot, then merged deltas; acks/nacks -> StatusBoard (status file)
//! Identity.Certify (bootstrap token + CSR) -> CA -> the pod's identity
//! ```
//!
//! What it distributes is the compiler's input, validated object by object (an
//! invalid object keeps its last good version here, so a proxy never sees it);
//! each proxy compiles the objects with the same policy crate on an update, never
//! per connection. Every proxy gets every object: per-proxy trimming to the
//! policies that select it and the peer groups they name is not done yet.

mod identity;
mod listener;
mod source;
mod status;
mod stream;
#[cfg(test)]
mod tests;
mod world;

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

use source::ManifestSource;
use status::StatusBoard;
use world::World;

#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Manifest directory, watched: a change is applied object by object.
    #[arg(long)]
    pub manifests: PathBuf,
    /// The CA's key and certificate (ca.key, ca.crt), made on first start and kept.
    #[arg(long, default_value = "/var/lib/palisade/ca")]
    pub ca_dir: PathBuf,
    #[arg(long, default_value = "0.0.0.0:15012")]
    pub listen: SocketAddr,
    /// Bootstrap tokens, lines `TOKEN NAMESPACE/POD` (read at each request).
    #[arg(long)]
    pub bootstrap_tokens: PathBuf,
    /// Where to write the status of sources and proxies (JSON), after every change.
    #[arg(long)]
    pub status_file: Option<PathBuf>,
    /// Lifetime of the certificates issued to proxies (renewed at half-life).
    #[arg(long, default_value_t = 86_400)]
    pub cert_lifetime_secs: u64,
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
}

/// What every service task shares. Read-mostly; the world changes by `watch`.
#[derive(Debug)]
pub struct Shared {
    ca: CertificateAuthority,
    world: watch::Receiver<Arc<World>>,
    status: StatusBoard,
    tokens: PathBuf,
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
    let ca_config = CaConfig {
        trust_domain: args.trust_domain.clone(),
        ..CaConfig::default()
    };
    let ca = CertificateAuthority::load_or_generate(ca_config, &args.ca_dir)
        .with_context(|| format!("the CA in {}", args.ca_dir.display()))?;
    let server_identity = own_identity(&ca, &args.trust_domain)?;
    let tls = palisade_certs::tls::control_plane_server_config(
        server_identity.clone(),
        &palisade_certs::TrustBundle::new([ca.root().clone()]),
    )?;

    let mut source = ManifestSource::default();
    for file in crate::cli::manifest_files(&args.manifests)? {
        source.rescan(&file);
    }
    report_problems(&source);
    let first = World::first(source.objects().clone(), &args.trust_domain);
    let (world_tx, world_rx) = watch::channel(Arc::new(first));
    let shared = Arc::new(Shared {
        ca,
        world: world_rx,
        status: StatusBoard::new(args.status_file.clone()),
        tokens: args.bootstrap_tokens.clone(),
        lifetime: Duration::from_secs(args.cert_lifetime_secs),
    });
    publish_status(&shared, &source);

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

    let watcher = watch_manifests(
        args.manifests.clone(),
        source,
        world_tx,
        shared.clone(),
        args.trust_domain.clone(),
    )?;

    eprintln!(
        "palisade serve: {} on {}, version {} ({} objects)",
        args.manifests.display(),
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
    drop(watcher);
    Ok(())
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

fn report_problems(source: &ManifestSource) {
    for problem in source.problems() {
        eprintln!("error: {problem}");
    }
}

fn publish_status(shared: &Shared, source: &ManifestSource) {
    let world = shared.world.borrow().clone();
    let problems: Vec<String> = source.problems().cloned().collect();
    shared.status.update(|s| {
        s.version = world.version;
        s.version_made_at_ms = world.made_at_ms;
        s.problems = problems;
    });
}

/// The one writer of the world: file events -> rescans -> the next version.
fn watch_manifests(
    dir: PathBuf,
    mut source: ManifestSource,
    world_tx: watch::Sender<Arc<World>>,
    shared: Arc<Shared>,
    trust_domain: String,
) -> anyhow::Result<notify::RecommendedWatcher> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<PathBuf>>();
    let mut watcher = notify::recommended_watcher(move |e: notify::Result<notify::Event>| {
        if let Ok(e) = e {
            if e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove() {
                let _ = tx.send(e.paths);
            }
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    tokio::spawn(async move {
        while let Some(first) = rx.recv().await {
            // A short settle: editors and `cp` write in bursts.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let mut paths = first;
            while let Ok(more) = rx.try_recv() {
                paths.extend(more);
            }
            let change = rescan(&mut source, &dir, paths);
            report_problems(&source);
            if !change.is_empty() {
                let (upserts, removals) = (change.upserts.len(), change.removals.len());
                let next = Arc::new(world_tx.borrow().next(change, &trust_domain));
                eprintln!(
                    "version {}: {upserts} objects changed, {removals} removed",
                    next.version
                );
                world_tx.send_replace(next);
            }
            publish_status(&shared, &source);
        }
    });
    Ok(watcher)
}

fn rescan(source: &mut ManifestSource, dir: &Path, mut paths: Vec<PathBuf>) -> source::Change {
    let is_manifest = |p: &Path| {
        p.extension()
            .is_some_and(|e| e == "yaml" || e == "yml" || e == "json")
    };
    // A directory event (created, moved in): every manifest under it.
    if paths.iter().any(|p| p.is_dir()) {
        paths.extend(crate::cli::manifest_files(dir).unwrap_or_default());
    }
    paths.sort();
    paths.dedup();
    let mut change = source::Change::default();
    for path in paths.into_iter().filter(|p| is_manifest(p)) {
        let c = source.rescan(&path);
        // Later files win for a key touched twice in one burst.
        change
            .upserts
            .retain(|o| !c.removals.contains(&o.key) && !c.upserts.iter().any(|n| n.key == o.key));
        change
            .removals
            .retain(|k| !c.upserts.iter().any(|n| &n.key == k));
        change.upserts.extend(c.upserts);
        change.removals.extend(c.removals);
    }
    change
}
