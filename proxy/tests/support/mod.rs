//! A test world of real network namespaces: a "router" namespace holding a bridge,
//! one namespace per host joined to it by a veth pair, proxies as real processes
//! running as UID 1337, and test apps run on threads that enter a namespace.
//! Nothing touches the host's own network. Everything is removed when the World is
//! dropped, also when a test fails. Leftovers after a crash: `ip netns | grep ^pal`.

#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::indexing_slicing
)]

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use palisade_certs::identity::{certificates_pem, request};
use palisade_certs::{CaConfig, CertificateAuthority, SpiffeId};

pub const PROXY_UID: u32 = 1337;

/// The proxy binary: cargo names it for tests; an example finds it beside itself.
pub fn proxy_bin() -> String {
    if let Some(p) = option_env!("CARGO_BIN_EXE_palisade-proxy") {
        return p.to_owned();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("palisade-proxy")
        .display()
        .to_string()
}
static WORLDS: AtomicUsize = AtomicUsize::new(0);

pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e} (these tests need root, iproute2 and iptables)"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn sh_output(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `f` on a thread inside network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    })
    .join()
    .unwrap()
}

/// Starts `f` on a detached thread inside `ns` (for servers).
pub fn spawn_in_netns(ns: &str, f: impl FnOnce() + Send + 'static) {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = File::open(&path).unwrap();
        setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
        f()
    });
}

/// What an echo server received, connection by connection.
pub type Received = Arc<Mutex<Vec<Vec<u8>>>>;

/// An echo server on `addr` inside `ns`: echoes every byte, records what it got.
pub fn echo_server(ns: &str, addr: SocketAddr) -> Received {
    let received: Received = Arc::default();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let log = received.clone();
    spawn_in_netns(ns, move || {
        let listener = TcpListener::bind(addr).unwrap();
        ready_tx.send(()).unwrap();
        for stream in listener.incoming().flatten() {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut stream = stream;
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                    got.extend_from_slice(&buf[..n]);
                }
                let _ = stream.shutdown(Shutdown::Write);
                log.lock().unwrap().push(got);
            });
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    received
}

/// From inside `ns`: connect, send `payload`, half-close, read everything back.
pub fn talk(ns: &str, addr: SocketAddr, payload: &'static [u8]) -> std::io::Result<Vec<u8>> {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(payload)?;
        s.shutdown(Shutdown::Write)?;
        let mut back = Vec::new();
        s.read_to_end(&mut back)?;
        Ok(back)
    })
}

/// An HTTP/1.0 GET on a proxy's admin port, from inside `ns`.
pub fn admin_get(ns: &str, path: &'static str) -> Option<String> {
    in_netns(ns, move || {
        let mut s =
            TcpStream::connect_timeout(&"127.0.0.1:15020".parse().unwrap(), Duration::from_secs(1))
                .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        Some(out)
    })
}

pub struct Host {
    pub ns: String,
    pub ip: String,
    pub state_dir: PathBuf,
    pub flow_log: PathBuf,
    pub proxy: Option<Child>,
}

pub struct World {
    tag: String,
    router: String,
    pub hosts: Vec<Host>,
    pub dir: tempfile::TempDir,
    pub ca: CertificateAuthority,
    next_if: usize,
}

