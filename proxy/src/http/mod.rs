//! L7: a connection whose verdict depends on an HTTP rule
//! ([`CompiledCluster::depends_on_http`](palisade_policy::CompiledCluster::depends_on_http))
//! is served as HTTP/1.1 or HTTP/2 (hyper) and every request is decided on its own
//! ([`request`]): ingress rules at the destination's proxy, egress rules at the
//! source's. Allowed requests go on over one upstream connection per downstream
//! connection ([`upstream`]): to the app (inbound), or to the destination, by mTLS
//! when it is a mesh pod (outbound). Every other connection stays plain L4 and
//! never pays for parsing.
//!
//! Bytes that are not HTTP, or no request before the detection timeout, are denied
//! and logged: such a connection is never relayed as TCP.

pub mod linger;
pub mod request;
pub mod upstream;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use palisade_policy::{Direction, Flow};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::conn::Connection;
use crate::flow::Action;
use crate::forward::Counted;
use crate::metrics::HttpErrorLabels;
use crate::state::Snapshot;
use crate::Proxy;

/// HTTP limits. Each overload is counted in /metrics
/// (`palisade_proxy_http_errors{kind}`) and logged.
#[derive(Clone, Debug)]
pub struct HttpLimits {
    /// No complete request head within this time of the connection: denied.
    pub detect_timeout: Duration,
    /// Request head read timeout (also bounds an idle keep-alive connection).
    pub header_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub h2_max_concurrent_streams: u32,
    /// Streams a client may reset before it is treated as a reset flood.
    pub h2_max_pending_resets: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            detect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 64 * 1024,
            max_headers: 100,
            h2_max_concurrent_streams: 100,
            h2_max_pending_resets: 20,
        }
    }
}

/// What every request of one L7 connection shares.
#[derive(Debug)]
pub struct Session {
    pub proxy: Arc<Proxy>,
    /// Ingress at this pod (inbound) or egress from it (outbound).
    pub direction: Direction,
    /// The connection's flow; each request adds its own `http`.
    pub flow: Flow<'static>,
    pub conn: Connection,
    /// Where allowed requests go: the app (inbound), or the destination (outbound).
    pub dial: upstream::Dial,
    pub upstream: upstream::Upstream,
    pub requests: AtomicU64,
    /// Request ids are `<id_prefix>-<n>`, n counting this connection's requests.
    pub id_prefix: String,
    pub first_request: tokio::sync::Notify,
}

impl Session {
    pub fn new(
        proxy: Arc<Proxy>,
        direction: Direction,
        flow: Flow<'static>,
        conn: Connection,
        dial: upstream::Dial,
    ) -> Session {
        // Unique enough to find the record: connection start (ms) and client port.
        let id_prefix = format!("{:x}{:04x}", (conn.start * 1e3) as u64, conn.source.port);
        Session {
            proxy,
            direction,
            flow,
            conn,
            dial,
            upstream: upstream::Upstream::default(),
            requests: AtomicU64::new(0),
            id_prefix,
            first_request: tokio::sync::Notify::new(),
        }
    }
}

impl Session {
    /// The connection's flow with its ends resolved under `snapshot`; for inbound
    /// mTLS, the peer's identity must still own its source address.
    pub fn flow_under(&self, snapshot: &Snapshot) -> Result<Flow<'static>, String> {
        let me = palisade_policy::Endpoint {
            workload: Some(snapshot.workload),
            ..match self.direction {
                Direction::Ingress => self.flow.destination,
                Direction::Egress => self.flow.source,
            }
        };
        let (source, destination) = match self.direction {
            Direction::Ingress => (snapshot.policy.endpoint(self.flow.source.ip), me),
            Direction::Egress => (me, snapshot.policy.endpoint(self.flow.destination.ip)),
        };
        if let (Direction::Ingress, Some(peer)) = (self.direction, &self.conn.tls_peer) {
            snapshot.check_owner(peer, &source)?;
        }
        Ok(Flow {
            source,
            destination,
            ..self.flow
        })
    }
}

/// Serves one connection as HTTP until it ends, then writes its record.
pub async fn serve<S>(session: Session, downstream: S)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = Arc::new(session);
    let limits = session.proxy.http.clone();
    let downstream = linger::Lingering::new(downstream);
    let io = TokioIo::new(Counted::new(downstream, session.conn.counters.clone()));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_buf_size(limits.max_header_bytes.max(8192))
        .max_headers(limits.max_headers);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .max_pending_accept_reset_streams(limits.h2_max_pending_resets)
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX));
    let s = session.clone();
    let service = hyper::service::service_fn(move |req| request::handle(s.clone(), req));
    let connection = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(connection);

    let detected = tokio::time::timeout(limits.detect_timeout, session.first_request.notified());
    let result = tokio::select! {
        r = &mut connection => Some(r),
        d = detected => match d {
            Ok(()) => None,
            Err(_) => {
                deny_connection(&session, "no HTTP request before the detection timeout");
                return;
            }
        },
    };
    let result = match result {
        Some(r) => r,
        None => connection.await,
    };
    let requests = session.requests.load(Ordering::Relaxed);
    if let Err(e) = result {
        let kind = error_kind(e.as_ref());
        session
            .proxy
            .metrics
            .http_errors
            .get_or_create(&HttpErrorLabels { kind: kind.into() })
            .inc();
        tracing::info!(error = %e, kind, requests, "HTTP connection ended with an error");
        if requests == 0 {
            return deny_connection(&session, &format!("not HTTP: {e}"));
        }
    }
    let mut record = session.conn.record("end", Action::Allow, None, None);
    record.http_requests = Some(requests);
    session.proxy.write(record);
}

fn deny_connection(session: &Session, reason: &str) {
    session
        .proxy
        .metrics
        .http_errors
        .get_or_create(&HttpErrorLabels {
            kind: "not_http".into(),
        })
        .inc();
    session.proxy.deny(&session.conn, Some(reason.to_owned()));
}

/// A short name for why hyper gave up on a connection, for the metric label.
fn error_kind(e: &(dyn std::error::Error + 'static)) -> &'static str {
    if let Some(h) = e.downcast_ref::<hyper::Error>() {
        if h.is_timeout() {
            return "header_timeout";
        }
        if h.is_parse_too_large() {
            return "header_too_large";
        }
        if h.is_parse() {
            return "malformed";
        }
        if h.is_incomplete_message() {
            return "incomplete";
        }
    }
    if e.to_string().contains("too_many_resets") || e.to_string().contains("reset") {
        return "h2_reset";
    }
    "other"
}
