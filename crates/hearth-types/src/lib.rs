// SPDX-License-Identifier: Apache-2.0
//! Identifiers and small value types shared by every Hearth crate.
//!
//! This crate does no I/O. Ids are newtypes with a validating `parse`, so a value of
//! type [`SandboxId`] is known to be safe to put in a path, a hostname or a log line.

mod error_chain;
mod ids;

pub use error_chain::ErrorChain;
pub use ids::{IdError, SandboxId, TemplateId};
