// SPDX-License-Identifier: Apache-2.0
//! `GET /metrics`: the sandbox's CPU, memory and disk usage.

use crate::state::Envd;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `GET /metrics`.
pub async fn metrics(State(_state): State<Arc<Envd>>) -> Response {
    crate::error::EnvdError::Internal("not implemented".into()).into_response()
}
