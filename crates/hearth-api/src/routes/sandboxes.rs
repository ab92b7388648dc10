// SPDX-License-Identifier: Apache-2.0
//! Sandbox routes: create, list, detail, kill, timeouts, connect, pause, metrics,
//! logs and network updates (v1 and v2 where both exist).

use crate::ApiState;
use crate::error::ApiError;
use crate::extract::JsonBody;
use crate::models::*;
use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use hearth_node::{CreateRequest, EgressPolicy};
use hearth_store::{ListOrder, SandboxFilter};
use hearth_types::SandboxId;
use http::StatusCode;
use std::collections::BTreeMap;
use std::time::Duration;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

const MAX_METADATA_ENTRIES: usize = 256;
const MAX_METADATA_TEXT: usize = 4096;
const MAX_ENV_VARS: usize = 1024;

fn parse_id(id: &str) -> Result<SandboxId, ApiError> {
    // An id that cannot exist is simply not found (the SDK maps 404 to its own
    // not-found exceptions), never a 500.
    SandboxId::parse(id).map_err(|_| ApiError::NotFound(format!("sandbox {id} not found")))
}

fn seconds(v: i64, what: &str) -> Result<Duration, ApiError> {
    u64::try_from(v)
        .ok()
        .filter(|s| *s > 0)
        .map(Duration::from_secs)
        .ok_or_else(|| {
            ApiError::InvalidRequest(format!("{what} must be a positive number of seconds"))
        })
}

