//! End to end, as root: real network namespaces on a bridge, real iptables rules,
//! real proxy processes, real mTLS. See tests/support for the world they run in.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use support::{echo_server, in_netns, sh_output, talk, World};

const MANIFESTS: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec: {serviceAccountName: client, containers: [{name: c}]}
status: {podIP: 10.211.0.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server, namespace: shop, labels: {app: server}}
spec: {serviceAccountName: server, containers: [{name: c}]}
status: {podIP: 10.211.0.3}
---
apiVersion: v1
kind: Pod
metadata: {name: intruder, namespace: shop, labels: {app: intruder}}
spec: {serviceAccountName: intruder, containers: [{name: c}]}
status: {podIP: 10.211.0.4}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: default-deny}
spec: {order: 1000, selector: all(), types: [Ingress, Egress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-egress, namespace: shop}
spec:
  selector: app == 'client'
  types: [Egress]
  egress:
    - action: Allow
      protocol: TCP
      destination: {selector: app == 'server', ports: [8080]}
    - action: Allow
      protocol: TCP
      destination: {nets: [10.211.0.100/32], ports: [8080]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-ingress, namespace: shop}
spec:
  selector: app == 'server'
  ingress:
    - action: Allow
      protocol: TCP
      source: {selector: app == 'client'}
      destination: {ports: [8080]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: intruder-egress, namespace: shop}
spec:
  selector: app == 'intruder'
  types: [Egress]
  egress:
    - action: Allow
      protocol: TCP
";

const CLIENT: usize = 0;
const SERVER: usize = 1;
const INTRUDER: usize = 2;
const OUTSIDE: usize = 3;

/// client, server and intruder are mesh pods with proxies; outside is a host of the
/// same network with no proxy and no place in the manifests.
fn mesh(proxy_args: &[&str]) -> World {
    let mut w = World::new();
    for (name, ip, sa) in [
        ("client", "10.211.0.2", "client"),
        ("server", "10.211.0.3", "server"),
        ("intruder", "10.211.0.4", "intruder"),
    ] {
        let h = w.add_host(name, ip);
        w.write_state(h, "shop", sa, MANIFESTS);
    }
    w.add_host("outside", "10.211.0.100");
    w.init(CLIENT, &["--exclude-outbound-ports", "9999"]);
    w.init(SERVER, &[]);
    w.init(INTRUDER, &[]);
    w.start_proxy(CLIENT, "shop/client", proxy_args);
    w.start_proxy(SERVER, "shop/server", proxy_args);
    w.start_proxy(INTRUDER, "shop/intruder", proxy_args);
    w
}

fn got(received: &support::Received) -> Vec<Vec<u8>> {
    received.lock().unwrap().clone()
}

/// Waits until the server app has finished with `n` connections.
fn wait_for(received: &support::Received, n: usize) -> Vec<Vec<u8>> {
    for _ in 0..100 {
        if got(received).len() >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    got(received)
}

#[test]
fn mesh_enforces_policy_end_to_end() {
    let mut w = mesh(&[]);
    let server_app = echo_server(w.ns(SERVER), w.addr(SERVER, 8080));
    let intruder_app = echo_server(w.ns(INTRUDER), w.addr(INTRUDER, 8080));
    let outside_8080 = echo_server(w.ns(OUTSIDE), w.addr(OUTSIDE, 8080));
    let outside_9999 = echo_server(w.ns(OUTSIDE), w.addr(OUTSIDE, 9999));
    let outside_7777 = echo_server(w.ns(OUTSIDE), w.addr(OUTSIDE, 7777));

    // Allowed through both proxies: the server app sees the bytes, both flow records
    // name the deciding policy and the peer's identity.
    let back = talk(w.ns(CLIENT), w.addr(SERVER, 8080), b"hello server").unwrap();
    assert_eq!(back, b"hello server");
    assert_eq!(wait_for(&server_app, 1), vec![b"hello server".to_vec()]);
    let src = w.flow(CLIENT, |r| {
        r["destination"]["pod"] == "server" && r["kind"] == "end"
    });
    assert_eq!(src["reporter"], "source");
    assert_eq!(src["action"], "allow");
    assert_eq!(src["policies"]["egress"], "cnp/shop/client-egress:0");
    assert_eq!(src["tls_peer"], "spiffe://cluster.local/ns/shop/sa/server");
    assert_eq!(src["bytes_sent"], 12);
    assert_eq!(src["bytes_received"], 12);
    assert_eq!(src["source"]["service_account"], "client");
    let dst = w.flow(SERVER, |r| {
        r["source"]["pod"] == "client" && r["kind"] == "end"
    });
    assert_eq!(dst["reporter"], "destination");
    assert_eq!(dst["action"], "allow");
    assert_eq!(dst["policies"]["ingress"], "cnp/shop/server-ingress:0");
    assert_eq!(dst["tls_peer"], "spiffe://cluster.local/ns/shop/sa/client");
    assert_eq!(dst["destination"]["port"], 8080);

    // Denied at egress: the client's own proxy refuses; the intruder app sees nothing.
    let r = talk(w.ns(CLIENT), w.addr(INTRUDER, 8080), b"psst");
    assert!(r.as_ref().map_or(true, |b| b.is_empty()), "{r:?}");
    let rec = w.flow(CLIENT, |r| r["destination"]["pod"] == "intruder");
    assert_eq!(
        (rec["action"].as_str(), rec["policies"]["egress"].as_str()),
        (Some("deny"), Some("end-of-tier/default"))
    );
    assert!(got(&intruder_app).is_empty());

    // Denied at ingress: the intruder's egress allows, the server's ingress does not.
    let r = talk(w.ns(INTRUDER), w.addr(SERVER, 8080), b"let me in");
    assert!(r.as_ref().map_or(true, |b| b.is_empty()), "{r:?}");
    let rec = w.flow(SERVER, |r| r["source"]["pod"] == "intruder");
    assert_eq!(rec["action"], "deny");
    assert_eq!(rec["policies"]["ingress"], "end-of-tier/default");
    assert_eq!(
        rec["tls_peer"],
        "spiffe://cluster.local/ns/shop/sa/intruder"
    );
    let out = w.flow(INTRUDER, |r| r["destination"]["pod"] == "server");
    assert_eq!(out["policies"]["egress"], "cnp/shop/intruder-egress:0");
    assert_eq!(
        got(&server_app).len(),
        1,
        "the server app saw only the allowed connection"
    );

    // Plaintext from outside the mesh is refused in strict mode.
    let r = talk(w.ns(OUTSIDE), w.addr(SERVER, 8080), b"plain");
    assert!(r.as_ref().map_or(true, |b| b.is_empty()), "{r:?}");
    let rec = w.flow(SERVER, |r| r["source"]["ip"] == "10.211.0.100");
    assert_eq!(rec["action"], "deny");
    assert!(
        rec["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("plaintext refused"),
        "{rec}"
    );

    // A stolen certificate: the client's identity presented from outside's address.
    let client_dir = w.hosts[CLIENT].state_dir.clone();
    let server_addr = w.addr(SERVER, 8080);
    let stolen = in_netns(w.ns(OUTSIDE), move || {
        let read = |f: &str| std::fs::read_to_string(client_dir.join(f)).unwrap();
        let creds = palisade_certs::Credentials::from_pem(
            &read("identity.crt"),
            &read("identity.key"),
            "cluster.local",
        )
        .unwrap();
        let roots = {
            use rustls::pki_types::pem::PemObject;
            rustls::pki_types::CertificateDer::pem_slice_iter(read("bundle.crt").as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap()
        };
        let bundle = palisade_certs::TrustBundle::new(roots);
        let expected = palisade_certs::SpiffeId::new("cluster.local", "shop", "server").unwrap();
        let config = palisade_certs::tls::client_config(
            palisade_certs::IdentityStore::new(creds),
            &bundle,
            expected,
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(server_addr).await.unwrap();
            let mut tls = tokio_rustls::TlsConnector::from(config)
                .connect(palisade_certs::tls::server_name(), tcp)
                .await
                .unwrap();
            let _ = tls.write_all(b"i am the client").await;
            let mut buf = Vec::new();
            let _ = tls.read_to_end(&mut buf).await;
            buf
        })
    });
    assert!(stolen.is_empty(), "nothing comes back to a stolen identity");
    let rec = w.flow(SERVER, |r| {
        r["source"]["ip"] == "10.211.0.100" && r["tls_peer"].is_string()
    });
    assert_eq!(rec["action"], "deny");
    assert!(
        rec["reason"].as_str().unwrap_or_default().contains(
            "identity spiffe://cluster.local/ns/shop/sa/client does not own source IP 10.211.0.100"
        ),
        "{rec}"
    );
    assert_eq!(got(&server_app).len(), 1);

    // Outside the mesh, allowed by egress: plain TCP, straight to the address.
    assert_eq!(
        talk(w.ns(CLIENT), w.addr(OUTSIDE, 8080), b"to the world").unwrap(),
        b"to the world"
    );
    assert_eq!(wait_for(&outside_8080, 1), vec![b"to the world".to_vec()]);
    let rec = w.flow(CLIENT, |r| {
        r["destination"]["ip"] == "10.211.0.100" && r["destination"]["port"] == 8080
    });
    assert_eq!(
        (rec["action"].as_str(), rec["tls_peer"].is_null()),
        (Some("allow"), true)
    );

    // Port exclusion: 9999 bypasses the proxy (no policy allows it, it works anyway,
    // and the proxy never sees it), while 7777 meets the policy and is denied.
    assert_eq!(
        talk(w.ns(CLIENT), w.addr(OUTSIDE, 9999), b"excluded").unwrap(),
        b"excluded"
    );
    assert_eq!(wait_for(&outside_9999, 1).len(), 1);
    assert!(w
        .flow_records(CLIENT)
        .iter()
        .all(|r| r["destination"]["port"] != 9999));
    let r = talk(w.ns(CLIENT), w.addr(OUTSIDE, 7777), b"not excluded");
    assert!(r.as_ref().map_or(true, |b| b.is_empty()));
    assert!(got(&outside_7777).is_empty());

    // Metrics count what happened, with policy labels.
    let metrics = support::admin_get(w.ns(SERVER), "/metrics").unwrap();
    assert!(metrics.contains(r#"palisade_proxy_connections_total{direction="inbound",verdict="allow",policy="cnp/shop/server-ingress:0"} 1"#), "{metrics}");
    let config = support::admin_get(w.ns(SERVER), "/config").unwrap();
    assert!(
        config.contains(r#""identity":"spiffe://cluster.local/ns/shop/sa/server""#),
        "{config}"
    );

    // A proxy that is not running means connection refused, never a bypass.
    w.kill_proxy(CLIENT);
    let r = talk(w.ns(CLIENT), w.addr(SERVER, 8080), b"bypass?");
    assert_eq!(
        r.map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionRefused)
    );
    assert_eq!(got(&server_app).len(), 1);
}

#[test]
fn hostile_peers_never_crash_or_wedge_the_proxy() {
    let w = mesh(&["--handshake-timeout-ms", "1000"]);
    let server_app = echo_server(w.ns(SERVER), w.addr(SERVER, 8080));
    let addr = w.addr(SERVER, 8080);

    // A half-open peer: connects and sends nothing.
    let silent = in_netns(w.ns(OUTSIDE), move || {
        TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap()
    });
    // Meanwhile real traffic still flows.
    assert_eq!(
        talk(w.ns(CLIENT), addr, b"still here").unwrap(),
        b"still here"
    );

    // Garbage that looks like TLS, and plain garbage.
    for garbage in [
        &b"\x16\x03\x01\x00\x05\xff\xff\xff\xff\xff\x00garbage"[..],
        &[0u8, 1, 2, 3, 0xff, 0xfe][..],
    ] {
        let bytes = garbage.to_vec();
        let r = in_netns(w.ns(OUTSIDE), move || {
            let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let _ = s.write_all(&bytes);
            let mut buf = Vec::new();
            s.read_to_end(&mut buf).map(|_| buf)
        });
        assert!(r.as_ref().map_or(true, |b| b.is_empty()), "{r:?}");
    }

    // A TLS client without a certificate.
    let no_cert = in_netns(w.ns(OUTSIDE), move || {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny))
        .with_no_client_auth();
        let mut config = config;
        config.alpn_protocols = vec![b"palisade/1".to_vec()];
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
            match tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(palisade_certs::tls::server_name(), tcp)
                .await
            {
                Ok(mut tls) => {
                    let _ = tls.write_all(b"anonymous").await;
                    let mut buf = Vec::new();
                    let _ = tls.read_to_end(&mut buf).await;
                    buf
                }
                Err(_) => Vec::new(),
            }
        })
    });
    assert!(no_cert.is_empty());
    let rec = w.flow(SERVER, |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("mTLS handshake failed"))
    });
    assert_eq!(rec["action"], "deny");

    // The silent peer is dropped after the handshake timeout, not kept forever.
    let mut silent = silent;
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = [0u8; 1];
    let r = silent.read(&mut buf);
    assert!(matches!(r, Ok(0)) || r.is_err(), "{r:?}");
    let _ = silent.shutdown(Shutdown::Both);

    // And after all of it the proxy is alive and serving.
    assert!(support::admin_get(w.ns(SERVER), "/live")
        .unwrap()
        .contains("200"));
    assert_eq!(talk(w.ns(CLIENT), addr, b"after").unwrap(), b"after");
    assert_eq!(wait_for(&server_app, 2).len(), 2);
    let metrics = support::admin_get(w.ns(SERVER), "/metrics").unwrap();
    assert!(
        metrics.contains("palisade_proxy_tls_handshake_failures_total{direction=\"inbound\"}"),
        "{metrics}"
    );
}

