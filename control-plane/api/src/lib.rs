//! The wire contract between the control plane and the proxies:
//! `proto/palisade/v1/distribution.proto`, generated with tonic and prost. Both
//! sides depend on this crate and on nothing of each other.

#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("palisade.v1");
}

/// The port the control plane serves Identity and Distribution on (Istio's
/// istiod uses 15012 for the same purpose).
pub const PORT: u16 = 15012;

/// The identity the control plane's certificate carries, which proxies expect.
pub fn control_plane_identity(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/palisade-system/sa/palisade-control-plane")
}
