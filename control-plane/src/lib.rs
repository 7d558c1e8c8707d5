//! The control plane and the operator CLI, as a library so that `main.rs` stays
//! a few lines and benchmarks can reach the pieces.
//!
//! - [`cli`]: one module per subcommand of `palisade`.
//! - [`serve`]: the control plane (sources -> world -> streams, CA service).
//! - [`k8s`]: the Kubernetes API: watchers, TokenReview, CA Secret, one-shot lists.
//! - [`webhook`]: the sidecar injector.
//! - [`mesh`]: the local mesh of `palisade up`.

pub mod cli;
#[cfg(test)]
mod deploy_tests;
pub mod k8s;
pub mod mesh;
pub mod serve;
pub mod webhook;