#[test]
fn init_twice_then_cleanup_leaves_no_rule_behind() {
    let mut w = World::new();
    let h = w.add_host("rules", "10.211.0.9");
    let ns = w.ns(h).to_owned();
    let save = |cmd: &str| sh_output(&["ip", "netns", "exec", &ns, cmd, "-t", "nat"]);
    let strip = |s: String| {
        s.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split(" [").next().unwrap_or(l).to_owned())
            .collect::<Vec<_>>()
    };
    let before = (strip(save("iptables-save")), strip(save("ip6tables-save")));
    w.init(
        h,
        &[
            "--exclude-outbound-ports",
            "9999",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
        ],
    );
    let once = (strip(save("iptables-save")), strip(save("ip6tables-save")));
    w.init(
        h,
        &[
            "--exclude-outbound-ports",
            "9999",
            "--exclude-outbound-cidrs",
            "10.96.0.0/12,fd00::/8",
        ],
    );
    let twice = (strip(save("iptables-save")), strip(save("ip6tables-save")));
    assert_eq!(once, twice, "a second init leaves one set of rules");
    assert!(
        once.0
            .iter()
            .any(|l| l == "-A PALISADE_OUTPUT -m owner --uid-owner 1337 -j RETURN"),
        "{:?}",
        once.0
    );
    assert!(
        once.0.iter().any(|l| l.contains("10.96.0.0/12"))
            && !once.0.iter().any(|l| l.contains("fd00::/8"))
    );
    assert!(
        once.1.iter().any(|l| l.contains("fd00::/8")),
        "{:?}",
        once.1
    );
    assert!(once
        .1
        .iter()
        .any(|l| l.contains("REDIRECT --to-ports 15006")));
    sh_output(&[
        "ip",
        "netns",
        "exec",
        &ns,
        env!("CARGO_BIN_EXE_palisade-proxy"),
        "cleanup",
    ]);
    let after = (strip(save("iptables-save")), strip(save("ip6tables-save")));
    assert_eq!(before, after, "cleanup removes exactly what init wrote");
}

