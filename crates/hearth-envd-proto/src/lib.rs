// SPDX-License-Identifier: Apache-2.0
//! Generated Connect/protobuf types and service traits for envd's `process` and
//! `filesystem` packages (the wire contract of `spec/envd/*.proto`).
//!
//! The code under `generated/` is produced by `cargo run -p xtask -- codegen` and
//! checked in; do not edit it by hand.

#![allow(missing_docs, missing_debug_implementations, clippy::all)]

include!("generated/mod.rs");
