// SPDX-License-Identifier: Apache-2.0
//! Sandbox logs: envd's own log (process starts and exits, requests, errors).
//!
//! The log file is written by envd's stderr into the sandbox's state directory and
//! read here; lines start with an RFC 3339 timestamp and a level (tracing's format).

use crate::ApiState;
use crate::error::ApiError;
use crate::routes::sandboxes::query_pairs;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use hearth_types::SandboxId;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

struct Line {
    at: OffsetDateTime,
    level: &'static str,
    message: String,
}

fn parse_line(line: &str, fallback: OffsetDateTime) -> Line {
    let mut parts = line.splitn(3, char::is_whitespace);
    let ts = parts.next().unwrap_or_default();
    let (at, rest) = match OffsetDateTime::parse(ts, &Rfc3339) {
        Ok(t) => (t, line[ts.len()..].trim_start()),
        Err(_) => (fallback, line),
    };
    let (level, message) = match rest.split_once(char::is_whitespace) {
        Some((lvl, msg)) => match lvl {
            "ERROR" => ("error", msg.trim_start()),
            "WARN" => ("warn", msg.trim_start()),
            "INFO" => ("info", msg.trim_start()),
            "DEBUG" | "TRACE" => ("debug", msg.trim_start()),
            _ => ("info", rest),
        },
        None => ("info", rest),
    };
    Line {
        at,
        level,
        message: message.to_owned(),
    }
}

fn read_lines(s: &ApiState, id: &SandboxId) -> Result<Vec<Line>, ApiError> {
    let path = s.node.log_path(id);
    let text = match std::fs::read(&path) {
        Ok(b) => String::from_utf8_lossy(&b).into_owned(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => {
            return Err(ApiError::Internal {
                public: "failed to read sandbox logs".into(),
                error_code: "internal_server_error",
                detail: format!("{}: {e}", path.display()),
            });
        }
    };
    let mut last = OffsetDateTime::UNIX_EPOCH;
    Ok(text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let line = parse_line(l, last);
            last = line.at;
            line
        })
        .collect())
}

async fn ensure_exists(s: &ApiState, id: &str) -> Result<SandboxId, ApiError> {
    let sid =
        SandboxId::parse(id).map_err(|_| ApiError::NotFound(format!("sandbox {id} not found")))?;
    s.node
        .get(&sid)
        .await
        .map_err(|e| ApiError::from_node(e, "read logs of"))?;
    Ok(sid)
}

fn ms(t: OffsetDateTime) -> i128 {
    t.unix_timestamp_nanos() / 1_000_000
}

/// `GET /sandboxes/{id}/logs?start&limit` (deprecated shape).
pub async fn logs_v1(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let id = ensure_exists(&s, &id).await?;
    let q = query_pairs(q.as_deref());
    let start: i128 = q.get("start").and_then(|v| v.parse().ok()).unwrap_or(0);
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000)
        .min(1000);
    let lines: Vec<Line> = read_lines(&s, &id)?
        .into_iter()
        .filter(|l| ms(l.at) >= start)
        .take(limit)
        .collect();
    let logs: Vec<_> = lines
        .iter()
        .map(|l| serde_json::json!({"timestamp": crate::models::rfc3339(l.at), "line": l.message}))
        .collect();
    let entries: Vec<_> = lines
        .iter()
        .map(|l| serde_json::json!({"timestamp": crate::models::rfc3339(l.at), "level": l.level, "message": l.message, "fields": {}}))
        .collect();
    Ok(Json(serde_json::json!({"logs": logs, "logEntries": entries})).into_response())
}

/// `GET /v2/sandboxes/{id}/logs?cursor&limit&direction&level&search`.
pub async fn logs_v2(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, ApiError> {
    let id = ensure_exists(&s, &id).await?;
    let q = query_pairs(q.as_deref());
    let limit: usize = q
        .get("limit")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let backward = q.get("direction").map(String::as_str) == Some("backward");
    let cursor: Option<i128> = q.get("cursor").and_then(|v| v.parse().ok());
    let min_level = match q.get("level").map(String::as_str) {
        Some("error") => 3,
        Some("warn") => 2,
        Some("info") => 1,
        _ => 0,
    };
    let rank = |l: &str| match l {
        "error" => 3,
        "warn" => 2,
        "info" => 1,
        _ => 0,
    };
    let search = q.get("search").cloned().unwrap_or_default();
    let mut lines: Vec<Line> = read_lines(&s, &id)?
        .into_iter()
        .filter(|l| rank(l.level) >= min_level)
        .filter(|l| search.is_empty() || l.message.contains(&search))
        .filter(|l| match cursor {
            Some(c) if backward => ms(l.at) <= c,
            Some(c) => ms(l.at) >= c,
            None => true,
        })
        .collect();
    if backward {
        lines.reverse();
    }
    let logs: Vec<_> = lines
        .iter()
        .take(limit)
        .map(|l| serde_json::json!({"timestamp": crate::models::rfc3339(l.at), "level": l.level, "message": l.message, "fields": {}}))
        .collect();
    Ok(Json(serde_json::json!({ "logs": logs })).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tracing_lines() {
        let l = parse_line(
            "2026-11-28T22:12:27.123456Z  INFO hearth_envd: envd listening",
            OffsetDateTime::UNIX_EPOCH,
        );
        assert_eq!(l.level, "info");
        assert_eq!(l.message, "hearth_envd: envd listening");
        assert_eq!(l.at.year(), 2026);
        let l = parse_line("plain text", OffsetDateTime::UNIX_EPOCH);
        assert_eq!(l.message, "plain text");
    }
}
