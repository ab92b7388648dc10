// SPDX-License-Identifier: Apache-2.0
//! The network seam: where sandboxes get their slots.
//!
//! `hearth-net` implements it with network namespaces and nftables; the trait keeps
//! the node testable and lets a cluster node bring its own networking.

use async_trait::async_trait;
use hearth_runtime::NetSlot;
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
#[async_trait]
pub trait Network: Send + Sync + std::fmt::Debug + 'static {
    /// Takes a slot (from the pool when possible) and applies `policy`.
    async fn acquire(&self, policy: &EgressPolicy) -> Result<NetSlot, NetworkError>;
    /// Replaces a slot's policy.
    async fn set_policy(&self, slot: &NetSlot, policy: &EgressPolicy) -> Result<(), NetworkError>;
    /// Gives a slot back, clean.
    async fn release(&self, slot: NetSlot) -> Result<(), NetworkError>;
    /// Marks a slot as in use by a re-adopted sandbox.
    async fn adopt(&self, slot: &NetSlot, policy: &EgressPolicy) -> Result<(), NetworkError>;
    /// Removes leftovers of earlier runs except the adopted slots.
    async fn reclaim_stale(&self) -> Result<(), NetworkError>;
    /// Removes everything this network created.
    async fn shutdown(&self) -> Result<(), NetworkError>;
}
