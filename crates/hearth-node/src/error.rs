// SPDX-License-Identifier: Apache-2.0
//! Errors of node operations, by what the caller can do about them.

use hearth_runtime::RuntimeError;
use hearth_store::StoreError;

/// A node operation that failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No such sandbox, template or snapshot.
    #[error("{kind} {id} not found")]
    NotFound {
        /// What was looked up.
        kind: &'static str,
        /// The id asked for.
        id: String,
    },
    /// The request is invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// The request conflicts with the sandbox's state (e.g. already paused).
    #[error("{0}")]
    Conflict(String),
    /// Not enough capacity (slots, memory, disk) right now.
    #[error("{0}")]
    Capacity(String),
    /// The sandbox failed to start or to change state.
    #[error("sandbox operation failed")]
    Runtime(#[source] RuntimeError),
    /// The state store failed.
    #[error("state store failed")]
    Store(#[source] StoreError),
    /// envd inside the sandbox misbehaved.
    #[error("envd of sandbox {id} did not accept {op}: {detail}")]
    Envd {
        /// Sandbox id.
        id: String,
        /// What was sent.
        op: &'static str,
        /// What happened.
        detail: String,
    },
    /// Hearth is shutting down.
    #[error("hearth is shutting down")]
    ShuttingDown,
    /// Any other host-side failure.
    #[error("{context}")]
    Internal {
        /// What was being done.
        context: String,
        /// The cause.
        #[source]
        err: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl From<StoreError> for NodeError {
    fn from(err: StoreError) -> Self {
        Self::Store(err)
    }
}

impl From<RuntimeError> for NodeError {
    fn from(err: RuntimeError) -> Self {
        Self::Runtime(err)
    }
}

impl NodeError {
    /// A sandbox that does not exist.
    pub fn sandbox_not_found(id: &str) -> Self {
        Self::NotFound {
            kind: "sandbox",
            id: id.to_owned(),
        }
    }

    /// Wraps a host-side failure.
    pub fn internal(
        context: impl Into<String>,
        err: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Internal {
            context: context.into(),
            err: err.into(),
        }
    }
}
