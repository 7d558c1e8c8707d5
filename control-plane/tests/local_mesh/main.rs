//! `palisade up` and `palisade serve` for real, as root: the example mesh in real
//! network namespaces with real proxies fed by a real control plane over mTLS gRPC.
//! The tests run side by side, each mesh on its own bridge.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]

mod control_plane;
mod example;
mod renewal;
mod support;
