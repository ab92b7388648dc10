// SPDX-License-Identifier: Apache-2.0
//! The built-in templates, built on first start.

use anyhow::Context;
use hearth_builder::Progress;
use hearth_store::{Store, TemplateKind, TemplateRecord};
use sha2::{Digest, Sha256};
use std::path::Path;

/// Resources of the base template (E2B's defaults: 2 vCPU, 512 MiB).
const BASE_CPUS: u32 = 2;
const BASE_MEMORY_MB: u32 = 512;
const BASE_DISK_MB: u32 = 2048;

/// Builds (or finds cached) the base template's layers and registers `base`.
pub fn ensure_base(
    home: &Path,
    store: &Store,
    progress: &dyn Progress,
) -> anyhow::Result<TemplateRecord> {
    let envd = hearth_builder::find_envd_binary().context("hearth-envd for the templates")?;
    let layers = hearth_builder::base_template_layers(home, &envd, progress)
        .context("failed to build the base template")?;
    let build_id = {
        let mut h = Sha256::new();
        for l in &layers {
            h.update(l.to_string_lossy().as_bytes());
            h.update([0]);
        }
        h.finalize()
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let existing = store.template("base")?;
    if let Some(t) = &existing
        && t.build_id == build_id
    {
        return Ok(t.clone());
    }
    let record = TemplateRecord {
        id: "base".into(),
        kind: TemplateKind::Template,
        build_id,
        names: vec!["base".into()],
        runtime: None,
        cpu_count: BASE_CPUS,
        memory_mb: BASE_MEMORY_MB,
        disk_mb: BASE_DISK_MB,
        envd_version: hearth_node::ENVD_VERSION.into(),
        artifacts: serde_json::json!({ "layers": layers }),
        source_sandbox: None,
        created_at: time::OffsetDateTime::now_utc(),
    };
    store.upsert_template(&record)?;
    tracing::info!(build = %record.build_id, "base template ready");
    Ok(record)
}
