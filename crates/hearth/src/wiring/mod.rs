// SPDX-License-Identifier: Apache-2.0
//! Adapters that plug the concrete crates (hearth-net, the runtimes) into the node's
//! seams. This is the only place that knows both sides.

// Wired into `hearth serve` together with the container runtime.
#[allow(dead_code)]
pub mod net;