fn validate_metadata(m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.len() > MAX_METADATA_ENTRIES {
        return Err(ApiError::InvalidRequest(format!(
            "metadata may have at most {MAX_METADATA_ENTRIES} entries"
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.len() > MAX_METADATA_TEXT || v.len() > MAX_METADATA_TEXT {
            return Err(ApiError::InvalidRequest(format!(
                "metadata keys must be 1..{MAX_METADATA_TEXT} bytes and values at most {MAX_METADATA_TEXT}"
            )));
        }
    }
    Ok(())
}

fn validate_env(m: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if m.len() > MAX_ENV_VARS {
        return Err(ApiError::InvalidRequest(format!(
            "at most {MAX_ENV_VARS} env vars"
        )));
    }
    for (k, v) in m {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(ApiError::InvalidRequest(format!(
                "invalid env var name or value: {k:?}"
            )));
        }
    }
    Ok(())
}

/// Accepts an IPv4 address or CIDR. Sandboxes have no IPv6, and domains are not
/// enforced by Hearth's packet filter: both are refused rather than silently ignored.
fn validate_targets(list: &[String], field: &str) -> Result<(), ApiError> {
    for t in list {
        let (addr, prefix) = t.split_once('/').unwrap_or((t.as_str(), ""));
        let ok = addr.parse::<std::net::Ipv4Addr>().is_ok()
            && (prefix.is_empty() || prefix.parse::<u8>().is_ok_and(|p| p <= 32));
        if !ok {
            return Err(ApiError::InvalidRequest(format!(
                "{field}: {t:?} is not an IPv4 address or CIDR (domain and IPv6 rules are not supported)"
            )));
        }
    }
    Ok(())
}

fn create_request(body: NewSandbox, v2: bool) -> Result<CreateRequest, ApiError> {
    if body.template_id.trim().is_empty() {
        return Err(ApiError::InvalidRequest("templateID is required".into()));
    }
    let timeout = seconds(body.timeout.unwrap_or(if v2 { 300 } else { 15 }), "timeout")?;
    let metadata = body.metadata.unwrap_or_default();
    validate_metadata(&metadata)?;
    let env_vars = body.env_vars.unwrap_or_default();
    validate_env(&env_vars)?;
    let network = body.network.unwrap_or_default();
    let allow_out = network.allow_out.clone().unwrap_or_default();
    let deny_out = network.deny_out.clone().unwrap_or_default();
    validate_targets(&allow_out, "allowOut")?;
    validate_targets(&deny_out, "denyOut")?;
    let lifecycle = body.lifecycle.unwrap_or_default();
    let auto_pause =
        body.auto_pause.unwrap_or(false) || lifecycle.on_timeout.as_deref() == Some("pause");
    let auto_resume = body.auto_resume.map(|a| a.enabled).unwrap_or(false)
        || lifecycle.auto_resume.unwrap_or(false);
    let auto_pause_memory = body.auto_pause_memory.unwrap_or(true);
    if auto_resume && !auto_pause_memory && auto_pause {
        return Err(ApiError::InvalidRequest(
            "autoResume cannot be combined with autoPauseMemory=false".into(),
        ));
    }
    let network_json = serde_json::to_value(&network)
        .ok()
        .filter(|v| v != &serde_json::json!({}));
    Ok(CreateRequest {
        template: body.template_id,
        timeout,
        metadata,
        env_vars,
        auto_pause,
        auto_pause_memory,
        auto_resume,
        allow_internet_access: body.allow_internet_access,
        network: network_json,
        egress: EgressPolicy {
            internet: body.allow_internet_access != Some(false),
            allow_out,
            deny_out,
        },
        restrict_public_traffic: network.allow_public_traffic == Some(false),
        secure: v2 || body.secure.unwrap_or(false),
    })
}

/// `POST /v2/sandboxes`.
pub async fn create_v2(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<NewSandbox>,
) -> Result<Response, ApiError> {
    create(s, body, true).await
}

/// `POST /sandboxes`.
pub async fn create_v1(
    State(s): State<ApiState>,
    JsonBody(body): JsonBody<NewSandbox>,
) -> Result<Response, ApiError> {
    create(s, body, false).await
}

async fn create(s: ApiState, body: NewSandbox, v2: bool) -> Result<Response, ApiError> {
    let req = create_request(body, v2)?;
    let info = s
        .node
        .create(req)
        .await
        .map_err(|e| ApiError::from_node(e, "create"))?;
    Ok((
        StatusCode::CREATED,
        Json(Sandbox::from_info(&info, s.domain.clone())),
    )
        .into_response())
}

/// `GET /sandboxes/{id}`.
pub async fn detail(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let info = s
        .node
        .get(&id)
        .await
        .map_err(|e| ApiError::from_node(e, "get"))?;
    Ok(Json(SandboxDetail::from_info(&info, s.domain.clone())).into_response())
}

/// `DELETE /sandboxes/{id}`.
pub async fn kill(State(s): State<ApiState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    s.node
        .kill(&id)
        .await
        .map_err(|e| ApiError::from_node(e, "kill"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sandboxes/{id}/timeout`.
pub async fn set_timeout(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<serde_json::Value>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let body: TimeoutRequest = serde_json::from_value(body)
        .map_err(|e| ApiError::InvalidRequest(format!("invalid body: {e}")))?;
    let timeout = u64::try_from(body.timeout)
        .map(Duration::from_secs)
        .map_err(|_| ApiError::InvalidRequest("timeout must not be negative".into()))?;
    s.node
        .set_timeout(&id, timeout)
        .await
        .map_err(|e| ApiError::from_node(e, "update"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /sandboxes/{id}/refreshes`: extend only, 0..3600 s, at least 15 s.
pub async fn refresh(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<RefreshRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let d = body.duration.unwrap_or(0);
    if !(0..=3600).contains(&d) {
        return Err(ApiError::InvalidRequest(
            "duration must be between 0 and 3600 seconds".into(),
        ));
    }
    let d = u64::try_from(d.max(15)).unwrap_or(15);
    s.node
        .extend(&id, Duration::from_secs(d))
        .await
        .map_err(|e| ApiError::from_node(e, "refresh"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST /v2/sandboxes/{id}/connect` (and v1 `connect`): 200 if it was running
/// (TTL only extended), 201 if it was resumed.
pub async fn connect(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ConnectRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let timeout = seconds(body.timeout.unwrap_or(300), "timeout")?;
    let (info, resumed) = s
        .node
        .connect(&id, timeout, body.memory.unwrap_or(true), None)
        .await
        .map_err(|e| ApiError::from_node(e, "connect"))?;
    let status = if resumed {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(Sandbox::from_info(&info, s.domain.clone()))).into_response())
}

/// `POST /sandboxes/{id}/resume` (deprecated): resumes a paused sandbox (201); a
/// running one is a conflict, as upstream.
pub async fn resume(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<ConnectRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let timeout = seconds(body.timeout.unwrap_or(15), "timeout")?;
    let (info, resumed) = s
        .node
        .connect(&id, timeout, body.memory.unwrap_or(true), body.auto_pause)
        .await
        .map_err(|e| ApiError::from_node(e, "resume"))?;
    if !resumed {
        return Err(ApiError::Conflict(format!(
            "sandbox {id} is already running"
        )));
    }
    Ok((
        StatusCode::CREATED,
        Json(Sandbox::from_info(&info, s.domain.clone())),
    )
        .into_response())
}

/// `POST /sandboxes/{id}/pause`.
pub async fn pause(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<PauseRequest>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    s.node
        .pause(&id, body.memory.unwrap_or(true))
        .await
        .map_err(|e| ApiError::from_node(e, "pause"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /sandboxes/{id}/metrics?start&end` (unix seconds).
pub async fn metrics(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let q = query_pairs(query.as_deref());
    let num = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .map(|v| {
                v.parse::<i64>()
                    .map_err(|_| ApiError::InvalidRequest(format!("{k} must be unix seconds")))
            })
            .transpose()
    };
    let samples = s
        .node
        .metrics(&id, num("start")?, num("end")?)
        .await
        .map_err(|e| ApiError::from_node(e, "read metrics of"))?;
    Ok(Json(samples.iter().map(SandboxMetric::from).collect::<Vec<_>>()).into_response())
}

/// `GET /sandboxes/metrics?sandbox_ids=a,b`.
pub async fn metrics_many(
    State(s): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let q = query_pairs(query.as_deref());
    let ids: Vec<&str> = q
        .get("sandbox_ids")
        .map(|v| v.split(',').filter(|x| !x.is_empty()).collect())
        .unwrap_or_default();
    if ids.len() > 100 {
        return Err(ApiError::InvalidRequest("at most 100 sandbox ids".into()));
    }
    let mut out = serde_json::Map::new();
    for id in ids {
        let Ok(sid) = SandboxId::parse(id) else {
            continue;
        };
        if let Ok(samples) = s.node.metrics(&sid, None, None).await
            && let Some(last) = samples.last()
        {
            out.insert(
                id.to_owned(),
                serde_json::to_value(SandboxMetric::from(last)).unwrap_or_default(),
            );
        }
    }
    Ok(Json(serde_json::json!({ "sandboxes": out })).into_response())
}

/// Parses a query string into a map (last value wins).
pub(crate) fn query_pairs(query: Option<&str>) -> BTreeMap<String, String> {
    form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn list_filter(query: Option<&str>, v2: bool) -> Result<SandboxFilter, ApiError> {
    let q = query_pairs(query);
    let mut filter = SandboxFilter {
        limit: 100,
        ..Default::default()
    };
    if let Some(m) = q.get("metadata") {
        // The SDK URL-encodes each key and value, joins them as a query string and
        // URL-encodes that again as the parameter value.
        for (k, v) in form_urlencoded::parse(m.as_bytes()) {
            filter.metadata.insert(k.into_owned(), v.into_owned());
        }
    }
    if !v2 {
        filter.states = vec!["running".into()];
        filter.limit = 1000;
        return Ok(filter);
    }
    if let Some(states) = q.get("state") {
        for st in states.split(',').filter(|s| !s.is_empty()) {
            if st != "running" && st != "paused" {
                return Err(ApiError::InvalidRequest(format!("invalid state {st:?}")));
            }
            filter.states.push(st.to_owned());
        }
    }
    filter.order = match q.get("order").map(String::as_str) {
        None | Some("desc") => ListOrder::Desc,
        Some("asc") => ListOrder::Asc,
        Some(o) => return Err(ApiError::InvalidRequest(format!("invalid order {o:?}"))),
    };
    if let Some(t) = q.get("startedAfter") {
        filter.started_after = Some(OffsetDateTime::parse(t, &Rfc3339).map_err(|_| {
            ApiError::InvalidRequest(format!("startedAfter {t:?} is not RFC 3339"))
        })?);
    }
    filter.template = q.get("template").filter(|t| !t.is_empty()).cloned();
    if let Some(l) = q.get("limit") {
        filter.limit = l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::InvalidRequest("limit must be between 1 and 100".into()))?;
    }
    filter.cursor = q.get("nextToken").filter(|t| !t.is_empty()).cloned();
    Ok(filter)
}

/// `GET /v2/sandboxes`.
pub async fn list_v2(
    State(s): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    list(s, query, true)
}

/// `GET /sandboxes` (running only, deprecated).
pub async fn list_v1(
    State(s): State<ApiState>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    list(s, query, false)
}

fn list(s: ApiState, query: Option<String>, v2: bool) -> Result<Response, ApiError> {
    let filter = list_filter(query.as_deref(), v2)?;
    let page = s.node.list(&filter).map_err(|e| match e {
        hearth_node::NodeError::Store(hearth_store::StoreError::Corrupt(m)) => {
            ApiError::InvalidRequest(m)
        }
        other => ApiError::from_node(other, "list"),
    })?;
    let items: Vec<ListedSandbox> = page.items.iter().map(ListedSandbox::from).collect();
    let mut resp = Json(items).into_response();
    if let Some(next) = page.next_cursor
        && let Ok(v) = http::HeaderValue::from_str(&next)
    {
        resp.headers_mut().insert("x-next-token", v);
    }
    if let Ok(v) = http::HeaderValue::from_str(&s.node.running_count().to_string()) {
        resp.headers_mut().insert("x-total-running", v);
    }
    Ok(resp)
}

/// `PUT /sandboxes/{id}/network`: replaces the egress rules.
pub async fn update_network(
    State(s): State<ApiState>,
    Path(id): Path<String>,
    JsonBody(body): JsonBody<NetworkUpdate>,
) -> Result<Response, ApiError> {
    let id = parse_id(&id)?;
    let allow_out = body.allow_out.unwrap_or_default();
    let deny_out = body.deny_out.unwrap_or_default();
    validate_targets(&allow_out, "allowOut")?;
    validate_targets(&deny_out, "denyOut")?;
    s.node
        .update_network(&id, allow_out, deny_out)
        .await
        .map_err(|e| ApiError::from_node(e, "update the network of"))?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: serde_json::Value) -> NewSandbox {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn v1_and_v2_defaults_differ() {
        let v2 = create_request(body(serde_json::json!({"templateID":"base"})), true).unwrap();
        assert_eq!(v2.timeout, Duration::from_secs(300));
        assert!(v2.secure);
        let v1 = create_request(body(serde_json::json!({"templateID":"base"})), false).unwrap();
        assert_eq!(v1.timeout, Duration::from_secs(15));
        assert!(!v1.secure);
    }

    #[test]
    fn unknown_fields_are_ignored_and_bad_values_refused() {
        assert!(
            create_request(
                body(serde_json::json!({"templateID":"base","newField":{"x":1}})),
                true
            )
            .is_ok()
        );
        assert!(
            create_request(
                body(serde_json::json!({"templateID":"base","timeout":0})),
                true
            )
            .is_err()
        );
        assert!(
            create_request(
                body(serde_json::json!({"templateID":"base","timeout":-5})),
                true
            )
            .is_err()
        );
        assert!(
            create_request(
                body(serde_json::json!({"templateID":"base","envVars":{"A=B":"x"}})),
                true
            )
            .is_err()
        );
        assert!(
            create_request(
                body(
                    serde_json::json!({"templateID":"base","network":{"allowOut":["example.com"]}})
                ),
                true
            )
            .is_err()
        );
    }

    #[test]
    fn internet_flag_maps_to_egress_policy() {
        let r = create_request(
            body(serde_json::json!({"templateID":"base","allow_internet_access":false})),
            true,
        )
        .unwrap();
        assert!(!r.egress.internet);
        assert_eq!(r.allow_internet_access, Some(false));
    }

    #[test]
    fn metadata_filter_is_doubly_encoded() {
        // What the Python SDK sends for {"a b": "c&d"}.
        let inner = form_urlencoded::Serializer::new(String::new())
            .append_pair("a b", "c&d")
            .finish();
        let outer = form_urlencoded::Serializer::new(String::new())
            .append_pair("metadata", &inner)
            .finish();
        let f = list_filter(Some(&outer), true).unwrap();
        assert_eq!(f.metadata.get("a b").map(String::as_str), Some("c&d"));
    }

    #[test]
    fn list_query_validation() {
        assert!(list_filter(Some("state=running,paused&order=asc&limit=5"), true).is_ok());
        assert!(list_filter(Some("limit=0"), true).is_err());
        assert!(list_filter(Some("limit=101"), true).is_err());
        assert!(list_filter(Some("state=dead"), true).is_err());
        assert!(list_filter(Some("startedAfter=yesterday"), true).is_err());
    }
}
