//! `palisade up DIR`: bridge -> the control plane (`palisade serve` on DIR, in the
//! bridge's namespace at 169.254.1.1:15012) -> per pod (namespace, hosts file,
//! bootstrap token, iptables, proxy fed by the control plane) -> wait until every
//! proxy has its identity and policy -> the pods' container commands -> print how to
//! try it -> until Ctrl-C, then remove everything.

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use palisade_certs::{CaConfig, CertificateAuthority, SpiffeId};
use palisade_policy::{CompiledCluster, Flow, Protocol};

use super::netns::{self, sh};
use super::pods::{self, ContainerCommand};
use super::{ops, prefix, run_dir, MeshRecord, PodRecord};

/// The UID proxies run as; `palisade-proxy init` leaves its traffic alone.
const PROXY_UID: u32 = 1337;

/// Where the control plane listens, on the bridge: a link-local address (Calico
/// gives pods 169.254.1.1 as their gateway in the same way), reached on-link.
pub const CONTROL_PLANE: &str = "169.254.1.1:15012";

#[derive(Debug)]
pub struct Mesh {
    pub record: MeshRecord,
    serve: Option<Child>,
    children: Vec<Child>,
}

impl Drop for Mesh {
    /// However `up` ends (error, Ctrl-C, panic), what it created goes.
    fn drop(&mut self) {
        for child in self.serve.iter_mut().chain(&mut self.children) {
            let _ = child.kill();
            let _ = child.wait();
        }
        ops::teardown(&self.record);
    }
}

/// The proxy binary: `PALISADE_PROXY_BIN`, or `palisade-proxy` next to this binary.
fn proxy_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("PALISADE_PROXY_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe().context("locating the palisade binary")?;
    let bin = me.with_file_name("palisade-proxy");
    if !bin.exists() {
        bail!(
            "{} not found: build it too (cargo build --release --workspace) or set PALISADE_PROXY_BIN",
            bin.display()
        );
    }
    Ok(bin)
}

fn log_file(path: &Path) -> Stdio {
    File::create(path).map(Stdio::from).unwrap_or(Stdio::null())
}

fn serve_argv(dir: &Path, run: &Path, cert_lifetime_secs: u64) -> anyhow::Result<Vec<String>> {
    let me = std::env::current_exe().context("locating the palisade binary")?;
    let path = |p: &Path| p.display().to_string();
    Ok(vec![
        path(&me),
        "serve".into(),
        "--manifests".into(),
        path(dir),
        "--ca-dir".into(),
        path(&run.join("ca")),
        "--listen".into(),
        CONTROL_PLANE.into(),
        "--bootstrap-tokens".into(),
        path(&run.join("tokens")),
        "--status-file".into(),
        path(&run.join("serve-status.json")),
        "--cert-lifetime-secs".into(),
        cert_lifetime_secs.to_string(),
    ])
}

/// Starts `palisade serve` in the bridge's namespace, its log in the run directory.
pub fn start_serve(record: &MeshRecord) -> anyhow::Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir().join("serve.log"))?;
    Command::new("ip")
        .args(["netns", "exec", &record.bridge_netns])
        .args(&record.serve_argv)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .context("starting palisade serve")
}

/// A random bootstrap token (128 bits, hex).
fn new_token() -> anyhow::Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("/dev/urandom")?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

