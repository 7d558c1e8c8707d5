//! HTTP enforcement end to end: real namespaces, iptables, proxies and mTLS; curl and
//! raw sockets as clients, a hyper app that reports what reached it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod support;

use support::{http_app, raw_http, sh_output, World};

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
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: default-deny}
spec: {order: 1000, selector: all(), types: [Ingress, Egress]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-out, namespace: shop}
spec:
  selector: app == 'client'
  types: [Egress]
  egress: [{action: Allow, protocol: TCP}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-api, namespace: shop}
spec:
  selector: app == 'server'
  order: 100
  ingress:
    - action: Deny
      protocol: TCP
      destination: {ports: [8080]}
      http: {paths: [{prefix: /admin}]}
    - action: Allow
      protocol: TCP
      source: {selector: app == 'client'}
      destination: {ports: [8080]}
      http:
        methods: [GET, POST]
        paths: [{exact: /public}, {prefix: /api/}]
    - action: Allow
      protocol: TCP
      source: {selector: app == 'client'}
      destination: {ports: [9090, 7070]}
    - action: Allow
      protocol: TCP
      source: {selector: app == 'client'}
      destination: {ports: [8083]}
      http: {methods: [POST], paths: [{prefix: /shop.Orders/}]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: client-egress-http, namespace: shop}
spec:
  selector: app == 'client'
  order: 50
  types: [Egress]
  egress:
    - action: Allow
      protocol: TCP
      destination: {ports: [7070]}
      http: {methods: [GET], paths: [{prefix: /ok}]}
    - action: Deny
      protocol: TCP
      destination: {ports: [7070]}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: server-open, namespace: shop}
spec:
  selector: app == 'server'
  order: 200
  ingress:
    - action: Deny
      protocol: TCP
      destination: {ports: [8081]}
      http: {paths: [{prefix: /admin}]}
    - action: Allow
      protocol: TCP
      destination: {ports: [8081]}
";

const CLIENT: usize = 0;
const SERVER: usize = 1;

fn mesh() -> World {
    let mut w = World::new();
    for (name, ip) in [("client", "10.211.0.2"), ("server", "10.211.0.3")] {
        let h = w.add_host(name, ip);
        w.write_state(h, "shop", name, MANIFESTS);
        w.init(h, &[]);
    }
    w.start_proxy(CLIENT, "shop/client", &["--http-detect-timeout-ms", "1000"]);
    w.start_proxy(SERVER, "shop/server", &["--http-detect-timeout-ms", "1000"]);
    http_app(w.ns(SERVER), w.addr(SERVER, 8080));
    http_app(w.ns(SERVER), w.addr(SERVER, 9090));
    http_app(w.ns(SERVER), w.addr(SERVER, 8081));
    http_app(w.ns(SERVER), w.addr(SERVER, 7070));
    w
}

/// curl from the client pod: (status, body).
fn curl(w: &World, args: &[&str]) -> (u16, String) {
    let mut cmd = vec![
        "ip",
        "netns",
        "exec",
        w.ns(CLIENT),
        "curl",
        "-sS",
        "-m",
        "5",
    ];
    cmd.extend_from_slice(args);
    cmd.extend_from_slice(&["-w", "\n%{http_code}"]);
    let out = sh_output(&cmd);
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap_or(0), body.trim_end().to_owned())
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: server\r\nConnection: close\r\n\r\n").into_bytes()
}