impl World {
    pub fn new() -> World {
        let n = WORLDS.fetch_add(1, Ordering::SeqCst);
        let tag = format!("pal{}x{n}", std::process::id() % 100_000);
        let router = format!("{tag}-router");
        sh(&["ip", "netns", "add", &router]);
        let world = World {
            tag,
            router: router.clone(),
            hosts: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            ca: CertificateAuthority::generate(CaConfig::default()).unwrap(),
            next_if: 0,
        };
        std::fs::set_permissions(world.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        sh(&["ip", "-n", &router, "link", "add", "br0", "type", "bridge"]);
        sh(&["ip", "-n", &router, "link", "set", "br0", "up"]);
        world
    }

    /// A host on the bridge with `ip`/24 (or /64 for IPv6). `name` is how tests
    /// refer to it.
    pub fn add_host(&mut self, name: &str, ip: &str) -> usize {
        let ns = format!("{}-{name}", self.tag);
        sh(&["ip", "netns", "add", &ns]);
        let veth = format!("v{}{}", self.tag.trim_start_matches("pal"), self.next_if);
        self.next_if += 1;
        sh(&[
            "ip",
            "-n",
            &self.router,
            "link",
            "add",
            &veth,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &ns,
        ]);
        sh(&[
            "ip",
            "-n",
            &self.router,
            "link",
            "set",
            &veth,
            "master",
            "br0",
            "up",
        ]);
        if ip.contains(':') {
            // nodad: usable at once, not after duplicate address detection.
            let cidr = format!("{ip}/64");
            sh(&[
                "ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0", "nodad",
            ]);
        } else {
            sh(&[
                "ip",
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                "eth0",
            ]);
        }
        sh(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        let state_dir = self.dir.path().join(name);
        std::fs::create_dir_all(state_dir.join("manifests")).unwrap();
        let flow_log = self.dir.path().join(format!("{name}.flows.jsonl"));
        self.hosts.push(Host {
            ns,
            ip: ip.into(),
            state_dir,
            flow_log,
            proxy: None,
        });
        self.hosts.len() - 1
    }

    pub fn ns(&self, host: usize) -> &str {
        &self.hosts[host].ns
    }

    pub fn addr(&self, host: usize, port: u16) -> SocketAddr {
        SocketAddr::new(self.hosts[host].ip.parse().unwrap(), port)
    }

    /// Writes the host's identity (for `spiffe://cluster.local/ns/<ns>/sa/<sa>`), the
    /// trust bundle and the shared manifests into its state directory, readable by
    /// the proxy's UID.
    pub fn write_state(
        &self,
        host: usize,
        namespace: &str,
        service_account: &str,
        manifests: &str,
    ) {
        let dir = &self.hosts[host].state_dir;
        let id = SpiffeId::new("cluster.local", namespace, service_account).unwrap();
        let (pending, csr) = request(&id).unwrap();
        let issued = self.ca.issue(&csr, &id, None).unwrap();
        std::fs::write(dir.join("identity.crt"), certificates_pem(&[issued.der])).unwrap();
        std::fs::write(dir.join("identity.key"), pending.key_pem()).unwrap();
        std::fs::write(
            dir.join("bundle.crt"),
            certificates_pem(&[self.ca.root().clone()]),
        )
        .unwrap();
        std::fs::write(dir.join("manifests/cluster.yaml"), manifests).unwrap();
        for entry in walk(dir) {
            std::os::unix::fs::chown(&entry, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        }
    }

    /// `palisade-proxy init` in the host's namespace, as root.
    pub fn init(&self, host: usize, extra: &[&str]) {
        let bin = proxy_bin();
        let mut args = vec!["ip", "netns", "exec", self.ns(host), bin.as_str(), "init"];
        args.extend_from_slice(extra);
        sh(&args);
    }

    /// Starts the host's proxy as UID 1337 and waits until it is ready.
    pub fn start_proxy(&mut self, host: usize, pod: &str, extra: &[&str]) {
        let h = &self.hosts[host];
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &h.ns,
            "setpriv",
            "--reuid=1337",
            "--regid=1337",
            "--clear-groups",
        ])
        .arg(proxy_bin())
        .args(["run", "--pod", pod, "--state-dir"])
        .arg(&h.state_dir)
        .arg("--flow-log")
        .arg(&h.flow_log)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(
            File::create(self.dir.path().join(format!("{}.log", h.ns)))
                .map(Stdio::from)
                .unwrap_or(Stdio::null()),
        );
        // The flow log file must be writable by the proxy's UID.
        File::create(&h.flow_log).unwrap();
        std::os::unix::fs::chown(&h.flow_log, Some(PROXY_UID), Some(PROXY_UID)).unwrap();
        let child = cmd.spawn().unwrap();
        self.hosts[host].proxy = Some(child);
        let ns = self.ns(host).to_owned();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if admin_get(&ns, "/ready")
                .is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "proxy in {ns} not ready; log:\n{}",
                self.proxy_log(host)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn kill_proxy(&mut self, host: usize) {
        if let Some(mut child) = self.hosts[host].proxy.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // `ip netns exec` forwards nothing: kill the proxy itself too.
        let _ = Command::new("pkill")
            .args([
                "-KILL",
                "-f",
                "--",
                &format!("--state-dir {}", self.hosts[host].state_dir.display()),
            ])
            .status();
        std::thread::sleep(Duration::from_millis(200));
    }

    pub fn proxy_log(&self, host: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{}.log", self.hosts[host].ns)))
            .unwrap_or_default()
    }

    /// The host's flow records; waits up to 5 s for one that `pred` accepts.
    pub fn flow(
        &self,
        host: usize,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&self.hosts[host].flow_log).unwrap_or_default();
            let records: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if let Some(r) = records.iter().find(|r| pred(r)) {
                return r.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no matching flow record in {}:\n{text}",
                self.hosts[host].ns
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn flow_records(&self, host: usize) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.hosts[host].flow_log).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_owned()];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

impl Drop for World {
    fn drop(&mut self) {
        for i in 0..self.hosts.len() {
            self.kill_proxy(i);
        }
        for h in &self.hosts {
            let _ = Command::new("ip").args(["netns", "del", &h.ns]).status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.router])
            .status();
    }
}

/// An HTTP app (HTTP/1.1 and HTTP/2 prior knowledge) on `addr` inside `ns`. It
/// answers 200 with `METHOD TARGET` and the identity headers it received, so a test
/// sees exactly what the proxy forwarded.
pub fn http_app(ns: &str, addr: SocketAddr) {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    spawn_in_netns(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
            ready_tx.send(()).unwrap();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        |mut req: hyper::Request<hyper::body::Incoming>| async move {
                            // A WebSocket upgrade: 101, then echo raw bytes.
                            if req
                                .headers()
                                .get("upgrade")
                                .is_some_and(|v| v == "websocket")
                            {
                                return Ok(websocket_echo(&mut req));
                            }
                            let header = |name: &str| {
                                req.headers()
                                    .get(name)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_owned()
                            };
                            let body = format!(
                                "{} {} {:?} peer={} xfcc={} l5d={}\n",
                                req.method(),
                                req.uri().path_and_query().map_or("", |p| p.as_str()),
                                req.version(),
                                header("x-palisade-peer-identity"),
                                header("x-forwarded-client-cert"),
                                header("l5d-client-id"),
                            );
                            Ok::<_, std::convert::Infallible>(hyper::Response::new(
                                http_body_util::Full::new(bytes::Bytes::from(body)),
                            ))
                        },
                    );
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
                });
            }
        });
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

/// Answers a WebSocket upgrade with 101 and echoes the upgraded bytes.
fn websocket_echo(
    req: &mut hyper::Request<hyper::body::Incoming>,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let upgrade = hyper::upgrade::on(req);
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(up) = upgrade.await else { return };
        let mut io = hyper_util::rt::TokioIo::new(up);
        let mut buf = [0u8; 1024];
        while let Ok(n) = io.read(&mut buf).await {
            if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                break;
            }
        }
    });
    let mut r = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::new()));
    *r.status_mut() = hyper::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(
        "upgrade",
        hyper::header::HeaderValue::from_static("websocket"),
    );
    h.insert(
        "connection",
        hyper::header::HeaderValue::from_static("upgrade"),
    );
    r
}

/// From inside `ns`: sends `request` as raw bytes and reads until the peer closes
/// (or 3 s pass). Returns what came back, lossily as text.
pub fn raw_http(ns: &str, addr: SocketAddr, request: Vec<u8>) -> String {
    in_netns(ns, move || {
        let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(3)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.write_all(&request);
        let mut back = Vec::new();
        let _ = s.read_to_end(&mut back);
        String::from_utf8_lossy(&back).into_owned()
    })
}
