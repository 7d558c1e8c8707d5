//! The admin port (127.0.0.1 by default): /live, /ready, /metrics, /config.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use palisade_policy::Direction;
use tokio::net::TcpListener;

use crate::Proxy;

pub async fn serve(proxy: Arc<Proxy>, listener: TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let proxy = proxy.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| respond(proxy.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn respond(
    proxy: Arc<Proxy>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = content_type.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    Ok(match req.uri().path() {
        "/live" => reply(StatusCode::OK, "text/plain", "live\n".into()),
        // Ready once a policy and an identity are loaded; until then it denies all.
        "/ready" => match proxy.state.load().as_ref() {
            Some(s) => reply(
                StatusCode::OK,
                "text/plain",
                format!("ready, state version {}\n", s.version),
            ),
            None => reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "no policy or identity loaded: denying all\n".into(),
            ),
        },
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            proxy.metrics.encode(),
        ),
        "/config" => reply(StatusCode::OK, "application/json", config_json(&proxy)),
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "try /live /ready /metrics /config\n".into(),
        ),
    })
}

/// What this proxy enforces now.
fn config_json(proxy: &Proxy) -> String {
    let Some(s) = proxy.state.load_full() else {
        return serde_json::json!({"loaded": false, "enforcing": "deny all (nothing loaded)"})
            .to_string();
    };
    let policies = |d: Direction| -> Vec<serde_json::Value> {
        let Some(w) = s.policy.workload(s.workload) else {
            return Vec::new();
        };
        w.policy
            .get(d)
            .iter()
            .map(|t| {
                let names: Vec<String> = t
                    .policies
                    .iter()
                    .filter_map(|p| s.policy.policy(*p))
                    .map(|p| p.policy.id.to_string())
                    .collect();
                let tier = s
                    .policy
                    .tier(t.tier)
                    .map(|t| t.name.clone())
                    .unwrap_or_default();
                serde_json::json!({"tier": tier, "policies": names})
            })
            .collect()
    };
    let creds = s.identity.current();
    serde_json::json!({
        "loaded": true,
        "version": s.version,
        "pod": s.pod.to_string(),
        "identity": creds.identity.to_string(),
        "mode": format!("{:?}", proxy.mode).to_lowercase(),
        "ingress": policies(Direction::Ingress),
        "egress": policies(Direction::Egress),
        "endpoints": s.policy.workloads().count(),
        "skipped_objects": s.skipped,
    })
    .to_string()
}

pub fn bind_error(addr: SocketAddr, e: std::io::Error) -> anyhow::Error {
    anyhow::anyhow!("admin port {addr}: {e}")
}
