//! What every connection does whatever its direction: describe its ends, decide
//! with the evaluator, and write its flow record; relay bytes with interim records.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_policy::{CompiledCluster, Direction, Verdict};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::flow::{
    unix_now, Action, Fault, FlowEndpoint, FlowPending, FlowPolicies, FlowRecord, Reporter,
};
use crate::forward::{copy_both_ways, ByteCounters, Counted};
use crate::metrics::{ByteLabels, ConnectionLabels, DirectionLabels};
use crate::state::Snapshot;
use crate::Proxy;

/// One connection being handled: what its flow record will say.
#[derive(Clone, Debug)]
pub struct Connection {
    pub direction: &'static str,
    pub reporter: Reporter,
    pub start: f64,
    pub started: Instant,
    pub source: FlowEndpoint,
    pub destination: FlowEndpoint,
    pub policies: FlowPolicies,
    pub tls_peer: Option<String>,
    pub counters: Arc<ByteCounters>,
    /// `namespace/name` when the app connected to a Service's clusterIP.
    pub service: Option<String>,
}

impl Connection {
    pub fn new(
        direction: &'static str,
        reporter: Reporter,
        source: SocketAddr,
        destination: SocketAddr,
    ) -> Self {
        Connection {
            direction,
            reporter,
            start: unix_now(),
            started: Instant::now(),
            source: FlowEndpoint::address(source),
            destination: FlowEndpoint::address(destination),
            policies: FlowPolicies::default(),
            tls_peer: None,
            counters: Arc::default(),
            service: None,
        }
    }

    /// Names the pods behind the two addresses, as far as the snapshot knows them.
    pub fn describe(&mut self, snapshot: &Snapshot) {
        for end in [&mut self.source, &mut self.destination] {
            let Ok(ip) = end.ip.parse() else { continue };
            if let Some(w) = snapshot
                .policy
                .workload_by_ip(ip)
                .and_then(|w| snapshot.policy.workload(w))
            {
                end.namespace = Some(w.pod.namespace.clone());
                end.pod = Some(w.pod.name.clone());
                end.service_account = Some(w.pod.service_account.clone());
            }
        }
    }

    /// Records what decided `direction` (and the pending verdict) from a verdict.
    pub fn decided(&mut self, policy: &CompiledCluster, verdict: &Verdict, direction: Direction) {
        let reference = |d: Direction, staged: bool| {
            let v = match d {
                Direction::Ingress => verdict.ingress.as_ref(),
                Direction::Egress => verdict.egress.as_ref(),
            }?;
            let decision = match (staged, d) {
                (false, _) => v.decision,
                (true, Direction::Ingress) => verdict.pending.ingress?,
                (true, Direction::Egress) => verdict.pending.egress?,
            };
            Some(
                policy
                    .reference(v.workload, d, decision, staged)
                    .to_string(),
            )
        };
        match direction {
            Direction::Egress => self.policies.egress = reference(Direction::Egress, false),
            Direction::Ingress => self.policies.ingress = reference(Direction::Ingress, false),
        }
        let pending = reference(direction, true);
        let enforced = match direction {
            Direction::Egress => &self.policies.egress,
            Direction::Ingress => &self.policies.ingress,
        };
        if pending != *enforced {
            let (egress, ingress) = match direction {
                Direction::Egress => (pending, None),
                Direction::Ingress => (None, pending),
            };
            self.policies.pending = Some(FlowPending {
                allowed: verdict.pending.allowed,
                egress,
                ingress,
            });
        }
        let logged = match direction {
            Direction::Egress => verdict.egress.as_ref(),
            Direction::Ingress => verdict.ingress.as_ref(),
        };
        if let Some(v) = logged {
            self.policies.logged = policy.logged_references(direction, &v.logged);
        }
    }

    pub fn deciding_policy(&self) -> String {
        let p = if self.direction == "outbound" {
            &self.policies.egress
        } else {
            &self.policies.ingress
        };
        p.clone().unwrap_or_else(|| "none".into())
    }

    pub fn record(
        &self,
        kind: &'static str,
        action: Action,
        reason: Option<String>,
        fault: Option<Fault>,
    ) -> FlowRecord {
        let (sent, received) = self.counters.get();
        FlowRecord {
            kind,
            start: self.start,
            end: unix_now(),
            duration_ms: self.started.elapsed().as_millis() as u64,
            reporter: self.reporter,
            source: self.source.clone(),
            destination: self.destination.clone(),
            protocol: "TCP",
            action,
            reason,
            policies: self.policies.clone(),
            tls_peer: self.tls_peer.clone(),
            bytes_sent: sent,
            bytes_received: received,
            fault,
            http: None,
            http_requests: None,
            service: self.service.clone(),
        }
    }
}

