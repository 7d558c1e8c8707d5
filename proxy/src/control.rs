//! The proxy's side of the control plane: get an identity, then follow the
//! distribution stream for as long as the process lives.
//!
//! ```text
//! no identity (or it expired) -> Identity.Certify(bootstrap token, CSR) -> credentials
//! Distribution.Stream: Hello -> snapshot, deltas -> build a Snapshot aside
//!     -> store it, re-check open connections, Ack | keep the last good one, Nack
//! half-life -> Renew(CSR) on the stream -> the certificate comes back as an Update
//! stream lost -> keep enforcing (fail static), reconnect every second, resync
//! ```
//!
//! The resources held always follow the control plane (so later deltas apply on
//! the right base); only what is enforced stays at the last good version when an
//! update does not build.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context};
use palisade_api::v1::distribution_client::DistributionClient;
use palisade_api::v1::identity_client::IdentityClient;
use palisade_api::v1::proxy_message::Message;
use palisade_api::v1::{Ack, CertifyRequest, Hello, Nack, ProxyMessage, Renew, Resource, Update};
use palisade_certs::identity::{request, request_bootstrap, PendingKey};
use palisade_certs::tls::{control_plane_client_config, server_name};
use palisade_certs::{Credentials, IdentityStore, SpiffeId, TrustBundle};
use palisade_policy::model::PodKey;
use palisade_policy::Manifests;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use tonic::transport::Channel;

use crate::state::{Inputs, SharedState, Snapshot};

const RETRY: Duration = Duration::from_secs(1);
/// A renewal not answered in this time is asked for again.
const RENEWAL_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ControlPlane {
    /// HOST:PORT; a name is resolved at each connect (a Service's DNS name).
    pub addr: String,
    pub pod: PodKey,
    /// Read at each bootstrap: on a cluster it is the projected service-account
    /// token, which the kubelet rotates.
    pub bootstrap_token_file: PathBuf,
    /// Roots the control plane's own certificate must chain to.
    pub roots: TrustBundle,
    pub trust_domain: String,
}

/// What the proxy holds from the control plane between streams.
#[derive(Debug, Default)]
struct Held {
    identity: Option<Arc<IdentityStore>>,
    bundle: Option<TrustBundle>,
    resources: BTreeMap<String, Resource>,
    /// The version enforced now (0: none).
    enforced: u64,
}

/// Runs forever: bootstrap, follow, and on any loss keep what is enforced and retry.
pub async fn run(config: ControlPlane, state: SharedState, on_load: impl Fn(&Snapshot)) {
    let mut held = Held::default();
    loop {
        let identity = match &held.identity {
            Some(id) if id.current().not_after > SystemTime::now() => id.clone(),
            _ => match bootstrap(&config).await {
                Ok((credentials, roots)) => {
                    tracing::info!(identity = %credentials.identity, "identity issued");
                    let id = adopt(&mut held, credentials);
                    held.bundle = Some(TrustBundle::new(roots));
                    id
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "no identity yet from the control plane; retrying");
                    tokio::time::sleep(RETRY).await;
                    continue;
                }
            },
        };
        if let Err(e) = follow(&config, identity, &mut held, &state, &on_load).await {
            tracing::warn!(
                error = %format!("{e:#}"),
                version = held.enforced,
                "control plane stream lost; enforcing the last good state"
            );
        }
        tokio::time::sleep(RETRY).await;
    }
}

/// New credentials go into the store every snapshot shares when they are the
/// same identity, so open TLS configs pick them up; otherwise a new store.
fn adopt(held: &mut Held, credentials: Credentials) -> Arc<IdentityStore> {
    let same = held
        .identity
        .clone()
        .filter(|store| store.current().identity == credentials.identity);
    if let Some(store) = same {
        // Same identity, checked above: replace() cannot refuse it.
        if let Err(e) = store.replace(credentials) {
            tracing::warn!(error = %e, "new credentials not adopted");
        }
        return store;
    }
    let store = IdentityStore::new(credentials);
    held.identity = Some(store.clone());
    store
}

async fn bootstrap(
    config: &ControlPlane,
) -> anyhow::Result<(Credentials, Vec<CertificateDer<'static>>)> {
    let tls = control_plane_client_config(None, &config.roots, expected(config)?)?;
    let token_file = &config.bootstrap_token_file;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("the bootstrap token {}", token_file.display()))?;
    let channel = connect(&config.addr, tls).await?;
    let (pending, csr) = request_bootstrap()?;
    let response = IdentityClient::new(channel)
        .certify(CertifyRequest {
            pod: config.pod.to_string(),
            bootstrap_token: token.trim().to_owned(),
            csr_der: csr,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let chain = response
        .chain_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    let credentials = Credentials::new(pending, chain, &config.trust_domain)?;
    let roots = response
        .roots_der
        .into_iter()
        .map(CertificateDer::from)
        .collect();
    Ok((credentials, roots))
}

fn expected(config: &ControlPlane) -> anyhow::Result<SpiffeId> {
    Ok(palisade_api::control_plane_identity(&config.trust_domain).parse()?)
}

async fn connect(addr: &str, tls: Arc<rustls::ClientConfig>) -> anyhow::Result<Channel> {
    let target = addr.to_owned();
    let connector = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (tls, target) = (tls.clone(), target.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(target.as_str()).await?;
            tcp.set_nodelay(true)?;
            let stream = tokio_rustls::TlsConnector::from(tls)
                .connect(server_name(), tcp)
                .await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }
    });
    tonic::transport::Endpoint::from_static("http://palisade-control-plane")
        .connect_timeout(Duration::from_secs(3))
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_timeout(Duration::from_secs(5))
        .connect_with_connector(connector)
        .await
        .with_context(|| format!("connecting to the control plane at {addr}"))
}

