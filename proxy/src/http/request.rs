//! One HTTP request: canonical target -> the full tiered evaluation with the
//! request -> 403 (or gRPC PERMISSION_DENIED) or the app, with identity headers
//! replaced and the canonical path forwarded. One flow record per request.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode, Uri};
use palisade_policy::http::parse_target;
use palisade_policy::{Direction, Flow, HttpRequest};

use super::Session;
use crate::flow::{Action, FlowHttp};
use crate::metrics::ConnectionLabels;

pub type Body = Either<Incoming, Full<Bytes>>;

/// The verified peer identity, set by the proxy on every forwarded request.
pub const PEER_IDENTITY: &str = "x-palisade-peer-identity";
/// The id of a request, in its flow record and on a denial.
pub const REQUEST_ID: &str = "x-palisade-request-id";

/// Headers a client could use to claim an identity or a path the proxy did not
/// verify: removed before the request reaches the app.
const SPOOFABLE: [&str; 5] = [
    "x-forwarded-client-cert",
    "l5d-client-id",
    "x-original-url",
    "x-rewrite-url",
    PEER_IDENTITY,
];

pub async fn handle(
    session: Arc<Session>,
    mut req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let n = session.requests.fetch_add(1, Ordering::Relaxed);
    if n == 0 {
        session.first_request.notify_one();
    }
    let request_id = format!("{}-{n}", session.id_prefix);
    let method = req.method().clone();
    let sent_target = req
        .uri()
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .to_owned();

    if method == Method::CONNECT {
        return Ok(refuse(
            &session,
            &req,
            &request_id,
            &sent_target,
            StatusCode::METHOD_NOT_ALLOWED,
            "CONNECT is not allowed",
        ));
    }
    let target = match parse_target(&sent_target) {
        Ok(t) => t,
        Err(why) => {
            let why = why.to_string();
            return Ok(refuse(
                &session,
                &req,
                &request_id,
                &sent_target,
                StatusCode::BAD_REQUEST,
                &why,
            ));
        }
    };

    // "Per request, the whole tiered evaluation runs again with the HTTP clause
    // active" (CALICO-SEMANTICS section 7).
    // Under the state in force now, not the one the connection was accepted under:
    // a policy change applies from the next request on.
    let Some(snapshot) = session.proxy.state.load_full() else {
        return Ok(refuse(
            &session,
            &req,
            &request_id,
            &sent_target,
            StatusCode::SERVICE_UNAVAILABLE,
            "no policy or identity loaded",
        ));
    };
    let base = match session.flow_under(&snapshot) {
        Ok(flow) => flow,
        Err(why) => {
            return Ok(refuse(
                &session,
                &req,
                &request_id,
                &sent_target,
                StatusCode::FORBIDDEN,
                &why,
            ))
        }
    };
    let flow = Flow {
        http: Some(HttpRequest {
            method: method.as_str(),
            path: &target.path,
        }),
        ..base
    };
    let verdict = snapshot.policy.evaluate(&flow);
    let mut conn = session.conn.clone();
    conn.decided(&snapshot.policy, &verdict, session.direction);
    let decided = match session.direction {
        Direction::Ingress => verdict.ingress.as_ref(),
        Direction::Egress => verdict.egress.as_ref(),
    };
    let allowed = decided.is_none_or(|v| v.decision.allows());
    let policy = conn.deciding_policy();
    count(&session, if allowed { "allow" } else { "deny" }, &policy);
    if !allowed {
        let response = forbidden(&req, &request_id);
        record(
            &session,
            conn,
            Action::Deny,
            None,
            &method,
            &target.path,
            &response,
            &request_id,
        );
        return Ok(response);
    }

    // Forward exactly what was authorized: the canonical path (and the query).
    let pq = target.path_and_query();
    match rewrite_uri(req.uri(), &pq) {
        Some(uri) => *req.uri_mut() = uri,
        None => {
            return Ok(refuse(
                &session,
                &req,
                &request_id,
                &sent_target,
                StatusCode::BAD_REQUEST,
                "the canonical path is not a valid URI",
            ))
        }
    }
    let headers = req.headers_mut();
    if session.direction == Direction::Ingress {
        // Only what this proxy verified reaches the app as identity.
        for name in SPOOFABLE {
            headers.remove(name);
        }
        let peer = session.conn.tls_peer.as_deref();
        if let Some(peer) = peer.and_then(|p| p.parse().ok()) {
            headers.insert(PEER_IDENTITY, peer);
        }
    }
    let websocket = is_websocket_upgrade(headers);
    if !websocket {
        strip_upgrade(headers);
    }
    let response = session.upstream.send(&session, req, websocket).await;
    let response = match response {
        Ok(r) => r.map(Either::Left),
        // The request's own body broke (an invalid chunk, a peer that stopped
        // mid-body): the client's fault, and its connection is not trusted further.
        Err(e)
            if e.downcast_ref::<hyper::Error>()
                .is_some_and(hyper::Error::is_user) =>
        {
            tracing::info!(error = %e, "malformed request body");
            let mut r = text(
                StatusCode::BAD_REQUEST,
                &request_id,
                "malformed request body\n",
            );
            r.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
            r
        }
        Err(e) => {
            tracing::info!(error = %e, upstream = ?session.dial, "upstream request failed");
            text(
                StatusCode::BAD_GATEWAY,
                &request_id,
                "upstream unavailable\n",
            )
        }
    };
    record(
        &session,
        conn,
        Action::Allow,
        None,
        &method,
        &target.path,
        &response,
        &request_id,
    );
    Ok(response)
}