impl Proxy {
    pub fn write(&self, record: FlowRecord) {
        if !self.flows.write(record) {
            self.metrics.flow_records_dropped.inc();
        }
    }

    /// A denial: counted, logged, recorded. The caller drops the connection.
    pub fn deny(&self, conn: &Connection, reason: Option<String>) {
        let policy = reason.clone().unwrap_or_else(|| conn.deciding_policy());
        self.metrics
            .connections
            .get_or_create(&ConnectionLabels {
                direction: conn.direction.into(),
                verdict: "deny".into(),
                policy,
            })
            .inc();
        tracing::info!(
            direction = conn.direction,
            source = %conn.source.ip,
            destination = %format!("{}:{}", conn.destination.ip, conn.destination.port),
            egress = conn.policies.egress.as_deref().unwrap_or("-"),
            ingress = conn.policies.ingress.as_deref().unwrap_or("-"),
            reason = reason.as_deref().unwrap_or("policy"),
            "connection denied"
        );
        self.write(conn.record("end", Action::Deny, reason, None));
    }

    /// Relays an allowed connection to its end, with an interim record every
    /// `flow_interval`, then the final record.
    /// `closed` fires when a new state denies the connection: it is cut at once and
    /// its record says so.
    pub async fn relay<A, B>(
        &self,
        conn: Connection,
        downstream: A,
        mut upstream: B,
        closed: Option<&mut tokio::sync::oneshot::Receiver<crate::registry::Closed>>,
    ) where
        A: AsyncRead + AsyncWrite + Unpin,
        B: AsyncRead + AsyncWrite + Unpin,
    {
        self.metrics
            .connections
            .get_or_create(&ConnectionLabels {
                direction: conn.direction.into(),
                verdict: "allow".into(),
                policy: conn.deciding_policy(),
            })
            .inc();
        let open = self
            .metrics
            .open_connections
            .get_or_create(&DirectionLabels {
                direction: conn.direction.into(),
            })
            .clone();
        open.inc();
        let mut downstream = Counted::new(downstream, conn.counters.clone());
        let copy = copy_both_ways(&mut downstream, &mut upstream);
        tokio::pin!(copy);
        let mut interim = tokio::time::interval_at(
            tokio::time::Instant::now() + self.flow_interval,
            self.flow_interval,
        );
        let closed = async {
            match closed {
                Some(rx) => rx.await.ok(),
                None => None,
            }
        };
        tokio::pin!(closed);
        let (mut closed_by, mut watching) = (None, true);
        let result = loop {
            tokio::select! {
                r = &mut copy => break r,
                c = &mut closed, if watching => match c {
                    Some(c) => { closed_by = Some(c); break Ok(()); }
                    None => watching = false,
                },
                _ = interim.tick() => self.write(conn.record("interim", Action::Allow, None, None)),
            }
        };
        open.dec();
        let (sent, received) = conn.counters.get();
        let bytes = |way: &str| ByteLabels {
            direction: conn.direction.into(),
            way: way.into(),
        };
        self.metrics
            .bytes
            .get_or_create(&bytes("sent"))
            .inc_by(sent);
        self.metrics
            .bytes
            .get_or_create(&bytes("received"))
            .inc_by(received);
        let fault = result.err().map(|e| {
            tracing::debug!(error = %e, "relay ended with an error");
            Fault::Internal
        });
        match closed_by {
            Some(c) => {
                tracing::info!(
                    direction = conn.direction,
                    source = %conn.source.ip,
                    destination = %format!("{}:{}", conn.destination.ip, conn.destination.port),
                    decided_by = %c.decided_by,
                    version = c.version,
                    "open connection closed by a new state"
                );
                let reason = format!(
                    "closed: state version {} denies it ({})",
                    c.version, c.decided_by
                );
                self.write(conn.record("end", Action::Deny, Some(reason), None));
            }
            None => self.write(conn.record("end", Action::Allow, None, fault)),
        }
    }
}

/// Drops a TCP connection with a reset, so a refused app sees "connection reset"
/// at once instead of a half-open socket.
pub async fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Connects with a deadline. No Nagle: the proxy forwards what it gets at once, and
/// a small record written right after the TLS handshake flight must not wait for
/// the peer's delayed ACK (that cost 40 ms per new connection).
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "connect timed out",
            ))
        }
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Closes a stream politely (FIN), ignoring errors.
pub async fn close<S: AsyncWrite + Unpin>(mut s: S) {
    let _ = s.shutdown().await;
}
