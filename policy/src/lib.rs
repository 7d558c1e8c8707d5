//! Palisade's policy engine: the Kubernetes and Calico policy languages, compiled, and
//! the one evaluator every part of Palisade uses. No I/O, no async.
//!
//! One decision, top to bottom:
//! 1. [`manifest::Manifests::load_str`] parses Namespaces, Pods, ServiceAccounts,
//!    Kubernetes NetworkPolicies and Calico policies and tiers into one normalized
//!    [`policy::Policy`] model (Kubernetes policies as Calico converts them).
//! 2. [`compile::CompiledCluster::new`] compiles: each selector becomes a shared
//!    [`compile::PeerGroup`]; each pod gets its ordered tiers -> policies list.
//! 3. [`compile::CompiledCluster::evaluate`] walks the tiers for egress at the source
//!    and ingress at the destination and returns a [`verdict::Verdict`] that says what
//!    decided each direction (and what staged policies would have decided).
//!
//! The semantics, fact by fact with sources, are in the project's
//! `CALICO-SEMANTICS.md`; comments beside each branch quote the spec they implement.

pub mod compile;
pub mod evaluate;
pub mod explain;
pub mod http;
pub mod manifest;
pub mod model;
pub mod notation;
pub mod policy;
pub mod scenario;
pub mod selector;
pub mod services;
pub mod verdict;

pub use compile::{CompiledCluster, WorkloadId};
pub use evaluate::{Endpoint, Flow};
pub use http::HttpRequest;
pub use manifest::{LoadError, Manifests};
pub use policy::{Direction, Protocol};
pub use selector::Selector;
pub use verdict::{Decision, Reference, Verdict};
