//! What the proxy enforces, as one immutable [`Snapshot`] behind an `ArcSwapOption`:
//! a connection loads it once, lock-free, and uses that version to the end.
//! `None` means nothing valid has loaded yet: every connection is denied (fail closed).
//!
//! Two ways in: the control plane's stream (`control.rs`, the normal way) or, for a
//! proxy run by hand, file mode, which reads a state directory:
//! ```text
//! DIR/identity.crt   this pod's X.509-SVID chain, leaf first (PEM)
//! DIR/identity.key   its PKCS#8 key (PEM)
//! DIR/bundle.crt     trusted roots (PEM, one or more)
//! DIR/manifests/     Namespaces, Pods (status.podIP), ServiceAccounts, policies, tiers
//! ```
//! The policy is compiled here with the same `policy` crate the CLI uses. A change to
//! any file reloads the whole snapshot aside and swaps it in; a snapshot that fails to
//! load changes nothing (the last good one stays in force).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use palisade_certs::tls::{client_config, server_config};
use palisade_certs::{Credentials, IdentityStore, SpiffeId, TrustBundle};
use palisade_policy::model::PodKey;
use palisade_policy::{CompiledCluster, Manifests, WorkloadId};
use rustls::{ClientConfig, ServerConfig};

pub type SharedState = Arc<ArcSwapOption<Snapshot>>;

/// Everything one connection needs to be decided and secured.
#[derive(Debug)]
pub struct Snapshot {
    pub version: u64,
    pub pod: PodKey,
    pub workload: WorkloadId,
    pub policy: CompiledCluster,
    pub trust_domain: String,
    pub identity: Arc<IdentityStore>,
    pub server_tls: Arc<ServerConfig>,
    /// One client config per mesh identity, built at load so the data path never
    /// builds one (or takes a lock to cache one).
    client_tls: HashMap<SpiffeId, Arc<ClientConfig>>,
    /// Objects skipped at load, for /config.
    pub skipped: Vec<String>,
    /// Service frontends (clusterIP:port) -> backends.
    pub services: palisade_policy::services::ServiceTable,
    /// Round robin over a Service's backends.
    next_backend: std::sync::atomic::AtomicUsize,
}

/// What a snapshot is built from, whichever way it arrived (files or the stream).
#[derive(Debug)]
pub struct Inputs<'a> {
    /// Shared across snapshots: a renewal replaces the credentials inside it.
    pub identity: Arc<IdentityStore>,
    pub bundle: &'a TrustBundle,
    pub manifests: &'a Manifests,
    /// Objects already known to be skipped (reported on /config).
    pub skipped: Vec<String>,
    pub pod: &'a PodKey,
    pub trust_domain: &'a str,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("{path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("pod {0} is not in the manifests (a Pod with status.podIP)")]
    UnknownPod(PodKey),
    #[error("identity {got} does not belong to pod {pod} (expected {expected})")]
    IdentityMismatch {
        pod: PodKey,
        expected: String,
        got: String,
    },
}

