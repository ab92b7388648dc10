// SPDX-License-Identifier: Apache-2.0
//! Developer tasks that are not part of the product.
//!
//! `cargo run -p xtask -- codegen` regenerates the checked-in envd protocol code from
//! `spec/envd/*.proto`. The output is committed so that building Hearth never needs
//! `protoc`; only changing the protocol does.

use anyhow::{Context, Result, bail};
use std::path::PathBuf;

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "codegen" => codegen(),
        _ => bail!("usage: cargo run -p xtask -- codegen"),
    }
}

fn codegen() -> Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let spec = root.join("spec/envd");
    let out = root.join("crates/hearth-envd-proto/src/generated");
    std::fs::create_dir_all(&out).with_context(|| format!("failed to create {}", out.display()))?;
    connectrpc_build::Config::new()
        .files(&[spec.join("process.proto"), spec.join("filesystem.proto")])
        .includes(&[spec.clone(), PathBuf::from("/usr/include")])
        .out_dir(&out)
        .include_file("mod.rs")
        .emit_rerun_directives(false)
        .compile()
        .context("failed to generate envd protocol code (is protoc installed?)")?;
    println!("wrote {}", out.display());
    Ok(())
}
