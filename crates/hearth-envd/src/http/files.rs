// SPDX-License-Identifier: Apache-2.0
//! `GET /files`, `POST /files` and `POST /files/compose` (§2.5, §2.7).

use crate::state::Envd;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use std::sync::Arc;

/// `GET /files`: download one file.
pub async fn download(State(_state): State<Arc<Envd>>) -> Response {
    crate::error::EnvdError::Internal("not implemented".into()).into_response()
}

/// `POST /files`: upload one or more files.
pub async fn upload(State(_state): State<Arc<Envd>>) -> Response {
    crate::error::EnvdError::Internal("not implemented".into()).into_response()
}

/// `POST /files/compose`: concatenate files into one and delete the sources.
pub async fn compose(State(_state): State<Arc<Envd>>) -> Response {
    crate::error::EnvdError::Internal("not implemented".into()).into_response()
}