fn read(path: &Path) -> Result<String, StateError> {
    std::fs::read_to_string(path).map_err(|e| StateError::File {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

impl Snapshot {
    /// File mode: the state directory's files, then [`Snapshot::build`].
    pub fn load(
        dir: &Path,
        pod: &PodKey,
        trust_domain: &str,
        version: u64,
    ) -> Result<Snapshot, StateError> {
        let file_error = |path: &Path, message: String| StateError::File {
            path: path.to_owned(),
            message,
        };
        let (crt, key, bundle_path) = (
            dir.join("identity.crt"),
            dir.join("identity.key"),
            dir.join("bundle.crt"),
        );
        let credentials = Credentials::from_pem(&read(&crt)?, &read(&key)?, trust_domain)
            .map_err(|e| file_error(&crt, e.to_string()))?;
        let bundle_pem = read(&bundle_path)?;
        let roots = rustls_pem_certs(&bundle_pem).map_err(|e| file_error(&bundle_path, e))?;
        let bundle = TrustBundle::new(roots);

        let mut manifests = Manifests::default();
        let mut skipped = Vec::new();
        let manifest_dir = dir.join("manifests");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&manifest_dir)
            .map_err(|e| file_error(&manifest_dir, e.to_string()))?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.extension()
                    .is_some_and(|x| x == "yaml" || x == "yml" || x == "json")
            })
            .collect();
        files.sort();
        for file in files {
            let text = read(&file)?;
            skipped.extend(
                manifests
                    .load_str(&file.display().to_string(), &text)
                    .into_iter()
                    .map(|e| e.to_string()),
            );
        }
        let identity = IdentityStore::new(credentials);
        Snapshot::build(
            Inputs {
                identity,
                bundle: &bundle,
                manifests: &manifests,
                skipped,
                pod,
                trust_domain,
            },
            version,
        )
        .map_err(|e| match e {
            StateError::Tls(message) => file_error(&bundle_path, message),
            e => e,
        })
    }

    /// Compiles `manifests` and builds the TLS configs: everything a connection
    /// needs, checked to belong together (the identity must be the pod's).
    pub fn build(inputs: Inputs<'_>, version: u64) -> Result<Snapshot, StateError> {
        let Inputs {
            identity,
            bundle,
            manifests,
            mut skipped,
            pod,
            trust_domain,
        } = inputs;
        let (policy, errors) = CompiledCluster::new(manifests);
        let services = palisade_policy::services::ServiceTable::build(&manifests.cluster, &policy);
        skipped.extend(errors.into_iter().map(|e| e.to_string()));

        let workload = policy
            .workload_by_key(pod)
            .ok_or_else(|| StateError::UnknownPod(pod.clone()))?;
        let expected = policy.workload(workload).and_then(|w| {
            SpiffeId::new(trust_domain, &w.pod.namespace, &w.pod.service_account).ok()
        });
        let held = identity.current().identity.clone();
        if expected.as_ref() != Some(&held) {
            return Err(StateError::IdentityMismatch {
                pod: pod.clone(),
                expected: expected.map(|e| e.to_string()).unwrap_or_default(),
                got: held.to_string(),
            });
        }
        let tls_error = |e: palisade_certs::tls::TlsConfigError| StateError::Tls(e.to_string());
        let server_tls = server_config(identity.clone(), bundle).map_err(tls_error)?;
        let mut client_tls = HashMap::new();
        for (_, w) in policy.workloads() {
            let Ok(id) = SpiffeId::new(trust_domain, &w.pod.namespace, &w.pod.service_account)
            else {
                continue;
            };
            if let std::collections::hash_map::Entry::Vacant(slot) = client_tls.entry(id) {
                let config = client_config(identity.clone(), bundle, slot.key().clone())
                    .map_err(tls_error)?;
                slot.insert(config);
            }
        }
        Ok(Snapshot {
            version,
            pod: pod.clone(),
            workload,
            policy,
            trust_domain: trust_domain.to_owned(),
            identity,
            server_tls,
            client_tls,
            skipped,
            services,
            next_backend: Default::default(),
        })
    }

    /// `Err(why)` unless `peer` is the identity of the pod that owns `source`: only
    /// then are that pod's labels trusted for a verdict (the stolen-certificate case).
    pub fn check_owner(
        &self,
        peer: &str,
        source: &palisade_policy::Endpoint,
    ) -> Result<(), String> {
        let owner = source.workload.and_then(|w| self.identity_of(w));
        match owner {
            Some(o) if o.to_string() == peer => Ok(()),
            Some(o) => Err(format!(
                "identity {peer} does not own source IP {} (owned by {o})",
                source.ip
            )),
            None => Err(format!(
                "identity {peer} does not own source IP {} (owned by no mesh pod)",
                source.ip
            )),
        }
    }

    /// The mesh identity of a workload: its namespace and service account.
    pub fn identity_of(&self, w: WorkloadId) -> Option<SpiffeId> {
        let pod = &self.policy.workload(w)?.pod;
        SpiffeId::new(&self.trust_domain, &pod.namespace, &pod.service_account).ok()
    }

    /// One backend of the Service at `frontend`, round robin (as Linkerd and
    /// kube-proxy's default spread connections). `Err` names a Service without one.
    pub fn pick_backend(
        &self,
        frontend: std::net::SocketAddr,
    ) -> Option<Result<(String, palisade_policy::services::Backend), String>> {
        let f = self.services.get(frontend)?;
        let n = self
            .next_backend
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(match f.backends.get(n % f.backends.len().max(1)) {
            Some(b) => Ok((f.service.clone(), *b)),
            None => Err(f.service.clone()),
        })
    }

    pub fn client_tls(&self, id: &SpiffeId) -> Option<Arc<ClientConfig>> {
        self.client_tls.get(id).cloned()
    }
}

fn rustls_pem_certs(pem: &str) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    if certs.is_empty() {
        return Err("no certificate in the bundle".into());
    }
    Ok(certs)
}

/// Loads the state directory now and again whenever a file in it changes. Returns
/// the watcher, which must be kept alive.
pub fn watch(
    dir: PathBuf,
    pod: PodKey,
    trust_domain: String,
    state: SharedState,
    on_load: impl Fn(&Snapshot) + Send + 'static,
) -> Result<notify::RecommendedWatcher, notify::Error> {
    use notify::Watcher;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let mut watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        // Only changes: reading the files during a reload raises access events,
        // which must not trigger another reload.
        if event.is_ok_and(|e| e.kind.is_modify() || e.kind.is_create() || e.kind.is_remove()) {
            let _ = tx.send(());
        }
    })?;
    watcher.watch(&dir, notify::RecursiveMode::Recursive)?;
    // Versions count snapshots put in force, not attempts.
    let mut version = 0;
    let mut reload = move || match Snapshot::load(&dir, &pod, &trust_domain, version + 1) {
        Ok(snapshot) => {
            version += 1;
            for skipped in &snapshot.skipped {
                tracing::warn!(error = %skipped, "manifest object skipped");
            }
            tracing::info!(version, "state loaded");
            let snapshot = Arc::new(snapshot);
            // Stored first, then announced: a connection that registers after the
            // re-check began loads this state itself.
            state.store(Some(snapshot.clone()));
            on_load(&snapshot);
        }
        // The last good snapshot (or none: fail closed) stays in force.
        Err(e) => tracing::error!(error = %e, "state not loaded; keeping what was in force"),
    };
    reload();
    tokio::spawn(async move {
        while rx.recv().await.is_some() {
            // Let a burst of writes settle, then load once.
            tokio::time::sleep(Duration::from_millis(100)).await;
            while rx.try_recv().is_ok() {}
            reload();
        }
    });
    Ok(watcher)
}