/// The status code of a raw response.
fn status(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

#[test]
fn requests_are_decided_one_by_one_with_curl() {
    let w = mesh();
    let url = |p: &str| format!("http://10.211.0.3:8080{p}");

    // HTTP/1.1 allowed: the app answers, and sees the verified identity, not the
    // identity headers the client made up.
    let (code, body) = curl(
        &w,
        &[
            "-H",
            "x-forwarded-client-cert: By=spiffe://evil",
            "-H",
            "l5d-client-id: admin",
            "-H",
            "x-palisade-peer-identity: spiffe://cluster.local/ns/kube-system/sa/admin",
            &url("/public"),
        ],
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        body,
        "GET /public HTTP/1.1 peer=spiffe://cluster.local/ns/shop/sa/client xfcc=- l5d=-"
    );
    let rec = w.flow(SERVER, |r| r["http"]["path"] == "/public");
    assert_eq!(rec["action"], "allow");
    assert_eq!(rec["policies"]["ingress"], "cnp/shop/server-api:1");
    assert_eq!(rec["http"]["method"], "GET");
    assert_eq!(rec["http"]["status"], 200);
    assert_eq!(rec["tls_peer"], "spiffe://cluster.local/ns/shop/sa/client");

    // Denied: 403 with a request id; the body names no policy, the record does.
    let (code, body) = curl(&w, &["-i", &url("/admin/users")]);
    assert_eq!(code, 403);
    assert!(!body.contains("server-api"), "{body}");
    let id = body
        .lines()
        .find_map(|l| l.strip_prefix("x-palisade-request-id: "))
        .expect("request id header")
        .trim()
        .to_owned();
    let rec = w.flow(SERVER, |r| r["http"]["request_id"] == id.as_str());
    assert_eq!(rec["action"], "deny");
    assert_eq!(rec["policies"]["ingress"], "cnp/shop/server-api:0");
    assert_eq!(rec["http"]["status"], 403);

    // A method the rule does not list falls through to the tier's end.
    let (code, _) = curl(&w, &["-X", "DELETE", &url("/api/x")]);
    assert_eq!(code, 403);
    let rec = w.flow(SERVER, |r| r["http"]["method"] == "DELETE");
    assert_eq!(rec["policies"]["ingress"], "end-of-tier/default");

    // HTTP/2 with prior knowledge, inside the mesh tunnel: same decisions, and the
    // app is spoken to in HTTP/2.
    let (code, body) = curl(&w, &["--http2-prior-knowledge", &url("/api/orders?id=7")]);
    assert_eq!(code, 200, "{body}");
    assert!(
        body.starts_with(
            "GET /api/orders?id=7 HTTP/2.0 peer=spiffe://cluster.local/ns/shop/sa/client"
        ),
        "{body}"
    );
    let (code, _) = curl(&w, &["--http2-prior-knowledge", &url("/admin")]);
    assert_eq!(code, 403);

    // gRPC-shaped request denied: PERMISSION_DENIED (7) in the response headers.
    let (_, head) = curl(
        &w,
        &[
            "--http2-prior-knowledge",
            "-i",
            "-X",
            "POST",
            "-H",
            "content-type: application/grpc",
            "--data-binary",
            "",
            &url("/admin.Service/Delete"),
        ],
    );
    assert!(head.contains("grpc-status: 7"), "{head}");

    // Several requests on one kept-alive connection, each decided on its own.
    let both = raw_http(
        w.ns(CLIENT),
        w.addr(SERVER, 8080),
        b"GET /public HTTP/1.1\r\nHost: s\r\n\r\nGET /admin HTTP/1.1\r\nHost: s\r\nConnection: close\r\n\r\n".to_vec(),
    );
    let statuses: Vec<&str> = both
        .lines()
        .filter(|l| l.starts_with("HTTP/1.1 "))
        .collect();
    assert_eq!(
        statuses,
        ["HTTP/1.1 200 OK", "HTTP/1.1 403 Forbidden"],
        "{both}"
    );

    // An egress HTTP rule is enforced by the client's own proxy, per request, and
    // the allowed ones still cross the mesh by mTLS (7070 is L4 at the server).
    for version in ["--http1.1", "--http2-prior-knowledge"] {
        let (code, body) = curl(&w, &[version, "http://10.211.0.3:7070/ok/x"]);
        assert_eq!(code, 200, "{body}");
        assert!(body.starts_with("GET /ok/x"), "{body}");
        let (code, _) = curl(&w, &[version, "http://10.211.0.3:7070/nope"]);
        assert_eq!(code, 403);
    }
    let rec = w.flow(CLIENT, |r| r["http"]["path"] == "/nope");
    assert_eq!(
        (rec["action"].as_str(), rec["reporter"].as_str()),
        (Some("deny"), Some("source"))
    );
    assert_eq!(rec["policies"]["egress"], "cnp/shop/client-egress-http:1");
    let rec = w.flow(CLIENT, |r| r["http"]["path"] == "/ok/x");
    assert_eq!(rec["policies"]["egress"], "cnp/shop/client-egress-http:0");
    assert_eq!(rec["tls_peer"], "spiffe://cluster.local/ns/shop/sa/server");
    let rec = w.flow(SERVER, |r| r["destination"]["port"] == 7070);
    assert_eq!(rec["tls_peer"], "spiffe://cluster.local/ns/shop/sa/client");
    assert!(rec["http"].is_null(), "L4 at the server: {rec}");

    // A port with no HTTP rule stays L4: raw bytes pass, no request records.
    let (code, _) = curl(&w, &["http://10.211.0.3:9090/admin"]);
    assert_eq!(code, 200);
}

#[test]
fn path_bypass_attempts_never_pass_a_prefix_deny_or_an_exact_allow() {
    let w = mesh();
    // Port 8081: everything is allowed but the prefix /admin, so a spelling that
    // slipped past the deny would come back 200. Port 8080: only GET/POST on exactly
    // /public and the prefix /api/ are allowed; the rest ends in the tier's deny.
    let cases: &[(u16, &str, u16)] = &[
        (8081, "/admin", 403),
        (8081, "/admin/", 403),
        (8081, "/adminx", 403), // a plain string prefix, as released Calico matches
        (8081, "//admin", 403),
        (8081, "///admin", 403),
        (8081, "/./admin", 403),
        (8081, "/x/../admin", 403),
        (8081, "/x/y/../../admin", 403),
        (8081, "/../../admin", 403),
        (8081, "/%61dmin", 403),
        (8081, "/a%64min", 403),
        (8081, "/%61%64%6d%69%6e", 403),
        (8081, "/%2e/admin", 403),
        (8081, "/%2E%2E/admin", 403),
        (8081, "/x/%2e%2e/admin", 403),
        (8081, "/x/.%2e/admin", 403),
        (8081, "/x/%2e./admin", 403),
        (8081, "/x%2f..%2fadmin", 400),
        (8081, "/x/..%2fadmin", 400),
        (8081, "/x/..%5cadmin", 400),
        (8081, "/x/..\\admin", 400),
        (8081, "/admin%00", 400),
        (8081, "/%00/admin", 400),
        (8081, "/adm%", 400),
        (8081, "/adm%zzin", 400),
        (8081, "/admin%ff", 400),
        (8081, "/admin#/public", 403),
        (8081, "/admin?/public", 403),
        (8081, "/admin;x=/public", 403),
        (8081, "http://server/admin", 403),
        (8081, "http://server/x/../admin", 403),
        (8081, "HTTP://server//admin", 403),
        (8081, "/Admin", 200), // paths are case-sensitive (Calico HTTPMatch)
        (8081, "/%41dmin", 200),
        (8081, "/public/../x", 200),
        (8081, "/x/admin", 200),
        (8080, "/public", 200),
        (8080, "//public", 200),
        (8080, "/./public", 200),
        (8080, "/x/../public", 200),
        (8080, "/%70ublic", 200),
        (8080, "/public?x=/admin", 200),
        (8080, "http://server/public", 200),
        (8080, "/public/", 403),
        (8080, "/public/.", 403),
        (8080, "/public/x/..", 403),
        (8080, "/Public", 403),
        (8080, "/public%2f", 400),
        (8080, "/api/v1", 200),
        (8080, "/api//v1", 200),
        (8080, "/api", 403),
        (8080, "/api/./v1/../v2", 200),
        (8080, "/api/../admin", 403),
    ];
    assert!(cases.len() >= 40);
    let mut wrong = Vec::new();
    for (port, target, want) in cases {
        let back = raw_http(w.ns(CLIENT), w.addr(SERVER, *port), get(target));
        let got = status(&back);
        if got != *want {
            wrong.push(format!("{port} {target}: want {want}, got {got}: {back:?}"));
        }
        if got == 200 {
            // The app received the canonical path, nothing else.
            let line = back.lines().last().unwrap_or_default();
            let path = line.split(' ').nth(1).unwrap_or_default();
            let canonical = palisade_policy::http::parse_target(target).unwrap();
            assert_eq!(path, canonical.path_and_query(), "{target}");
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn smuggling_and_non_http_bytes_are_refused() {
    let w = mesh();
    let addr = w.addr(SERVER, 8080);
    for (name, request) in [
        (
            "Content-Length with Transfer-Encoding",
            "POST /public HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: s\r\n\r\n",
        ),
        (
            "two different Content-Lengths",
            "POST /public HTTP/1.1\r\nHost: s\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nabcd",
        ),
        (
            "obs-fold in Content-Length",
            "POST /public HTTP/1.1\r\nHost: s\r\nContent-Length:\r\n 4\r\n\r\nabcd",
        ),
        (
            "obs-fold in Transfer-Encoding",
            "POST /public HTTP/1.1\r\nHost: s\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "invalid chunk size",
            "POST /public HTTP/1.1\r\nHost: s\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabcd\r\n0\r\n\r\n",
        ),
    ] {
        let back = raw_http(w.ns(CLIENT), addr, request.as_bytes().to_vec());
        let statuses: Vec<u16> = back
            .lines()
            .filter(|l| l.starts_with("HTTP/1.1 "))
            .map(status)
            .collect();
        // Never a second request on the connection, never the smuggled one.
        assert!(statuses.len() <= 1, "{name}: {back:?}");
        assert!(!back.contains("GET /admin"), "{name}: smuggled request reached the app: {back:?}");
        if name == "Content-Length with Transfer-Encoding" {
            // hyper follows RFC 9112 section 6.3: Transfer-Encoding wins, the
            // Content-Length is dropped, and the connection closes after the response.
            assert!(back.contains("connection: close"), "{back:?}");
        } else {
            assert_eq!(statuses, [400], "{name}: {back:?}");
        }
    }

    // CONNECT is refused.
    let back = raw_http(
        w.ns(CLIENT),
        addr,
        b"CONNECT server:443 HTTP/1.1\r\nHost: server:443\r\n\r\n".to_vec(),
    );
    assert_eq!(status(&back), 405, "{back:?}");

    // Not HTTP on an HTTP port: denied and logged, never relayed as TCP.
    let back = raw_http(
        w.ns(CLIENT),
        addr,
        b"\x00\x01garbage that is not http\r\n\r\n".to_vec(),
    );
    assert!(!back.contains("HTTP/1.1 200"), "{back:?}");
    let rec = w.flow(SERVER, |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.starts_with("not HTTP"))
    });
    assert_eq!(rec["action"], "deny");

    // Silence: no request before the detection timeout (1 s here).
    let back = raw_http(w.ns(CLIENT), addr, Vec::new());
    assert!(back.is_empty() || status(&back) != 200, "{back:?}");
    let rec = w.flow(SERVER, |r| {
        r["reason"]
            .as_str()
            .is_some_and(|s| s.contains("detection timeout"))
    });
    assert_eq!(rec["action"], "deny");
}

/// A process killed when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_grpc_client_is_allowed_or_gets_permission_denied() {
    use std::io::BufRead;
    let w = mesh();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc_peer.py");
    let mut server = Killed(
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                w.ns(SERVER),
                "python3",
                script,
                "serve",
                "10.211.0.3:8083",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 with grpcio (pip install grpcio)"),
    );
    let mut ready = String::new();
    let stdout = server.0.stdout.take().unwrap();
    std::io::BufReader::new(stdout)
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready", "the gRPC server did not start");
    let call = |method: &str| {
        sh_output(&[
            "ip",
            "netns",
            "exec",
            w.ns(CLIENT),
            "python3",
            script,
            "call",
            "10.211.0.3:8083",
            method,
        ])
        .trim()
        .to_owned()
    };
    assert_eq!(call("/shop.Orders/Get"), "OK pong:ping");
    assert_eq!(
        call("/shop.Admin/DropTables"),
        "ERR PERMISSION_DENIED permission denied"
    );
    let rec = w.flow(SERVER, |r| r["http"]["path"] == "/shop.Admin/DropTables");
    assert_eq!(rec["action"], "deny");
    assert_eq!(rec["policies"]["ingress"], "end-of-tier/default");
    let rec = w.flow(SERVER, |r| r["http"]["path"] == "/shop.Orders/Get");
    assert_eq!(rec["policies"]["ingress"], "cnp/shop/server-api:3");
    drop(server);
}

#[test]
fn websocket_upgrades_only_when_allowed_and_accepted_by_the_app() {
    use std::io::{Read, Write};
    let w = mesh();
    let addr = w.addr(SERVER, 8081);
    let upgrade = |path: &'static str| {
        support::in_netns(w.ns(CLIENT), move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(std::time::Duration::from_secs(3)))
                .unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: s\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                 Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
            )
            .unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let head = String::from_utf8_lossy(&head).into_owned();
            if !head.starts_with("HTTP/1.1 101") {
                return (head, Vec::new());
            }
            s.write_all(b"frames both ways").unwrap();
            let mut echo = vec![0u8; 16];
            s.read_exact(&mut echo).unwrap();
            (head, echo)
        })
    };
    let (head, echo) = upgrade("/chat");
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert_eq!(echo, b"frames both ways");
    let (head, echo) = upgrade("/admin/chat");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(echo.is_empty());
}

#[test]
fn oversized_requests_are_refused_and_counted() {
    let w = mesh();
    let addr = w.addr(SERVER, 8081);
    let big = format!(
        "GET /x HTTP/1.1\r\nHost: s\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let back = raw_http(w.ns(CLIENT), addr, big.into_bytes());
    assert_eq!(status(&back), 431, "{back:?}");
    let many: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();
    let back = raw_http(
        w.ns(CLIENT),
        addr,
        format!("GET /x HTTP/1.1\r\nHost: s\r\n{many}Connection: close\r\n\r\n").into_bytes(),
    );
    assert_eq!(status(&back), 431, "{back:?}");
    // Still serving.
    assert_eq!(status(&raw_http(w.ns(CLIENT), addr, get("/x"))), 200);
    let metrics = support::admin_get(w.ns(SERVER), "/metrics").unwrap_or_default();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("palisade_proxy_http_errors_total{kind=\"header_too_large\"}"))
        .unwrap_or_else(|| panic!("no header_too_large count in\n{metrics}"));
    assert!(line.ends_with(" 2"), "{line}");
}
