//! The webhook's HTTPS endpoint: `POST /inject` on its own port (15017, as
//! istiod's), TLS with a serving certificate the caller keeps current through
//! the `ArcSwap` (re-issued by `palisade serve` before it expires).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use super::{review, InjectConfig, Outcome};

/// Larger than any pod the API server accepts (its request limit is 3 MiB).
const MAX_BODY: usize = 4 << 20;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

pub type NamespaceLabels = Arc<dyn Fn(&str) -> Option<BTreeMap<String, String>> + Send + Sync>;

/// Serves until the listener fails; each connection in its own task.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<ArcSwap<rustls::ServerConfig>>,
    config: Arc<InjectConfig>,
    namespace_labels: NamespaceLabels,
) -> std::io::Result<()> {
    loop {
        let (tcp, peer) = listener.accept().await?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.load_full());
        let (config, labels) = (config.clone(), namespace_labels.clone());
        tokio::spawn(async move {
            let stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(e)) => return eprintln!("webhook: TLS from {peer}: {e}"),
                Err(_) => return eprintln!("webhook: TLS from {peer}: timed out"),
            };
            let service = hyper::service::service_fn(move |request| {
                let (config, labels) = (config.clone(), labels.clone());
                async move { Ok::<_, std::convert::Infallible>(handle(request, &config, &labels).await) }
            });
            let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            if let Err(e) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                eprintln!("webhook: connection from {peer}: {e}");
            }
        });
    }
}

async fn handle(
    request: Request<Incoming>,
    config: &InjectConfig,
    labels: &NamespaceLabels,
) -> Response<Full<Bytes>> {
    if request.method() != Method::POST || request.uri().path() != "/inject" {
        return plain(StatusCode::NOT_FOUND, "POST /inject only\n");
    }
    let body = match Limited::new(request.into_body(), MAX_BODY).collect().await {
        Ok(body) => body.to_bytes(),
        Err(e) => {
            return plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body: {e}\n"),
            )
        }
    };
    let reviewed = review(&body, config, |ns| labels(ns));
    match &reviewed.outcome {
        Outcome::Injected(pod) => eprintln!("webhook: injected {pod}"),
        Outcome::Refused(why) => eprintln!("webhook: refused: {why}"),
        Outcome::DryRun(_) | Outcome::Skipped(_) | Outcome::NotApplicable => {}
    }
    match super::to_json(&reviewed.review) {
        Ok(json) => Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(json)))
            .unwrap_or_else(|_| plain(StatusCode::INTERNAL_SERVER_ERROR, "response\n")),
        Err(e) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("encoding the review: {e}\n"),
        ),
    }
}

fn plain(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(text.to_owned())));
    *response.status_mut() = status;
    response
}
