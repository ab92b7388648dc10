// SPDX-License-Identifier: Apache-2.0
//! Hearth's E2B-compatible control-plane REST API (v1 and v2).
//!
//! Contract: `reference/e2b-protocol.md` §1 — routes, required response keys, the JSON
//! error shape on every failure, `X-Next-Token` pagination. Handlers are thin: they
//! validate and translate, and [`hearth_node::Node`] does the work.

pub mod auth;
pub mod error;
pub mod extract;
pub mod models;
pub mod routes;

use axum::Router;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use error::ApiError;
use hearth_node::Node;
use http::StatusCode;
use routes::{logs, sandboxes, snapshots, templates};

/// What every handler can reach.
#[derive(Debug, Clone)]
pub struct ApiState {
    /// The node that runs sandboxes.
    pub node: Node,
    /// The `domain` reported to SDKs (null: the client's own).
    pub domain: Option<String>,
}

async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn not_found() -> Response {
    ApiError::NotFound("no such route".into()).into_response()
}

async fn method_not_allowed() -> Response {
    let body = serde_json::json!({"code": 405, "message": "method not allowed"});
    (
        StatusCode::METHOD_NOT_ALLOWED,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// The API router (without the sandbox data plane).
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route(
            "/sandboxes",
            post(sandboxes::create_v1).get(sandboxes::list_v1),
        )
        .route(
            "/v2/sandboxes",
            post(sandboxes::create_v2).get(sandboxes::list_v2),
        )
        .route("/sandboxes/metrics", get(sandboxes::metrics_many))
        .route(
            "/sandboxes/{id}",
            get(sandboxes::detail).delete(sandboxes::kill),
        )
        .route("/sandboxes/{id}/timeout", post(sandboxes::set_timeout))
        .route("/sandboxes/{id}/refreshes", post(sandboxes::refresh))
        .route("/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/v2/sandboxes/{id}/connect", post(sandboxes::connect))
        .route("/sandboxes/{id}/resume", post(sandboxes::resume))
        .route("/sandboxes/{id}/pause", post(sandboxes::pause))
        .route("/sandboxes/{id}/metrics", get(sandboxes::metrics))
        .route("/sandboxes/{id}/logs", get(logs::logs_v1))
        .route("/v2/sandboxes/{id}/logs", get(logs::logs_v2))
        .route("/sandboxes/{id}/network", put(sandboxes::update_network))
        .route("/sandboxes/{id}/snapshots", post(snapshots::create))
        .route("/sandboxes/{id}/fork", post(snapshots::fork))
        .route("/snapshots", get(snapshots::list))
        .route("/templates", get(templates::list))
        .route("/templates/aliases/{alias}", get(templates::alias))
        .route("/templates/{id}", delete(snapshots::delete))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_api_key,
        ))
        .with_state(state)
}