pub fn start(
    dir: &Path,
    files: &[PathBuf],
    compiled: &CompiledCluster,
    cert_lifetime_secs: u64,
) -> anyhow::Result<Mesh> {
    let run = run_dir();
    let prefix = prefix();
    let bridge = format!("{prefix}-br");
    if MeshRecord::path().exists() || netns::exists(&bridge) {
        bail!(
            "a local mesh is already up in {} (palisade down removes it)",
            run.display()
        );
    }
    let proxy = proxy_bin()?;
    std::fs::create_dir_all(&run).with_context(|| format!("{}", run.display()))?;
    // Made here so the proxies can be handed its root; `serve` loads the same one.
    let ca = CertificateAuthority::load_or_generate(CaConfig::default(), &run.join("ca"))
        .context("the mesh CA")?;
    let ca_root = run.join("ca").join("ca.crt");
    let commands = pods::commands(files)?;
    let services = pods::service_ips(files)?;
    let manifests = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());

    let mut mesh = Mesh {
        record: MeshRecord {
            serve_argv: serve_argv(&manifests, &run, cert_lifetime_secs)?,
            manifests,
            bridge_netns: bridge.clone(),
            control_plane: CONTROL_PLANE.into(),
            pods: Vec::new(),
        },
        serve: None,
        children: Vec::new(),
    };
    netns::create_bridge(&bridge)?;
    mesh.record.save()?;
    let (cp_ip, _) = CONTROL_PLANE.split_once(':').unwrap_or_default();
    sh(&[
        "ip",
        "-n",
        &bridge,
        "addr",
        "add",
        &format!("{cp_ip}/32"),
        "dev",
        "br0",
    ])?;
    sh(&["ip", "-n", &bridge, "route", "add", "default", "dev", "br0"])?;
    let tokens_path = run.join("tokens");
    let mut tokens = String::new();
    mesh.serve = Some(start_serve(&mesh.record)?);
    drop(ca);

    for (i, (_, workload)) in compiled.workloads().enumerate() {
        let pod = &workload.pod;
        let key = format!("{}/{}", pod.namespace, pod.name);
        let Some(&ip) = pod.ips.first() else {
            eprintln!("warning: pod {key} has no status.podIP: not started");
            continue;
        };
        let identity = SpiffeId::new(&ca_trust_domain(), &pod.namespace, &pod.service_account)
            .with_context(|| format!("pod {key}: identity"))?;
        let netns = format!("{prefix}-{}-{}", pod.namespace, pod.name);
        let home = run
            .join("pods")
            .join(format!("{}_{}", pod.namespace, pod.name));
        std::fs::create_dir_all(&home)?;
        netns::create_pod(&netns, &bridge, &format!("{prefix}v{i}"), ip)?;
        write_hosts(&netns, compiled, &services)?;
        // The launcher's proof of who the proxy is: one token per pod, known to the
        // control plane and readable by that pod's proxy only.
        let token = new_token()?;
        tokens.push_str(&format!("{token} {key}\n"));
        write_private(&tokens_path, &tokens, 0)?;
        let token_file = home.join("token");
        write_private(&token_file, &token, PROXY_UID)?;
        let flow_log = home.join("flows.jsonl");
        File::create(&flow_log)?;
        for path in [&home, &flow_log] {
            std::os::unix::fs::chown(path, Some(PROXY_UID), Some(PROXY_UID))?;
        }
        mesh.record.pods.push(PodRecord {
            pod: key.clone(),
            netns: netns.clone(),
            ip: ip.to_string(),
            identity: identity.to_string(),
            flow_log: flow_log.clone(),
        });
        mesh.record.save()?;

        let proxy_path = proxy.display().to_string();
        sh(&["ip", "netns", "exec", &netns, &proxy_path, "init"])
            .with_context(|| format!("pod {key}: palisade-proxy init"))?;
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &netns,
                "setpriv",
                "--reuid=1337",
                "--regid=1337",
                "--clear-groups",
            ])
            .arg(&proxy)
            .args(["run", "--pod", &key, "--control-plane", CONTROL_PLANE])
            .arg("--bootstrap-token-file")
            .arg(&token_file)
            .arg("--control-plane-ca")
            .arg(&ca_root)
            .arg("--flow-log")
            .arg(&flow_log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file(&home.join("proxy.log")))
            .spawn()
            .with_context(|| format!("pod {key}: starting the proxy"))?;
        mesh.children.push(child);
    }

    wait_ready(&mesh.record)?;
    for pod in mesh.record.pods.clone() {
        let home = run.join("pods").join(pod.pod.replace('/', "_"));
        for c in commands.get(&pod.pod).into_iter().flatten() {
            mesh.children.push(start_container(&pod, c, &home)?);
        }
    }
    wait_listening(&mesh.record, compiled);
    Ok(mesh)
}

fn ca_trust_domain() -> String {
    CaConfig::default().trust_domain
}

/// Writes `text` readable by `owner` only (mode 0400 for a proxy, 0600 for root).
fn write_private(path: &Path, text: &str, owner: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).with_context(|| format!("{}", tmp.display()))?;
    std::fs::set_permissions(
        &tmp,
        std::fs::Permissions::from_mode(if owner == 0 { 0o600 } else { 0o400 }),
    )?;
    std::os::unix::fs::chown(&tmp, Some(owner), Some(owner))?;
    std::fs::rename(&tmp, path).with_context(|| format!("{}", path.display()))
}

/// `/etc/netns/<netns>/hosts` (what `ip netns exec` shows as /etc/hosts): every pod
/// as `<pod>.<ns>` and `<pod>.<ns>.pod.cluster.local`, every Service as
/// `<svc>.<ns>` and `<svc>.<ns>.svc.cluster.local` (its clusterIP).
fn write_hosts(
    netns: &str,
    compiled: &CompiledCluster,
    services: &[(String, String, String)],
) -> anyhow::Result<()> {
    let dir = Path::new("/etc/netns").join(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("{}", dir.display()))?;
    let mut hosts = String::from("127.0.0.1 localhost\n::1 localhost\n");
    for (_, w) in compiled.workloads() {
        if let Some(ip) = w.pod.ips.first() {
            let (name, ns) = (&w.pod.name, &w.pod.namespace);
            hosts.push_str(&format!("{ip} {name}.{ns} {name}.{ns}.pod.cluster.local\n"));
        }
    }
    for (name, ns, ip) in services {
        hosts.push_str(&format!("{ip} {name}.{ns} {name}.{ns}.svc.cluster.local\n"));
    }
    std::fs::write(dir.join("hosts"), hosts)?;
    Ok(())
}