/// One stream, until it breaks.
async fn follow(
    config: &ControlPlane,
    identity: Arc<IdentityStore>,
    held: &mut Held,
    state: &SharedState,
    on_load: &impl Fn(&Snapshot),
) -> anyhow::Result<()> {
    let tls =
        control_plane_client_config(Some(identity.clone()), &config.roots, expected(config)?)?;
    let channel = connect(&config.addr, tls).await?;
    let (tx, rx) = mpsc::channel(8);
    let say = |m: Message| ProxyMessage { message: Some(m) };
    tx.send(say(Message::Hello(Hello {
        pod: config.pod.to_string(),
        version: held.enforced,
    })))
    .await?;
    let mut updates = DistributionClient::new(channel)
        .stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?
        .into_inner();
    let mut renewal: Option<(PendingKey, Instant)> = None;
    loop {
        let renew_at = match &renewal {
            Some((_, asked)) => *asked + RENEWAL_RETRY,
            None => renewal_time(&identity.current()),
        };
        tokio::select! {
            update = updates.message() => {
                let update = update.map_err(|s| anyhow::anyhow!("{}: {}", s.code(), s.message()))?;
                let Some(update) = update else { bail!("the control plane ended the stream") };
                let reply = apply(config, &identity, held, &mut renewal, state, on_load, update);
                tx.send(say(reply)).await?;
            }
            _ = tokio::time::sleep_until(renew_at.into()) => {
                let (pending, csr) = request(&identity.current().identity)?;
                renewal = Some((pending, Instant::now()));
                tx.send(say(Message::Renew(Renew { csr_der: csr }))).await?;
            }
        }
    }
}

/// When half the certificate's life has passed (as SPIRE and Istio renew).
fn renewal_time(current: &Credentials) -> Instant {
    let life = current
        .not_after
        .duration_since(current.not_before)
        .unwrap_or_default();
    let due = current.not_before + life / 2;
    Instant::now() + due.duration_since(SystemTime::now()).unwrap_or_default()
}

/// Applies one update; the answer is the Ack or the Nack to send.
fn apply(
    config: &ControlPlane,
    identity: &Arc<IdentityStore>,
    held: &mut Held,
    renewal: &mut Option<(PendingKey, Instant)>,
    state: &SharedState,
    on_load: &impl Fn(&Snapshot),
    update: Update,
) -> Message {
    let version = update.version;
    let nack = |reason: String| {
        tracing::warn!(version, %reason, "update rejected; keeping the last good state");
        Message::Nack(Nack { version, reason })
    };
    if !update.certificate_chain_der.is_empty() {
        let chain = update
            .certificate_chain_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        let Some((pending, _)) = renewal.take() else {
            return nack("a certificate without a renewal asked for".into());
        };
        match Credentials::new(pending, chain, &config.trust_domain)
            .and_then(|c| identity.replace(c))
        {
            Ok(()) => {
                tracing::info!(not_after = ?identity.current().not_after, "certificate renewed")
            }
            Err(e) => return nack(format!("renewed certificate: {e}")),
        }
    }
    let mut changed = update.snapshot
        || !update.upserts.is_empty()
        || !update.removals.is_empty()
        || version != held.enforced;
    if !update.roots_der.is_empty() {
        let roots: Vec<_> = update
            .roots_der
            .into_iter()
            .map(CertificateDer::from)
            .collect();
        if held
            .bundle
            .as_ref()
            .is_none_or(|b| b.roots() != roots.as_slice())
        {
            held.bundle = Some(TrustBundle::new(roots));
            changed = true;
        }
    }
    if update.snapshot {
        held.resources.clear();
    }
    for r in update.upserts {
        held.resources.insert(r.key.clone(), r);
    }
    for key in update.removals {
        held.resources.remove(&key);
    }
    if !changed {
        return Message::Ack(Ack { version });
    }
    let Some(bundle) = &held.bundle else {
        return nack("no trust bundle yet".into());
    };
    let mut manifests = Manifests::default();
    let mut skipped = Vec::new();
    for r in held.resources.values() {
        skipped.extend(
            manifests
                .load_json(&r.origin, &r.json)
                .iter()
                .map(ToString::to_string),
        );
    }
    let inputs = Inputs {
        identity: identity.clone(),
        bundle,
        manifests: &manifests,
        skipped,
        pod: &config.pod,
        trust_domain: &config.trust_domain,
    };
    match Snapshot::build(inputs, version) {
        Ok(snapshot) => {
            for skipped in &snapshot.skipped {
                tracing::warn!(error = %skipped, "object skipped");
            }
            let snapshot = Arc::new(snapshot);
            // Stored first, then announced (see registry.rs).
            state.store(Some(snapshot.clone()));
            on_load(&snapshot);
            held.enforced = version;
            tracing::info!(version, objects = held.resources.len(), "state applied");
            Message::Ack(Ack { version })
        }
        Err(e) => nack(e.to_string()),
    }
}
