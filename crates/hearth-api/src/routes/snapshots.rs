// SPDX-License-Identifier: Apache-2.0
//! Snapshots (templates made from sandboxes) and forks.

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::models::{ForkRequest, Sandbox, SnapshotInfo, SnapshotRequest};
use crate::routes::sandboxes::query_pairs;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use hearth_types::SandboxId;
use http::StatusCode;
use std::time::Duration;

fn parse_id(id: &str) -> Result<SandboxId, ApiError> {
    SandboxId::parse(id).map_err(|_| ApiError::NotFound(format!("sandbox {id} not found")))
}

/// `POST /sandboxes/{id}/snapshots` → 201 `SnapshotInfo`.
pub async fn create(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<SnapshotRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    if let Some(name) = &body.name
        && (name.is_empty()
            || name.len() > 128
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b)))
    {
        return Err(ApiError::InvalidRequest(
            "snapshot name must be 1-128 characters of [a-z0-9._-]".into(),
        ));
    }
    let t = s
        .node
        .snapshot(&id, body.name.clone(), body.memory.unwrap_or(true))
        .await
        .map_err(|e| ApiError::from_node(e, "snapshot"))?;
    let info = SnapshotInfo {
        snapshot_id: t.id.clone(),
        names: t.names.clone(),
    };
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// `GET /snapshots?sandboxID&name&limit&nextToken`.
pub async fn list(State(s): State<ApiState>, RawQuery(q): RawQuery) -> Result<Response, ApiError> {
    let q = query_pairs(q.as_deref());
    let limit = match q.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::InvalidRequest("limit must be between 1 and 100".into()))?,
        None => 100,
    };
    let mut all = s
        .node
        .store()
        .list_templates(Some(hearth_store::TemplateKind::Snapshot))
        .map_err(|e| ApiError::from_node(e.into(), "list"))?;
    all.retain(|t| {
        q.get("sandboxID")
            .is_none_or(|sid| t.source_sandbox.as_deref() == Some(sid.as_str()))
    });
    all.retain(|t| {
        q.get("name")
            .is_none_or(|n| t.names.iter().any(|x| x == n) || &t.id == n)
    });
    // Newest first; the cursor is the id of the last item of the previous page.
    all.reverse();
    let start = match q.get("nextToken").filter(|t| !t.is_empty()) {
        Some(tok) => all
            .iter()
            .position(|t| &t.id == tok)
            .map(|p| p + 1)
            .ok_or_else(|| ApiError::InvalidRequest(format!("invalid nextToken {tok:?}")))?,
        None => 0,
    };
    let page: Vec<_> = all.iter().skip(start).take(limit).collect();
    let more = all.len() > start + page.len();
    let body: Vec<SnapshotInfo> = page
        .iter()
        .map(|t| SnapshotInfo {
            snapshot_id: t.id.clone(),
            names: t.names.clone(),
        })
        .collect();
    let mut resp = Json(body).into_response();
    if more
        && let Some(last) = page.last()
        && let Ok(v) = http::HeaderValue::from_str(&last.id)
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    Ok(resp)
}

/// `DELETE /templates/{id}`: deletes a snapshot (snapshots are templates).
pub async fn delete(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    s.node
        .delete_template(&id)
        .await
        .map_err(|e| ApiError::from_node(e, "delete"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sandboxes/{id}/fork` → 201 `[{"sandbox":…}|{"error":…}]`.
pub async fn fork(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ForkRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let count = body.count.unwrap_or(1);
    if !(1..=100).contains(&count) {
        return Err(ApiError::InvalidRequest(
            "count must be between 1 and 100".into(),
        ));
    }
    let timeout = body.timeout.unwrap_or(15);
    let timeout = u64::try_from(timeout)
        .ok()
        .filter(|t| *t > 0)
        .ok_or_else(|| {
            ApiError::InvalidRequest("timeout must be a positive number of seconds".into())
        })?;
    let results = s
        .node
        .fork(
            &id,
            usize::try_from(count).unwrap_or(1),
            Duration::from_secs(timeout),
        )
        .await
        .map_err(|e| ApiError::from_node(e, "fork"))?;
    let items: Vec<serde_json::Value> = results
        .into_iter()
        .map(|r| match r {
            Ok(info) => {
                serde_json::json!({ "sandbox": Sandbox::from_info(&info, s.domain.clone()) })
            }
            Err(e) => {
                let e = ApiError::from_node(e, "fork");
                serde_json::json!({ "error": { "code": 500, "message": e.to_string() } })
            }
        })
        .collect();
    Ok((StatusCode::CREATED, Json(items)).into_response())
}
