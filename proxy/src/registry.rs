//! Open L4 connections, so that a new state can close those it denies (as ztunnel's
//! policy watcher does). A connection registers *before* it loads the state it is
//! decided with, and the state watcher stores a new state *before* it re-checks the
//! registry, so no update can slip between a connection's check and the re-check.
//!
//! The registry is one mutex-guarded map touched twice per connection (register,
//! drop) and once per state change; never per byte.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use palisade_policy::{Direction, Flow, Protocol};
use tokio::sync::oneshot;

use crate::state::Snapshot;

/// Why an open connection was closed by a state change.
#[derive(Debug)]
pub struct Closed {
    pub version: u64,
    /// The deciding reference under the new state, or why it can no longer stand.
    pub decided_by: String,
}

#[derive(Debug)]
struct Entry {
    direction: Direction,
    source: SocketAddr,
    destination: SocketAddr,
    /// The verified peer identity (inbound mTLS).
    tls_peer: Option<String>,
    close: Option<oneshot::Sender<Closed>>,
}

#[derive(Debug, Default)]
pub struct OpenConnections {
    next: AtomicU64,
    entries: Mutex<HashMap<u64, Entry>>,
}

/// A registered connection; dropping it unregisters.
#[derive(Debug)]
pub struct Registration<'a> {
    id: u64,
    registry: &'a OpenConnections,
    pub closed: oneshot::Receiver<Closed>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if let Ok(mut entries) = self.registry.entries.lock() {
            entries.remove(&self.id);
        }
    }
}

impl<'a> Registration<'a> {
    /// The pod a Service connection was sent to (it registered with the clusterIP).
    pub fn set_destination(&self, destination: SocketAddr) {
        if let Ok(mut entries) = self.registry.entries.lock() {
            if let Some(e) = entries.get_mut(&self.id) {
                e.destination = destination;
            }
        }
    }

    /// What the re-check needs to know once the handshake has told it.
    pub fn set_peer(&self, tls_peer: &str) {
        if let Ok(mut entries) = self.registry.entries.lock() {
            if let Some(e) = entries.get_mut(&self.id) {
                e.tls_peer = Some(tls_peer.to_owned());
            }
        }
    }
}

impl OpenConnections {
    pub fn register(
        &self,
        direction: Direction,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Registration<'_> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut entries) = self.entries.lock() {
            entries.insert(
                id,
                Entry {
                    direction,
                    source,
                    destination,
                    tls_peer: None,
                    close: Some(tx),
                },
            );
        }
        Registration {
            id,
            registry: self,
            closed: rx,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Re-decides every open connection under `snapshot`; closes those it denies.
    /// Returns how many were closed.
    pub fn recheck(&self, snapshot: &Snapshot) -> usize {
        let Ok(mut entries) = self.entries.lock() else {
            return 0;
        };
        let mut closed = 0;
        for entry in entries.values_mut() {
            if let Some(decided_by) = denied_now(entry, snapshot) {
                if let Some(tx) = entry.close.take() {
                    let _ = tx.send(Closed {
                        version: snapshot.version,
                        decided_by,
                    });
                    closed += 1;
                }
            }
        }
        closed
    }
}

/// `Some(why)` when the connection would not be allowed under `snapshot`.
fn denied_now(entry: &Entry, snapshot: &Snapshot) -> Option<String> {
    let policy = &snapshot.policy;
    let me = palisade_policy::Endpoint {
        ip: match entry.direction {
            Direction::Egress => entry.source.ip(),
            Direction::Ingress => entry.destination.ip(),
        },
        workload: Some(snapshot.workload),
    };
    let (source, destination) = match entry.direction {
        Direction::Egress => (me, policy.endpoint(entry.destination.ip())),
        Direction::Ingress => (policy.endpoint(entry.source.ip()), me),
    };
    if let (Direction::Ingress, Some(peer)) = (entry.direction, &entry.tls_peer) {
        if let Err(why) = snapshot.check_owner(peer, &source) {
            return Some(why);
        }
    }
    let flow = Flow {
        source,
        destination,
        protocol: Protocol::TCP,
        port: Some(entry.destination.port()),
        icmp: None,
        http: None,
    };
    if policy.depends_on_http(&flow, entry.direction) {
        // Relayed as bytes, it cannot be decided per request: fail closed.
        return Some("an HTTP rule now applies: decided per request on a new connection".into());
    }
    let verdict = policy.evaluate(&flow);
    let side = match entry.direction {
        Direction::Egress => verdict.egress.as_ref(),
        Direction::Ingress => verdict.ingress.as_ref(),
    }?;
    (!side.decision.allows()).then(|| {
        policy
            .reference(side.workload, entry.direction, side.decision, false)
            .to_string()
    })
}

/// Shared so the state watcher can reach it.
pub type SharedOpenConnections = Arc<OpenConnections>;
