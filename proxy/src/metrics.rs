//! Prometheus metrics, served on the admin port's /metrics.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// inbound | outbound
    pub direction: String,
    /// allow | deny
    pub verdict: String,
    /// The deciding reference (`gnp/x:0`, `end-of-tier/default`, ...) or the reason.
    pub policy: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ByteLabels {
    pub direction: String,
    /// sent (towards the peer) | received
    pub way: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DirectionLabels {
    pub direction: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpErrorLabels {
    /// not_http | header_timeout | header_too_large | malformed | incomplete | h2_reset | other
    pub kind: String,
}

#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub connections: Family<ConnectionLabels, Counter>,
    pub bytes: Family<ByteLabels, Counter>,
    pub handshake_failures: Family<DirectionLabels, Counter>,
    pub open_connections: Family<DirectionLabels, Gauge>,
    pub flow_records_dropped: Counter,
    pub http_requests: Family<ConnectionLabels, Counter>,
    pub http_errors: Family<HttpErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("palisade_proxy");
        let connections = Family::<ConnectionLabels, Counter>::default();
        let bytes = Family::<ByteLabels, Counter>::default();
        let handshake_failures = Family::<DirectionLabels, Counter>::default();
        let open_connections = Family::<DirectionLabels, Gauge>::default();
        let flow_records_dropped = Counter::default();
        registry.register(
            "connections",
            "Connections decided, by direction, verdict and deciding policy",
            connections.clone(),
        );
        registry.register("bytes", "Bytes copied, by direction and way", bytes.clone());
        registry.register(
            "tls_handshake_failures",
            "Failed mTLS handshakes",
            handshake_failures.clone(),
        );
        registry.register(
            "open_connections",
            "Connections open now",
            open_connections.clone(),
        );
        registry.register(
            "flow_records_dropped",
            "Flow records dropped because the writer fell behind",
            flow_records_dropped.clone(),
        );
        let http_requests = Family::<ConnectionLabels, Counter>::default();
        let http_errors = Family::<HttpErrorLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests decided, by direction, verdict and deciding policy (or reason)",
            http_requests.clone(),
        );
        registry.register(
            "http_errors",
            "HTTP connections ended by malformed input or a limit, by kind",
            http_errors.clone(),
        );
        Metrics {
            registry,
            http_requests,
            http_errors,
            connections,
            bytes,
            handshake_failures,
            open_connections,
            flow_records_dropped,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
