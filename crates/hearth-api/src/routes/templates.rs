// SPDX-License-Identifier: Apache-2.0
//! Template lookups.

use crate::ApiState;
use crate::error::ApiError;
use axum::Json;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};

/// `GET /templates/aliases/{alias}`: 200 `{"templateID","public"}` or 404.
pub async fn alias(
    State(s): State<ApiState>,
    Path(alias): Path<String>,
) -> Result<Response, ApiError> {
    let t = s
        .node
        .store()
        .template(&alias)
        .map_err(|e| ApiError::from_node(e.into(), "look up"))?
        .ok_or_else(|| ApiError::NotFound(format!("template {alias} not found")))?;
    Ok(Json(serde_json::json!({ "templateID": t.id, "public": true })).into_response())
}

/// `GET /templates`: every template (not snapshots).
pub async fn list(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let templates = s
        .node
        .store()
        .list_templates(Some(hearth_store::TemplateKind::Template))
        .map_err(|e| ApiError::from_node(e.into(), "list"))?;
    let items: Vec<serde_json::Value> = templates
        .iter()
        .map(|t| {
            serde_json::json!({
                "templateID": t.id,
                "buildID": t.build_id,
                "aliases": t.names,
                "names": t.names,
                "cpuCount": t.cpu_count,
                "memoryMB": t.memory_mb,
                "diskSizeMB": t.disk_mb,
                "envdVersion": t.envd_version,
                "public": true,
                "createdAt": crate::models::rfc3339(t.created_at),
                "updatedAt": crate::models::rfc3339(t.created_at),
                "buildCount": 1,
                "spawnCount": 0,
                "buildStatus": "ready",
            })
        })
        .collect();
    Ok(Json(items).into_response())
}
