//! The far side of an L7 connection: one upstream connection per downstream
//! connection, in the downstream's HTTP version, opened at the first allowed request
//! and opened again if the app closed it. It is this connection's alone, so the lock
//! below is never contended: HTTP/1.1 sends one request at a time, HTTP/2 only
//! clones its sender under it.

use std::net::SocketAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response, StatusCode, Version};
use hyper_util::rt::{TokioExecutor, TokioIo};
use palisade_certs::SpiffeId;
use rustls::ClientConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Mutex;

use super::Session;
use crate::conn::connect;

/// How to reach where allowed requests go.
#[derive(Debug)]
pub enum Dial {
    /// Plain TCP: the app on this pod, or an address outside the mesh.
    Plain(SocketAddr),
    /// A mesh pod, by mTLS, which must prove `identity`.
    Mesh {
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
        identity: SpiffeId,
    },
}

#[derive(Debug, Default)]
pub struct Upstream {
    sender: Mutex<Option<Sender>>,
}

#[derive(Debug)]
enum Sender {
    H1(http1::SendRequest<Incoming>),
    H2(http2::SendRequest<Incoming>),
}

impl Upstream {
    /// Sends an allowed request to the app. For an allowed WebSocket upgrade that the
    /// app accepts (101), the two upgraded streams are then joined.
    pub async fn send(
        &self,
        session: &Session,
        mut req: Request<Incoming>,
        websocket: bool,
    ) -> Result<Response<Incoming>, Box<dyn std::error::Error + Send + Sync>> {
        let h2 = req.version() == Version::HTTP_2;
        let downstream_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));
        let mut guard = self.sender.lock().await;
        let usable = match guard.as_mut() {
            Some(Sender::H1(s)) => !h2 && s.ready().await.is_ok(),
            Some(Sender::H2(s)) => h2 && s.ready().await.is_ok(),
            None => false,
        };
        if !usable {
            *guard = Some(open(session, h2).await?);
        }
        let mut response = match guard.as_mut() {
            Some(Sender::H1(s)) => {
                if !h2 {
                    // HTTP/1.1 to the app: origin-form, the Host header says the rest.
                    let pq = req.uri().path_and_query().cloned();
                    if let Some(pq) = pq {
                        *req.uri_mut() = pq.as_str().parse()?;
                    }
                }
                s.send_request(req).await?
            }
            Some(Sender::H2(s)) => {
                let mut s = s.clone();
                drop(guard);
                s.send_request(req).await?
            }
            None => return Err("no upstream connection".into()),
        };
        if let Some(downstream) = downstream_upgrade {
            if response.status() == StatusCode::SWITCHING_PROTOCOLS {
                let upstream = hyper::upgrade::on(&mut response);
                tokio::spawn(async move {
                    if let (Ok(down), Ok(up)) = (downstream.await, upstream.await) {
                        let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        }
        Ok(response)
    }
}

async fn open(
    session: &Session,
    h2: bool,
) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>> {
    let timeout = session.proxy.connect_timeout;
    match &session.dial {
        Dial::Plain(addr) => handshake(connect(*addr, timeout).await?, h2).await,
        Dial::Mesh { addr, tls, .. } => {
            let tcp = connect(*addr, timeout).await?;
            let tls = tokio_rustls::TlsConnector::from(tls.clone())
                .connect(palisade_certs::tls::server_name(), tcp);
            let stream = tokio::time::timeout(session.proxy.handshake_timeout, tls)
                .await
                .map_err(|_| "mTLS handshake timed out")??;
            handshake(stream, h2).await
        }
    }
}

async fn handshake<S>(
    stream: S,
    h2: bool,
) -> Result<Sender, Box<dyn std::error::Error + Send + Sync>>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    if h2 {
        let (sender, conn) = http2::handshake(TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Sender::H2(sender))
    } else {
        let (sender, conn) = http1::handshake(io).await?;
        tokio::spawn(conn.with_upgrades());
        Ok(Sender::H1(sender))
    }
}