#[derive(Debug)]
struct AcceptAny;

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The state version the proxy's /ready reports.
fn state_version(w: &World, host: usize) -> Option<u64> {
    let ready = support::admin_get(w.ns(host), "/ready")?;
    ready.trim_end().rsplit(' ').next()?.parse().ok()
}

/// Polls the proxy's /ready until it reports state version `version` or later.
fn wait_for_version(w: &World, host: usize, version: u64) {
    for _ in 0..100 {
        if state_version(w, host).is_some_and(|v| v >= version) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "{} never reached state version {version}; /ready says {:?}",
        w.ns(host),
        support::admin_get(w.ns(host), "/ready")
    );
}

#[test]
fn state_files_reload_on_change_and_a_bad_state_keeps_the_last_good() {
    let w = mesh(&[]);
    let server_app = echo_server(w.ns(SERVER), w.addr(SERVER, 8080));
    assert_eq!(
        talk(w.ns(CLIENT), w.addr(SERVER, 8080), b"v1").unwrap(),
        b"v1"
    );
    wait_for_version(&w, CLIENT, 1);
    let dir = w.hosts[CLIENT].state_dir.clone();

    // A certificate file that does not parse: nothing reloads, the policy in force
    // still allows, and the log names the file.
    let good_crt = std::fs::read(dir.join("identity.crt")).unwrap();
    std::fs::write(
        dir.join("identity.crt"),
        b"-----BEGIN CERTIFICATE-----\ngarbage\n",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(state_version(&w, CLIENT), Some(1));
    assert_eq!(
        talk(w.ns(CLIENT), w.addr(SERVER, 8080), b"still v1").unwrap(),
        b"still v1"
    );
    let log = w.proxy_log(CLIENT);
    assert!(
        log.contains("state not loaded") && log.contains("identity.crt"),
        "{log}"
    );

    // The certificate restored and the egress rule moved to another port, written as
    // an operator would (temporary file, then rename): the next connection is denied
    // by the new version.
    std::fs::write(dir.join("identity.crt"), good_crt).unwrap();
    let edited = MANIFESTS.replacen(
        "destination: {selector: app == 'server', ports: [8080]}",
        "destination: {selector: app == 'server', ports: [9090]}",
        1,
    );
    assert_ne!(edited, MANIFESTS);
    let tmp = dir.join("manifests/.cluster.yaml.tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::os::unix::fs::chown(&tmp, Some(1337), Some(1337)).unwrap();
    std::fs::rename(&tmp, dir.join("manifests/cluster.yaml")).unwrap();
    wait_for_version(&w, CLIENT, 2);
    let r = talk(w.ns(CLIENT), w.addr(SERVER, 8080), b"v2");
    assert!(r.as_ref().map_or(true, |b| b.is_empty()), "{r:?}");
    let rec = w.flow(CLIENT, |r| {
        r["destination"]["pod"] == "server" && r["action"] == "deny"
    });
    assert_eq!(rec["policies"]["egress"], "end-of-tier/default");
    assert_eq!(
        wait_for(&server_app, 2),
        vec![b"v1".to_vec(), b"still v1".to_vec()]
    );
}

#[test]
fn ipv6_pods_are_meshed_and_enforced_like_ipv4_ones() {
    let manifests = MANIFESTS
        .replace("podIP: 10.211.0.2", "podIP: 'fd00:211::2'")
        .replace("podIP: 10.211.0.3", "podIP: 'fd00:211::3'")
        .replace("podIP: 10.211.0.4", "podIP: 'fd00:211::4'");
    let mut w = World::new();
    for (name, ip, sa) in [
        ("client", "fd00:211::2", "client"),
        ("server", "fd00:211::3", "server"),
        ("intruder", "fd00:211::4", "intruder"),
    ] {
        let h = w.add_host(name, ip);
        w.write_state(h, "shop", sa, &manifests);
        w.init(h, &[]);
    }
    w.start_proxy(CLIENT, "shop/client", &[]);
    w.start_proxy(SERVER, "shop/server", &[]);
    w.start_proxy(INTRUDER, "shop/intruder", &[]);
    let server_app = echo_server(w.ns(SERVER), w.addr(SERVER, 8080));

    // Through both proxies over IPv6 (IP6T_SO_ORIGINAL_DST on both sides).
    assert_eq!(
        talk(w.ns(CLIENT), w.addr(SERVER, 8080), b"hello v6").unwrap(),
        b"hello v6"
    );
    let dst = w.flow(SERVER, |r| r["source"]["pod"] == "client");
    assert_eq!(
        (dst["action"].as_str(), dst["policies"]["ingress"].as_str()),
        (Some("allow"), Some("cnp/shop/server-ingress:0"))
    );
    assert_eq!(dst["source"]["ip"], "fd00:211::2");
    assert_eq!(dst["tls_peer"], "spiffe://cluster.local/ns/shop/sa/client");

    // Denied at the server's ingress.
    let r = talk(w.ns(INTRUDER), w.addr(SERVER, 8080), b"v6 intruder");
    assert!(r.as_ref().map_or(true, |b| b.is_empty()), "{r:?}");
    let rec = w.flow(SERVER, |r| r["source"]["pod"] == "intruder");
    assert_eq!(rec["action"], "deny");
    assert_eq!(wait_for(&server_app, 1), vec![b"hello v6".to_vec()]);
}

#[test]
fn a_state_change_closes_open_connections_it_denies_and_keeps_the_others() {
    let w = mesh(&[]);
    let _server_app = echo_server(w.ns(SERVER), w.addr(SERVER, 8080));
    let _outside_app = echo_server(w.ns(OUTSIDE), w.addr(OUTSIDE, 8080));
    let open = |to: std::net::SocketAddr| {
        let mut s = in_netns(w.ns(CLIENT), move || TcpStream::connect(to)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
        s.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        s
    };
    let mut to_server = open(w.addr(SERVER, 8080));
    let mut to_outside = open(w.addr(OUTSIDE, 8080));

    // The client's egress rule to the server moves to another port.
    let dir = w.hosts[CLIENT].state_dir.clone();
    let edited = MANIFESTS.replacen(
        "destination: {selector: app == 'server', ports: [8080]}",
        "destination: {selector: app == 'server', ports: [9090]}",
        1,
    );
    let tmp = dir.join("manifests/.cluster.yaml.tmp");
    std::fs::write(&tmp, edited).unwrap();
    std::os::unix::fs::chown(&tmp, Some(1337), Some(1337)).unwrap();
    let written = std::time::Instant::now();
    std::fs::rename(&tmp, dir.join("manifests/cluster.yaml")).unwrap();

    // Now denied: closed within 1 s of the write.
    let mut buf = [0u8; 4];
    let n = to_server.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the denied connection is closed");
    let took = written.elapsed();
    assert!(took < Duration::from_secs(1), "closed after {took:?}");
    eprintln!("state file written -> denied connection closed in {took:?}");
    let rec = w.flow(CLIENT, |r| {
        r["destination"]["pod"] == "server" && r["action"] == "deny"
    });
    assert!(
        rec["reason"].as_str().is_some_and(
            |r| r.starts_with("closed: state version 2 denies it (end-of-tier/default)")
        ),
        "{rec}"
    );

    // Still allowed: untouched.
    to_outside.write_all(b"pong").unwrap();
    to_outside.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
}
