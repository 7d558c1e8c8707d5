//! `palisade-proxy`: `init` and `cleanup` write and remove the interception rules;
//! `run` is the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwapOption;
use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;
use palisade_policy::model::PodKey;
use palisade_policy::notation::parse_net;
use palisade_proxy::init::{Family, InitConfig, PortRange};
use palisade_proxy::{
    admin, flow::FlowLog, inbound, metrics::Metrics, outbound, serve, state, Mode, Proxy,
};
use tokio::net::TcpListener;

#[derive(Parser, Debug)]
#[command(
    name = "palisade-proxy",
    version,
    about = "Palisade's per-pod transparent proxy"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write the iptables rules that send this network namespace's TCP through the proxy.
    Init(InitArgs),
    /// Remove exactly the rules `init` wrote.
    Cleanup(FamilyArgs),
    /// Run the proxy.
    Run(RunArgs),
}

#[derive(Args, Debug)]
struct FamilyArgs {
    /// Leave IPv6 alone.
    #[arg(long)]
    no_ipv6: bool,
}

impl FamilyArgs {
    fn families(&self) -> Vec<Family> {
        if self.no_ipv6 {
            vec![Family::V4]
        } else {
            vec![Family::V4, Family::V6]
        }
    }
}

#[derive(Args, Debug)]
struct InitArgs {
    /// The UID the proxy runs as; its own connections are not redirected.
    #[arg(long, env = "PALISADE_PROXY_UID", default_value_t = 1337)]
    proxy_uid: u32,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Ports or ranges (`8080`, `4000-5000`), comma-separated.
    #[arg(long, value_delimiter = ',')]
    exclude_inbound_ports: Vec<PortRange>,
    #[arg(long, value_delimiter = ',')]
    exclude_outbound_ports: Vec<PortRange>,
    /// CIDRs or bare addresses, comma-separated.
    #[arg(long, value_delimiter = ',', value_parser = parse_net)]
    exclude_inbound_cidrs: Vec<IpNet>,
    #[arg(long, value_delimiter = ',', value_parser = parse_net)]
    exclude_outbound_cidrs: Vec<IpNet>,
    /// Print the iptables-restore input instead of applying it.
    #[arg(long)]
    dry_run: bool,
    #[command(flatten)]
    families: FamilyArgs,
}

