//! The control plane's TLS listener: TCP accept, then the TLS handshake in its own
//! task (a slow client cannot hold up the others), then the connection goes to
//! tonic with the peer's verified SPIFFE ID attached, which every call can read
//! from its request extensions as a [`Peer`].

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use palisade_certs::tls::peer_identity;
use palisade_certs::SpiffeId;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tonic::transport::server::Connected;

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a control-plane connection.
#[derive(Clone, Debug)]
pub struct Peer {
    pub addr: SocketAddr,
    /// `None`: no client certificate (a proxy that comes for its first identity).
    pub identity: Option<SpiffeId>,
}

#[derive(Debug)]
pub struct PeerConnection {
    tls: TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for PeerConnection {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

/// Accepted, handshaken connections, for `serve_with_incoming`.
pub fn incoming(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    trust_domain: String,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<PeerConnection>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let acceptor = TlsAcceptor::from(tls);
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(e) => {
                    eprintln!("warning: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx, trust_domain) = (acceptor.clone(), tx.clone(), trust_domain.clone());
            tokio::spawn(async move {
                let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await;
                let tls = match handshake {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => return eprintln!("control-plane TLS from {addr}: {e}"),
                    Err(_) => {
                        return eprintln!("control-plane TLS from {addr}: handshake timed out")
                    }
                };
                let certs = tls.get_ref().1.peer_certificates();
                // The verifier already checked any certificate presented; none is fine
                // here and each call decides whether it needs one.
                let identity = certs.and_then(|c| peer_identity(Some(c), &trust_domain).ok());
                let _ = tx
                    .send(Ok(PeerConnection {
                        tls,
                        peer: Peer { addr, identity },
                    }))
                    .await;
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

impl AsyncRead for PeerConnection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_read(cx, buf)
    }
}

impl AsyncWrite for PeerConnection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tls).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tls).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tls.is_write_vectored()
    }
}
