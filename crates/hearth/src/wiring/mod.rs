// SPDX-License-Identifier: Apache-2.0
//! Adapters that plug the concrete crates (hearth-net, the runtimes) into the node's
//! seams. This is the only place that knows both sides.

pub mod microvm;
pub mod net;
pub mod templates;