/// A request refused before policy (malformed target, CONNECT): counted and logged.
fn refuse(
    session: &Session,
    req: &Request<Incoming>,
    request_id: &str,
    sent_target: &str,
    status: StatusCode,
    why: &str,
) -> Response<Body> {
    count(session, "deny", why);
    let response = text(status, request_id, &format!("{why}\n"));
    record(
        session,
        session.conn.clone(),
        Action::Deny,
        Some(why.to_owned()),
        req.method(),
        sent_target,
        &response,
        request_id,
    );
    response
}

/// 403, or for gRPC a trailers-only PERMISSION_DENIED. The body never names the
/// policy; the flow record does, under the request id.
fn forbidden(req: &Request<Incoming>, request_id: &str) -> Response<Body> {
    let grpc = req
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"));
    if grpc {
        let mut r = text(StatusCode::OK, request_id, "");
        let h = r.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        h.insert("grpc-status", HeaderValue::from_static("7"));
        h.insert(
            "grpc-message",
            HeaderValue::from_static("permission denied"),
        );
        return r;
    }
    text(StatusCode::FORBIDDEN, request_id, "access denied\n")
}

fn text(status: StatusCode, request_id: &str, body: &str) -> Response<Body> {
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body.to_owned()))));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if let Ok(id) = HeaderValue::from_str(request_id) {
        h.insert(REQUEST_ID, id);
    }
    r
}

fn count(session: &Session, verdict: &str, policy: &str) {
    session
        .proxy
        .metrics
        .http_requests
        .get_or_create(&ConnectionLabels {
            direction: session.conn.direction.into(),
            verdict: verdict.into(),
            policy: policy.into(),
        })
        .inc();
}

#[allow(clippy::too_many_arguments)]
fn record(
    session: &Session,
    conn: crate::conn::Connection,
    action: Action,
    reason: Option<String>,
    method: &Method,
    path: &str,
    response: &Response<Body>,
    request_id: &str,
) {
    let mut r = conn.record("request", action, reason, None);
    r.http = Some(FlowHttp {
        method: method.as_str().to_owned(),
        path: path.to_owned(),
        status: response.status().as_u16(),
        request_id: request_id.to_owned(),
    });
    session.proxy.write(r);
}

/// The same URI with another path and query (scheme and authority kept for HTTP/2).
fn rewrite_uri(uri: &Uri, path_and_query: &str) -> Option<Uri> {
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

fn is_websocket_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"))
}

/// Any upgrade but WebSocket (h2c above all) is removed: the proxy decided this
/// request as HTTP/1.1 and the app must not switch protocols under it.
fn strip_upgrade(headers: &mut HeaderMap) {
    if headers.remove(UPGRADE).is_none() {
        return;
    }
    headers.remove(HeaderName::from_static("http2-settings"));
    let kept: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.eq_ignore_ascii_case("upgrade") && !t.eq_ignore_ascii_case("http2-settings"))
        .map(str::to_owned)
        .collect();
    headers.remove(CONNECTION);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(CONNECTION, v);
        }
    }
}
