// SPDX-License-Identifier: Apache-2.0
//! A JSON body extractor whose every failure is an [`ApiError`] in E2B's shape.

use crate::error::ApiError;
use axum::extract::{FromRequest, Request};
use http_body_util::BodyExt;
use serde::de::DeserializeOwned;

/// Largest request body the API accepts.
pub const MAX_BODY: usize = 1 << 20;

/// A JSON request body; an empty body is `{}` (several endpoints make it optional).
#[derive(Debug)]
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let body = http_body_util::Limited::new(req.into_body(), MAX_BODY);
        let bytes = body
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::TooLarge { limit: MAX_BODY }
                } else {
                    ApiError::InvalidRequest(format!("failed to read request body: {e}"))
                }
            })?
            .to_bytes();
        let text: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(text)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidRequest(format!("invalid JSON body: {e}")))
    }
}
