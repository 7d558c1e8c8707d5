//! A Kubernetes API server made of recorded responses, behind a real
//! `kube::Client` (tower-test's mock service). Routes are `METHOD path`, with
//! ` watch` appended for watch requests; each route answers from its queue of
//! replies in turn. A list route repeats its last reply (relists see the same
//! state unless the test queued another); a watch route whose queue is empty
//! holds the request open, as a quiet watch does.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use http::{Request, Response};
use http_body_util::BodyExt;
use kube::client::Body;

#[derive(Clone, Debug)]
pub struct Reply {
    pub status: u16,
    pub body: String,
}

impl Reply {
    pub fn ok(body: impl Into<String>) -> Reply {
        Reply {
            status: 200,
            body: body.into(),
        }
    }

    pub fn fixture(name: &str) -> Reply {
        Reply::ok(fixture(name))
    }
}

/// A file of `control-plane/testdata/k8s/`.
pub fn fixture(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata/k8s")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[derive(Debug, Default)]
pub struct FakeApi {
    routes: BTreeMap<String, VecDeque<Reply>>,
}

/// What the fake server saw: `METHOD path?query` and the request body.
pub type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// Where each Kubernetes kind is listed and watched, and its fixtures' name.
pub const KUBERNETES_PATHS: [(&str, &str); 6] = [
    ("/api/v1/namespaces", "namespaces"),
    ("/api/v1/serviceaccounts", "serviceaccounts"),
    ("/api/v1/pods", "pods"),
    ("/api/v1/services", "services"),
    ("/apis/discovery.k8s.io/v1/endpointslices", "endpointslices"),
    (
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networkpolicies",
    ),
];

impl FakeApi {
    /// The recorded list of every Kubernetes kind (`NAME.list.json`).
    pub fn kubernetes_lists(mut self) -> FakeApi {
        for (path, name) in KUBERNETES_PATHS {
            self = self.route(
                &format!("GET {path}"),
                Reply::fixture(&format!("{name}.list.json")),
            );
        }
        self
    }

    /// A cluster with Calico's CRDs only: their discovery document, and the
    /// recorded list (and, with `watch`, the watch) of each Calico kind.
    pub fn calico_crds(mut self, watch: bool) -> FakeApi {
        let crd = "/apis/crd.projectcalico.org/v1";
        self = self.route(
            &format!("GET {crd}"),
            Reply::fixture("discovery.crd.projectcalico.org-v1.json"),
        );
        for plural in ["tiers", "globalnetworkpolicies", "networkpolicies"] {
            let fixture = format!("calico-crd.{plural}");
            self = self.route(
                &format!("GET {crd}/{plural}"),
                Reply::fixture(&format!("{fixture}.list.json")),
            );
            if watch {
                self = self.route(
                    &format!("GET {crd}/{plural} watch"),
                    Reply::fixture(&format!("{fixture}.watch.jsonl")),
                );
            }
        }
        self
    }

    pub fn route(mut self, route: &str, reply: Reply) -> FakeApi {
        self.routes
            .entry(route.to_owned())
            .or_default()
            .push_back(reply);
        self
    }

    /// A client talking to this server, and the log of its requests.
    pub fn start(self) -> (kube::Client, Seen) {
        let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let seen: Seen = Arc::default();
        let log = seen.clone();
        let mut routes = self.routes;
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some((request, respond)) = handle.next_request().await {
                let (parts, body) = request.into_parts();
                let body = body
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let query = parts.uri.query().unwrap_or_default();
                let watch = query.split('&').any(|kv| kv == "watch=true");
                let route = format!(
                    "{} {}{}",
                    parts.method,
                    parts.uri.path(),
                    if watch { " watch" } else { "" }
                );
                log.lock().unwrap().push((
                    format!("{} {}?{query}", parts.method, parts.uri.path()),
                    String::from_utf8_lossy(&body).into_owned(),
                ));
                let queue = routes.entry(route).or_default();
                let reply = match (queue.len(), watch) {
                    (0, true) => {
                        held.push(respond);
                        continue;
                    }
                    (0, false) => Reply {
                        status: 404,
                        body: not_found(parts.uri.path()),
                    },
                    (1, false) => queue.front().cloned().unwrap(),
                    _ => queue.pop_front().unwrap(),
                };
                let response = Response::builder()
                    .status(reply.status)
                    .header("content-type", "application/json")
                    .body(Body::from(reply.body.into_bytes()))
                    .unwrap();
                respond.send_response(response);
            }
        });
        (kube::Client::new(service, "default"), seen)
    }
}

fn not_found(path: &str) -> String {
    serde_json::json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": format!("the server could not find the requested resource ({path})"),
        "reason": "NotFound", "details": {}, "code": 404
    })
    .to_string()
}
