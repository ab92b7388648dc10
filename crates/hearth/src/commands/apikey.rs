// SPDX-License-Identifier: Apache-2.0
//! `hearth apikey create|ls|rm`.

use crate::cli::ApikeyOp;
use anyhow::Context;
use hearth_api::auth::{generate_key, register_key};
use hearth_store::Store;
use std::path::Path;

pub fn run(op: ApikeyOp, home: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(home)
        .with_context(|| format!("failed to create {}", home.display()))?;
    let store = Store::open(&home.join("hearth.db"))?;
    match op {
        ApikeyOp::Create { name } => {
            let key = generate_key();
            let rec = register_key(&store, &key, &name)?;
            println!("{key}");
            eprintln!(
                "created API key {} ({}); it is not shown again",
                rec.id, rec.mask
            );
        }
        ApikeyOp::Ls => {
            println!("{:<14} {:<20} {:<24} CREATED", "ID", "NAME", "KEY");
            for k in store.list_api_keys()? {
                println!(
                    "{:<14} {:<20} {:<24} {}",
                    k.id,
                    k.name,
                    k.mask,
                    k.created_at.date()
                );
            }
        }
        ApikeyOp::Rm { id } => {
            if !store.delete_api_key(&id)? {
                anyhow::bail!("no API key with id {id}");
            }
            eprintln!("deleted API key {id}");
        }
    }
    Ok(())
}
