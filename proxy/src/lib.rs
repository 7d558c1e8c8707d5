//! Palisade's per-pod proxy. One connection's path:
//!
//! 1. iptables ([`init`]) redirects the app's outbound TCP to :15001 and every
//!    inbound TCP connection to :15006.
//! 2. [`run`] accepts on both ([`serve`]), one task per connection, bounded.
//! 3. [`outbound::handle`]: original destination -> endpoint -> egress verdict ->
//!    mTLS to a mesh pod (expecting its SPIFFE ID) or plain TCP elsewhere.
//! 4. [`inbound::handle`]: mTLS (or plaintext, refused in strict mode) -> the
//!    certificate's identity must own the source IP -> ingress verdict -> the app.
//! 5. [`conn`]: relay with byte counters; a flow record per connection ([`flow`]).
//!
//! Verdicts come from `palisade-policy`, the same evaluator `palisade explain` uses.
//! State comes from files ([`state`]) and is swapped atomically; nothing loaded means
//! every connection is denied.

pub mod admin;
pub mod conn;
pub mod control;
pub mod flow;
pub mod forward;
pub mod http;
pub mod inbound;
pub mod init;
pub mod metrics;
pub mod orig_dst;
pub mod outbound;
pub mod registry;
pub mod state;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::flow::FlowLog;
use crate::metrics::{DirectionLabels, Metrics};
use crate::state::SharedState;

/// Whether inbound plaintext is refused (strict) or evaluated by source IP (permissive).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    Strict,
    Permissive,
}

/// What every connection task shares.
#[derive(Debug)]
pub struct Proxy {
    pub state: SharedState,
    pub metrics: Metrics,
    pub flows: FlowLog,
    pub mode: Mode,
    pub inbound_port: u16,
    pub outbound_port: u16,
    /// A peer that sends nothing, or does not finish its handshake, in this time is dropped.
    pub handshake_timeout: Duration,
    pub connect_timeout: Duration,
    /// Long flows get an interim record this often.
    pub flow_interval: Duration,
    pub http: http::HttpLimits,
    /// Open L4 connections, re-checked on every state change.
    pub open: registry::OpenConnections,
}

impl Proxy {
    pub fn handshake_failed(&self, direction: &str) {
        self.metrics
            .handshake_failures
            .get_or_create(&DirectionLabels {
                direction: direction.into(),
            })
            .inc();
    }
}

/// Accepts connections until the listener fails; at most `limit` at once (the permit
/// is taken before accepting, so an overload waits in the kernel's backlog).
pub async fn serve<F, Fut>(listener: TcpListener, limit: Arc<Semaphore>, handler: F)
where
    F: Fn(TcpStream, SocketAddr) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let handler = Arc::new(handler);
    loop {
        let Ok(permit) = limit.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((stream, addr)) => {
                let _ = stream.set_nodelay(true);
                let handler = handler.clone();
                tokio::spawn(async move {
                    handler(stream, addr).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}
