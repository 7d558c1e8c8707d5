//! Outbound: the app connected somewhere; iptables sent it here.
//!
//! original destination -> who is it (endpoint table) -> egress verdict of this pod
//! -> a mesh pod: mTLS to it, expecting its SPIFFE ID; anything else: plain TCP
//! -> relay bytes both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use palisade_policy::{Direction, Endpoint, Flow, Protocol};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::conn::{connect, reset, Connection};
use crate::flow::Reporter;
use crate::orig_dst::original_destination;
use crate::Proxy;

pub async fn handle(proxy: &Arc<Proxy>, app: TcpStream, app_addr: SocketAddr) {
    let destination = match original_destination(&app) {
        Ok(d) => d,
        Err(e) => {
            tracing::warn!(error = %e, "outbound connection without an original destination");
            return reset(app).await;
        }
    };
    let mut conn = Connection::new("outbound", Reporter::Source, app_addr, destination);
    // Registered before the state is loaded: see registry.
    let mut registration = proxy
        .open
        .register(Direction::Egress, app_addr, destination);
    // Fail closed: no snapshot means no policy or no identity yet.
    let Some(snapshot) = proxy.state.load_full() else {
        proxy.deny(&conn, Some("no policy or identity loaded yet".into()));
        return reset(app).await;
    };
    // A Service's clusterIP: one ready pod at its target port, and policy decides
    // on that pod and port (post-DNAT, as Calico sees it).
    let destination = match snapshot.pick_backend(destination) {
        None => destination,
        Some(Ok((service, backend))) => {
            conn.destination = crate::flow::FlowEndpoint::address(backend.addr);
            conn.service = Some(service);
            registration.set_destination(backend.addr);
            backend.addr
        }
        Some(Err(service)) => {
            conn.service = Some(service.clone());
            proxy.deny(
                &conn,
                Some(format!("service {service} has no ready endpoint")),
            );
            return reset(app).await;
        }
    };
    conn.describe(&snapshot);
    let source = Endpoint {
        ip: app_addr.ip(),
        workload: Some(snapshot.workload),
    };
    let target = snapshot.policy.endpoint(destination.ip());
    let flow = Flow {
        source,
        destination: target,
        protocol: Protocol::TCP,
        port: Some(destination.port()),
        icmp: None,
        http: None,
    };
    if snapshot.policy.depends_on_http(&flow, Direction::Egress) {
        return serve_http(proxy, snapshot, conn, flow, app, destination).await;
    }
    let verdict = snapshot.policy.evaluate(&flow);
    conn.decided(&snapshot.policy, &verdict, Direction::Egress);
    if !verdict.egress.as_ref().is_none_or(|v| v.decision.allows()) {
        proxy.deny(&conn, None);
        return reset(app).await;
    }

    let t0 = std::time::Instant::now();
    let upstream = match connect(destination, proxy.connect_timeout).await {
        Ok(s) => s,
        Err(e) => {
            proxy.deny(&conn, Some(format!("connect to {destination} failed: {e}")));
            return reset(app).await;
        }
    };
    let Some(peer) = target.workload else {
        // Not a mesh pod: plain TCP, as egress allowed.
        return proxy
            .relay(conn, app, upstream, Some(&mut registration.closed))
            .await;
    };
    // A mesh pod: mTLS, and it must prove the identity its pod runs as.
    let Some(expected) = snapshot.identity_of(peer) else {
        proxy.deny(&conn, Some("destination pod has no valid identity".into()));
        return reset(app).await;
    };
    let Some(tls) = snapshot.client_tls(&expected) else {
        proxy.deny(&conn, Some(format!("no TLS config for {expected}")));
        return reset(app).await;
    };
    let handshake = TlsConnector::from(tls).connect(palisade_certs::tls::server_name(), upstream);
    match tokio::time::timeout(proxy.handshake_timeout, handshake).await {
        Ok(Ok(stream)) => {
            tracing::debug!(connect_and_handshake_us = t0.elapsed().as_micros() as u64, peer = %expected, "mTLS up");
            conn.tls_peer = Some(expected.to_string());
            proxy
                .relay(conn, app, stream, Some(&mut registration.closed))
                .await;
        }
        Ok(Err(e)) => {
            proxy.handshake_failed("outbound");
            proxy.deny(&conn, Some(format!("mTLS to {expected} failed: {e}")));
            reset(app).await;
        }
        Err(_) => {
            proxy.handshake_failed("outbound");
            proxy.deny(&conn, Some(format!("mTLS to {expected} timed out")));
            reset(app).await;
        }
    }
}

/// An egress HTTP rule is reached: every request the app sends is decided on its
/// own, and allowed ones go to the destination (by mTLS to a mesh pod).
async fn serve_http(
    proxy: &Arc<Proxy>,
    snapshot: Arc<crate::state::Snapshot>,
    mut conn: Connection,
    flow: Flow<'static>,
    app: TcpStream,
    destination: SocketAddr,
) {
    use crate::http::upstream::Dial;
    let dial = match flow.destination.workload {
        None => Dial::Plain(destination),
        Some(peer) => {
            let tls = snapshot
                .identity_of(peer)
                .and_then(|id| Some((snapshot.client_tls(&id)?, id)));
            let Some((tls, identity)) = tls else {
                proxy.deny(&conn, Some("destination pod has no valid identity".into()));
                return reset(app).await;
            };
            conn.tls_peer = Some(identity.to_string());
            Dial::Mesh {
                addr: destination,
                tls,
                identity,
            }
        }
    };
    let session = crate::http::Session::new(proxy.clone(), Direction::Egress, flow, conn, dial);
    crate::http::serve(session, app).await;
}
