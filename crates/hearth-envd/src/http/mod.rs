// SPDX-License-Identifier: Apache-2.0
//! envd's plain HTTP endpoints (§2.5): `/health`, `/envs`, `/metrics`, `/init`,
//! `/files` and `/files/compose`.

pub mod compose;
pub mod download;
pub mod files;
pub mod init;
pub mod metrics;
pub mod pipe;
pub mod signature;
pub mod upload;

use crate::state::Envd;
use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http::{StatusCode, header};
use std::sync::Arc;

/// The plain endpoints, to be merged with the Connect services.
pub fn routes() -> Router<Arc<Envd>> {
    Router::new()
        .route("/health", get(health))
        .route("/envs", get(envs))
        .route("/metrics", get(metrics::metrics))
        .route("/init", post(init::init))
        .route("/files", get(files::download).post(files::upload))
        .route("/files/compose", post(files::compose))
}

async fn health() -> StatusCode {
    StatusCode::NO_CONTENT
}

async fn envs(State(state): State<Arc<Envd>>) -> Response {
    let body = serde_json::to_string(&state.env_vars()).unwrap_or_else(|_| "{}".to_owned());
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}
