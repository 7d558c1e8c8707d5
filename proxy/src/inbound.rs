//! Inbound: a peer connected to this pod; iptables sent it here.
//!
//! original destination (this pod's IP and the app's port) -> mesh mTLS or plaintext
//! -> who is the peer: its certificate's identity must be that of the pod owning the
//! source IP -> ingress verdict of this pod -> connect to the app on the pod's own IP
//! and the original port (never 127.0.0.1: an app bound to localhost only stays
//! private) -> relay bytes both ways.

use std::net::SocketAddr;
use std::sync::Arc;

use palisade_policy::{Direction, Endpoint, Flow, Protocol};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use crate::conn::{close, connect, reset, Connection};
use crate::flow::Reporter;
use crate::orig_dst::original_destination;
use crate::{Mode, Proxy};

/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

pub async fn handle(proxy: &Arc<Proxy>, peer: TcpStream, peer_addr: SocketAddr) {
    let destination = match original_destination(&peer) {
        Ok(d) if d.port() != proxy.inbound_port && d.port() != proxy.outbound_port => d,
        Ok(d) => {
            tracing::warn!(%d, "direct connection to a proxy port refused");
            return reset(peer).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "inbound connection without an original destination");
            return reset(peer).await;
        }
    };
    let mut conn = Connection::new("inbound", Reporter::Destination, peer_addr, destination);
    // Registered before the state is loaded: see registry.
    let mut registration = proxy
        .open
        .register(Direction::Ingress, peer_addr, destination);
    let Some(snapshot) = proxy.state.load_full() else {
        proxy.deny(&conn, Some("no policy or identity loaded yet".into()));
        return reset(peer).await;
    };
    conn.describe(&snapshot);

    // mTLS or plaintext? Wait for the first byte, but not forever (a half-open peer).
    let mut first = [0u8; 1];
    let is_tls = match tokio::time::timeout(proxy.handshake_timeout, peer.peek(&mut first)).await {
        Ok(Ok(1)) => first[0] == TLS_HANDSHAKE,
        Ok(_) => return reset(peer).await, // closed before sending anything
        Err(_) => {
            proxy.deny(&conn, Some("no data before the handshake timeout".into()));
            return reset(peer).await;
        }
    };
    let source = snapshot.policy.endpoint(peer_addr.ip());
    let me = Endpoint {
        ip: destination.ip(),
        workload: Some(snapshot.workload),
    };
    let flow = Flow {
        source,
        destination: me,
        protocol: Protocol::TCP,
        port: Some(destination.port()),
        icmp: None,
        http: None,
    };

    if !is_tls {
        if proxy.mode == Mode::Strict {
            proxy.deny(&conn, Some("plaintext refused (strict mTLS)".into()));
            return reset(peer).await;
        }
        // Permissive: the peer is only what its IP says.
        if snapshot.policy.depends_on_http(&flow, Direction::Ingress) {
            return serve_http(proxy, conn, flow, peer, destination).await;
        }
        let verdict = snapshot.policy.evaluate(&flow);
        conn.decided(&snapshot.policy, &verdict, Direction::Ingress);
        if !verdict.ingress.as_ref().is_none_or(|v| v.decision.allows()) {
            proxy.deny(&conn, None);
            return reset(peer).await;
        }
        return forward_to_app(proxy, conn, peer, destination, &mut registration).await;
    }

    let t0 = std::time::Instant::now();
    let accept = TlsAcceptor::from(snapshot.server_tls.clone()).accept(peer);
    let tls = match tokio::time::timeout(proxy.handshake_timeout, accept).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            proxy.handshake_failed("inbound");
            return proxy.deny(&conn, Some(format!("mTLS handshake failed: {e}")));
        }
        Err(_) => {
            proxy.handshake_failed("inbound");
            return proxy.deny(&conn, Some("mTLS handshake timed out".into()));
        }
    };
    tracing::debug!(
        handshake_us = t0.elapsed().as_micros() as u64,
        "mTLS accepted"
    );
    let (_, session) = tls.get_ref();
    if session.alpn_protocol() != Some(palisade_certs::tls::ALPN) {
        proxy.deny(&conn, Some("peer did not speak palisade/1".into()));
        return close(tls).await;
    }
    let identity = match palisade_certs::tls::peer_identity(
        session.peer_certificates(),
        &snapshot.trust_domain,
    ) {
        Ok(id) => id,
        Err(e) => {
            proxy.deny(&conn, Some(format!("peer identity: {e}")));
            return close(tls).await;
        }
    };
    conn.tls_peer = Some(identity.to_string());
    registration.set_peer(&identity.to_string());
    // The certificate must belong to the pod that owns the source address; only then
    // are the labels that pod carries trusted for the verdict.
    if let Err(why) = snapshot.check_owner(&identity.to_string(), &source) {
        proxy.deny(&conn, Some(why));
        return close(tls).await;
    }
    if snapshot.policy.depends_on_http(&flow, Direction::Ingress) {
        return serve_http(proxy, conn, flow, tls, destination).await;
    }
    let verdict = snapshot.policy.evaluate(&flow);
    conn.decided(&snapshot.policy, &verdict, Direction::Ingress);
    if !verdict.ingress.as_ref().is_none_or(|v| v.decision.allows()) {
        proxy.deny(&conn, None);
        return close(tls).await;
    }
    forward_to_app(proxy, conn, tls, destination, &mut registration).await;
}

/// A port whose verdict depends on an HTTP rule: every request is decided on its own.
async fn serve_http<S>(
    proxy: &Arc<Proxy>,
    conn: Connection,
    flow: Flow<'static>,
    peer: S,
    destination: SocketAddr,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let dial = crate::http::upstream::Dial::Plain(destination);
    let session = crate::http::Session::new(proxy.clone(), Direction::Ingress, flow, conn, dial);
    crate::http::serve(session, peer).await;
}

async fn forward_to_app<S>(
    proxy: &Proxy,
    conn: crate::conn::Connection,
    peer: S,
    destination: SocketAddr,
    registration: &mut crate::registry::Registration<'_>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let t0 = std::time::Instant::now();
    match connect(destination, proxy.connect_timeout).await {
        Ok(app) => {
            tracing::debug!(
                app_connect_us = t0.elapsed().as_micros() as u64,
                "app connected"
            );
            proxy
                .relay(conn, peer, app, Some(&mut registration.closed))
                .await
        }
        Err(e) => {
            proxy.deny(
                &conn,
                Some(format!("app not reachable at {destination}: {e}")),
            );
            close(peer).await;
        }
    }
}
