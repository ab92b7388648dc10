// SPDX-License-Identifier: Apache-2.0
//! The node orchestrator: the life cycle of every sandbox on this host.
//!
//! [`Node`] turns API operations (create, kill, timeout, connect, pause, resume,
//! snapshot, fork) into runtime and network operations, keeps the store in step, and
//! enforces timeouts. It knows no HTTP: `hearth-api` and `hearth-proxy` call it.

mod config;
mod entry;
mod envd;
mod error;
mod metrics;
pub mod network;
mod node;
mod token;

pub use config::NodeConfig;
pub use entry::{Route, SandboxConfig};
pub use error::NodeError;
pub use metrics::Sample;
pub use network::{EgressPolicy, Network, NetworkError};
pub use node::{CreateRequest, ENVD_VERSION, Node, SandboxInfo};
pub use token::TokenSeed;