#[derive(Args, Debug)]
struct RunArgs {
    /// The control plane (HOST:PORT; HOST may be a DNS name): identity and state
    /// come from its stream.
    #[arg(long, env = "PALISADE_CONTROL_PLANE", conflicts_with = "state_dir")]
    control_plane: Option<String>,
    /// With --control-plane: the file holding this pod's bootstrap token.
    #[arg(
        long,
        env = "PALISADE_BOOTSTRAP_TOKEN_FILE",
        requires = "control_plane"
    )]
    bootstrap_token_file: Option<PathBuf>,
    /// With --control-plane: the roots (PEM) its certificate must chain to.
    #[arg(long, env = "PALISADE_CONTROL_PLANE_CA", requires = "control_plane")]
    control_plane_ca: Option<PathBuf>,
    /// The same roots given inline (the injector sets this, as linkerd's sets
    /// its trust anchors), instead of --control-plane-ca.
    #[arg(
        long,
        env = "PALISADE_CONTROL_PLANE_CA_PEM",
        requires = "control_plane",
        conflicts_with = "control_plane_ca",
        hide_env_values = true
    )]
    control_plane_ca_pem: Option<String>,
    /// File mode, for a proxy run by hand: a directory with identity.crt,
    /// identity.key, bundle.crt and manifests/, reloaded when it changes.
    #[arg(
        long,
        env = "PALISADE_STATE_DIR",
        required_unless_present = "control_plane"
    )]
    state_dir: Option<PathBuf>,
    /// This pod, NAMESPACE/NAME.
    #[arg(long, env = "PALISADE_POD")]
    pod: String,
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// Admin port address (/live /ready /metrics /config).
    #[arg(long, default_value = "127.0.0.1:15020")]
    admin: SocketAddr,
    #[arg(long, value_enum, default_value_t = Mode::Strict)]
    mode: Mode,
    /// Flow log: a file to append to, or - for stdout.
    #[arg(long, default_value = "-")]
    flow_log: String,
    /// Seconds between interim records of a long flow.
    #[arg(long, default_value_t = 10)]
    flow_interval: u64,
    #[arg(long, default_value_t = 5000)]
    handshake_timeout_ms: u64,
    #[arg(long, default_value_t = 5000)]
    connect_timeout_ms: u64,
    /// Connections handled at once per listener; more wait in the backlog.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// HTTP ports: a connection with no complete request head in this time is denied.
    #[arg(long, default_value_t = 5000)]
    http_detect_timeout_ms: u64,
    /// HTTP ports: request head read timeout, also the keep-alive idle timeout.
    #[arg(long, default_value_t = 30_000)]
    http_header_timeout_ms: u64,
    #[arg(long, default_value_t = 65_536)]
    http_max_header_bytes: usize,
    #[arg(long, default_value_t = 100)]
    http_max_headers: usize,
    #[arg(long, default_value_t = 100)]
    http2_max_concurrent_streams: u32,
    /// Worker threads. 1 runs everything on one thread (no cross-thread wake-ups),
    /// which is what a sidecar sharing its pod's CPU usually wants.
    #[arg(long, env = "PALISADE_PROXY_THREADS", default_value_t = 1)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Init(a) => {
            let config = InitConfig {
                proxy_uid: a.proxy_uid,
                inbound_port: a.inbound_port,
                outbound_port: a.outbound_port,
                exclude_inbound_ports: a.exclude_inbound_ports,
                exclude_outbound_ports: a.exclude_outbound_ports,
                exclude_inbound_cidrs: a.exclude_inbound_cidrs,
                exclude_outbound_cidrs: a.exclude_outbound_cidrs,
            };
            if a.dry_run {
                for f in a.families.families() {
                    print!("# {f:?}\n{}", palisade_proxy::init::render(&config, f));
                }
                return Ok(());
            }
            palisade_proxy::init::init(&config, &a.families.families())?;
            Ok(())
        }
        Command::Cleanup(f) => {
            palisade_proxy::init::cleanup(&f.families());
            Ok(())
        }
        Command::Run(a) => {
            let runtime = if a.threads <= 1 {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(a.threads)
                    .enable_all()
                    .build()?
            };
            runtime.block_on(run(a))
        }
    }
}

