// SPDX-License-Identifier: Apache-2.0
//! The network seam: where sandboxes get their slots.
//!
//! `hearth-net` implements it with network namespaces and nftables; the trait keeps
//! the node testable and lets a cluster node bring its own networking.

use async_trait::async_trait;
use hearth_runtime::{NetSlot, RuntimeKind};
use serde::{Deserialize, Serialize};

/// A sandbox's egress policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EgressPolicy {
    /// Whether the sandbox may reach the internet at all.
    pub internet: bool,
    /// CIDRs or addresses always allowed (beats `deny_out`).
    #[serde(default)]
    pub allow_out: Vec<String>,
    /// CIDRs or addresses denied.
    #[serde(default)]
    pub deny_out: Vec<String>,
}

/// A network failure.
#[derive(Debug, thiserror::Error)]
#[error("network: {context}")]
pub struct NetworkError {
    /// What failed.
    pub context: String,
    /// The cause.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// Provides network slots.
///
/// A network is started with the slots of sandboxes that may have survived a restart
/// (see [`crate::Node::adoptable_slots`]) already adopted and every other leftover
/// removed; the node then releases the adopted slots whose sandboxes turn out dead.
#[async_trait]
pub trait Network: Send + Sync + std::fmt::Debug + 'static {
    /// Takes a slot laid out for `kind` (from the pool when possible) with `policy`.
    async fn acquire(
        &self,
        kind: RuntimeKind,
        policy: &EgressPolicy,
    ) -> Result<NetSlot, NetworkError>;
    /// Replaces a slot's policy.
    async fn set_policy(&self, slot: &NetSlot, policy: &EgressPolicy) -> Result<(), NetworkError>;
    /// Gives a slot back; it is cleaned before reuse. The sandbox's processes must be gone.
    async fn release(&self, slot: NetSlot) -> Result<(), NetworkError>;
    /// Stops the network: removes everything it created, or, with `keep_in_use`, leaves
    /// the slots in use (and their policies) for a restart to re-adopt.
    async fn shutdown(&self, keep_in_use: bool) -> Result<(), NetworkError>;
}