fn wait_ready(record: &MeshRecord) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    for pod in &record.pods {
        while netns::admin_get(&pod.netns, "/ready").is_none() {
            if Instant::now() > deadline {
                bail!(
                    "the proxy of {} is not ready after 20 s (see {} and {})",
                    pod.pod,
                    pod.flow_log.with_file_name("proxy.log").display(),
                    run_dir().join("serve.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(())
}

/// Waits (up to 10 s) until every declared TCP containerPort is listened on, so the
/// printed commands work at once; a port that never opens is only a warning.
fn wait_listening(record: &MeshRecord, compiled: &CompiledCluster) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for (_, w) in compiled.workloads() {
        let key = w.pod.key().to_string();
        let Some(pod) = record.pods.iter().find(|p| p.pod == key) else {
            continue;
        };
        for port in w.pod.ports.iter().filter(|p| p.protocol == Protocol::TCP) {
            while !netns::listening_ports(&pod.netns).contains(&port.port) {
                if Instant::now() > deadline {
                    eprintln!("warning: nothing listens on {key} port {} yet", port.port);
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

fn start_container(pod: &PodRecord, c: &ContainerCommand, home: &Path) -> anyhow::Result<Child> {
    Command::new("ip")
        .args(["netns", "exec", &pod.netns])
        .args(&c.argv)
        .current_dir(home)
        .stdin(Stdio::null())
        .stdout(log_file(&home.join(format!("{}.log", c.container))))
        .stderr(log_file(&home.join(format!("{}.err", c.container))))
        .spawn()
        .with_context(|| format!("pod {}: container {}: {:?}", pod.pod, c.container, c.argv))
}

/// Each pod, its IP and identity, and one allowed and one denied connection to try,
/// written with the path `palisade` was started by, so they paste as they are.
pub fn summary(record: &MeshRecord, compiled: &CompiledCluster, dir: &Path) -> String {
    let me = std::env::args().next().unwrap_or_else(|| "palisade".into());
    let mut out = String::from("POD                          IP            IDENTITY\n");
    for p in &record.pods {
        out.push_str(&format!("{:<28} {:<13} {}\n", p.pod, p.ip, p.identity));
    }
    let mut allowed = None;
    let mut denied = None;
    let pods: Vec<_> = compiled.workloads().collect();
    for (a, wa) in &pods {
        for (b, wb) in &pods {
            let (Some(&src), Some(&dst)) = (wa.pod.ips.first(), wb.pod.ips.first()) else {
                continue;
            };
            for port in wb.pod.ports.iter().filter(|p| p.protocol == Protocol::TCP) {
                let flow = Flow {
                    source: palisade_policy::Endpoint {
                        ip: src,
                        workload: Some(*a),
                    },
                    destination: palisade_policy::Endpoint {
                        ip: dst,
                        workload: Some(*b),
                    },
                    protocol: Protocol::TCP,
                    port: Some(port.port),
                    icmp: None,
                    http: None,
                };
                let slot = if compiled.evaluate(&flow).allowed {
                    &mut allowed
                } else {
                    &mut denied
                };
                if slot.is_none() && a != b {
                    *slot = Some((wa.pod.key(), wb.pod.key(), dst, port.port));
                }
            }
        }
    }
    let try_line = |what: &str,
                    c: Option<(
        palisade_policy::model::PodKey,
        palisade_policy::model::PodKey,
        IpAddr,
        u16,
    )>| {
        c.map(|(a, b, ip, port)| {
            format!(
                "\n{what}:\n  {me} exec {a} -- curl -sS -m 3 -o /dev/null -w '%{{http_code}}\\n' http://{ip}:{port}/\n  {me} explain -f {} --from {a} --to {b} --port {port}\n",
                dir.display()
            )
        })
        .unwrap_or_default()
    };
    out.push_str(&try_line("Try an allowed connection", allowed));
    out.push_str(&try_line("Try a denied connection", denied));
    out.push_str(&format!(
        "\nFlows: {me} flows --follow    Status: {me} status    Stop: Ctrl-C (or {me} down)\n"
    ));
    out
}

/// Until Ctrl-C or SIGTERM. The control plane watches DIR itself; if it exits,
/// say so once (the proxies keep enforcing what they have) and how to restart it.
pub fn wait(mesh: &mut Mesh) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return Ok(()),
                _ = term.recv() => return Ok(()),
                _ = every.tick() => {
                    let exited = mesh.serve.as_mut().and_then(|c| c.try_wait().ok().flatten());
                    if let Some(status) = exited {
                        mesh.serve = None;
                        eprintln!(
                            "palisade serve exited ({status}); the proxies keep enforcing their last state. Log: {}. Restart: ip netns exec {} {}",
                            run_dir().join("serve.log").display(),
                            mesh.record.bridge_netns,
                            mesh.record.serve_argv.join(" ")
                        );
                    }
                }
            }
        }
    })
}