async fn run(a: RunArgs) -> anyhow::Result<()> {
    let RunArgs {
        control_plane,
        bootstrap_token_file,
        control_plane_ca,
        control_plane_ca_pem,
        state_dir,
        pod,
        trust_domain,
        inbound_port,
        outbound_port,
        admin: admin_addr,
        mode,
        flow_log,
        flow_interval,
        handshake_timeout_ms,
        connect_timeout_ms,
        max_connections,
        threads: _,
        http_detect_timeout_ms,
        http_header_timeout_ms,
        http_max_header_bytes,
        http_max_headers,
        http2_max_concurrent_streams,
    } = a;
    let pod =
        PodKey::parse(&pod).with_context(|| format!("--pod {pod:?}: expected NAMESPACE/NAME"))?;
    let shared: state::SharedState = Arc::new(ArcSwapOption::empty());
    let proxy = Arc::new(Proxy {
        state: shared.clone(),
        metrics: Metrics::default(),
        flows: FlowLog::start(&flow_log).with_context(|| format!("flow log {flow_log}"))?,
        mode,
        inbound_port,
        outbound_port,
        handshake_timeout: Duration::from_millis(handshake_timeout_ms),
        connect_timeout: Duration::from_millis(connect_timeout_ms),
        flow_interval: Duration::from_secs(flow_interval.max(1)),
        http: palisade_proxy::http::HttpLimits {
            detect_timeout: Duration::from_millis(http_detect_timeout_ms),
            header_timeout: Duration::from_millis(http_header_timeout_ms),
            max_header_bytes: http_max_header_bytes,
            max_headers: http_max_headers,
            h2_max_concurrent_streams: http2_max_concurrent_streams,
            ..Default::default()
        },
        open: Default::default(),
    });
    // On every state put in force: close the open connections it denies.
    let p = proxy.clone();
    let recheck = move |s: &state::Snapshot| {
        let closed = p.open.recheck(s);
        if closed > 0 {
            tracing::info!(
                version = s.version,
                closed,
                "closed connections the new state denies"
            );
        }
    };
    let mut _watcher = None;
    match (control_plane, state_dir) {
        (Some(addr), _) => {
            let config = control_plane_config(
                addr,
                pod,
                trust_domain,
                bootstrap_token_file,
                control_plane_ca,
                control_plane_ca_pem,
            )?;
            tokio::spawn(palisade_proxy::control::run(config, shared, recheck));
        }
        (None, Some(dir)) => {
            _watcher = Some(
                state::watch(dir.clone(), pod, trust_domain, shared, recheck)
                    .with_context(|| format!("watching {}", dir.display()))?,
            );
        }
        (None, None) => anyhow::bail!("--control-plane or --state-dir is required"),
    }
    let admin_listener = TcpListener::bind(admin_addr)
        .await
        .map_err(|e| admin::bind_error(admin_addr, e))?;
    let inbound_listeners = listeners(inbound_port).await.context("inbound listener")?;
    let outbound_listeners = listeners(outbound_port)
        .await
        .context("outbound listener")?;
    tracing::info!(inbound_port, outbound_port, %admin_addr, ?mode, "proxy listening");
    let mut tasks = tokio::task::JoinSet::new();
    // One bound per direction, shared by its IPv4 and IPv6 listener.
    let (inbound_limit, outbound_limit) = (
        Arc::new(tokio::sync::Semaphore::new(max_connections)),
        Arc::new(tokio::sync::Semaphore::new(max_connections)),
    );
    for listener in inbound_listeners {
        let p = proxy.clone();
        tasks.spawn(serve(listener, inbound_limit.clone(), move |s, a| {
            let p = p.clone();
            async move { inbound::handle(&p, s, a).await }
        }));
    }
    for listener in outbound_listeners {
        let p = proxy.clone();
        tasks.spawn(serve(listener, outbound_limit.clone(), move |s, a| {
            let p = p.clone();
            async move { outbound::handle(&p, s, a).await }
        }));
    }
    tokio::select! {
        _ = tasks.join_next() => {}
        _ = admin::serve(proxy.clone(), admin_listener) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("shutting down"),
    }
    Ok(())
}

fn control_plane_config(
    addr: String,
    pod: PodKey,
    trust_domain: String,
    token_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    ca_pem: Option<String>,
) -> anyhow::Result<palisade_proxy::control::ControlPlane> {
    let token_file =
        token_file.context("--bootstrap-token-file is required with --control-plane")?;
    let (origin, pem) = match (ca_file, ca_pem) {
        (Some(file), _) => (
            file.display().to_string(),
            std::fs::read(&file).with_context(|| format!("{}", file.display()))?,
        ),
        (None, Some(pem)) => ("PALISADE_CONTROL_PLANE_CA_PEM".to_owned(), pem.into_bytes()),
        (None, None) => anyhow::bail!(
            "--control-plane-ca (or PALISADE_CONTROL_PLANE_CA_PEM) is required with --control-plane"
        ),
    };
    use rustls::pki_types::pem::PemObject;
    let roots: Vec<_> = rustls::pki_types::CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{origin}: certificates (PEM)"))?;
    if roots.is_empty() {
        anyhow::bail!("{origin}: no certificate in it");
    }
    Ok(palisade_proxy::control::ControlPlane {
        addr,
        pod,
        bootstrap_token_file: token_file,
        roots: palisade_certs::TrustBundle::new(roots),
        trust_domain,
    })
}

/// 0.0.0.0:port and, when the namespace has IPv6, [::]:port (IPv6 only, so the two
/// do not collide and each connection's original destination is read in its family).
async fn listeners(port: u16) -> anyhow::Result<Vec<TcpListener>> {
    let v4 = TcpListener::bind(("0.0.0.0", port))
        .await
        .with_context(|| format!("0.0.0.0:{port}"))?;
    let v6 = async {
        let socket = tokio::net::TcpSocket::new_v6()?;
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &true)?;
        socket.set_reuseaddr(true)?;
        socket.bind((std::net::Ipv6Addr::UNSPECIFIED, port).into())?;
        socket.listen(1024)
    };
    match v6.await {
        Ok(v6) => Ok(vec![v4, v6]),
        Err(e) => {
            tracing::warn!(port, error = %e, "no IPv6 listener (IPv6 disabled here?)");
            Ok(vec![v4])
        }
    }
}
