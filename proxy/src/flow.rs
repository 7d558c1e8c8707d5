//! The flow log: one JSON line per connection when it ends (and one every interval for
//! long ones), written by its own task so connection tasks never wait on the disk.

use std::io::Write;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use tokio::sync::mpsc;

/// One end of a flow, with what the mesh knows of it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowEndpoint {
    pub ip: String,
    pub port: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

impl FlowEndpoint {
    pub fn address(addr: SocketAddr) -> Self {
        FlowEndpoint {
            ip: addr.ip().to_string(),
            port: addr.port(),
            ..Default::default()
        }
    }
}

/// What decided, per direction, in the conformance format's references.
#[derive(Clone, Debug, Default, Serialize)]
pub struct FlowPolicies {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
    /// The verdict if staged policies were enforced.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pending: Option<FlowPending>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub logged: Vec<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowPending {
    pub allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub egress: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    Source,
    Destination,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// Whose side ended the flow with an error (pingora's ErrorSource).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Fault {
    Downstream,
    Upstream,
    Internal,
}

#[derive(Clone, Debug, Serialize)]
pub struct FlowRecord {
    /// `end`, or `interim` for a long flow still open.
    pub kind: &'static str,
    /// Unix seconds.
    pub start: f64,
    pub end: f64,
    pub duration_ms: u64,
    pub reporter: Reporter,
    pub source: FlowEndpoint,
    pub destination: FlowEndpoint,
    pub protocol: &'static str,
    pub action: Action,
    /// Why, for a denial the policy did not make (no state, identity, plaintext, TLS).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub policies: FlowPolicies,
    /// The peer's verified SPIFFE ID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_peer: Option<String>,
    pub bytes_sent: u64,
    pub bytes_received: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// For a record of one HTTP request: what was asked and answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<FlowHttp>,
    /// For a connection served as HTTP: how many requests it carried (each has its
    /// own record, with its own verdict).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_requests: Option<u64>,
    /// The Service (`namespace/name`) whose clusterIP the app connected to; the
    /// destination is the pod it was sent to.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// One HTTP request, as decided.
#[derive(Clone, Debug, Serialize)]
pub struct FlowHttp {
    pub method: String,
    /// The canonical path that was matched (and forwarded), or the target as sent
    /// when it was refused before matching.
    pub path: String,
    pub status: u16,
    pub request_id: String,
}

pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or_default()
}

/// Sends records to the writer task.
#[derive(Clone, Debug)]
pub struct FlowLog {
    tx: mpsc::Sender<FlowRecord>,
}

impl FlowLog {
    /// Starts the writer: `-` for stdout, or a file appended to.
    pub fn start(target: &str) -> std::io::Result<FlowLog> {
        let mut out: Box<dyn Write + Send> = if target == "-" {
            Box::new(std::io::stdout())
        } else {
            Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(target)?,
            )
        };
        let (tx, mut rx) = mpsc::channel::<FlowRecord>(4096);
        std::thread::Builder::new()
            .name("flow-log".into())
            .spawn(move || {
                while let Some(record) = rx.blocking_recv() {
                    if let Ok(line) = serde_json::to_string(&record) {
                        let _ = writeln!(out, "{line}");
                        let _ = out.flush();
                    }
                }
            })?;
        Ok(FlowLog { tx })
    }

    /// Queues a record; if the writer is 4096 records behind, the record is dropped
    /// (and counted by the caller) rather than slowing connections down.
    pub fn write(&self, record: FlowRecord) -> bool {
        self.tx.try_send(record).is_ok()
    }
}
