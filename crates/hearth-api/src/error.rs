// SPDX-License-Identifier: Apache-2.0
//! The API's one error type and its JSON shape.
//!
//! Every non-2xx answer is `{"code": <status>, "message": "…"}` (plus `error_code`
//! where E2B defines one): the Python SDK parses every error body as JSON and crashes
//! on anything else. Failures that must not be replayed (a create that failed after
//! doing work) carry `Should-Retry: false`, because the SDKs otherwise retry
//! 502/503/504 even for POSTs. Internal details are logged, not sent.

use axum::response::{IntoResponse, Response};
use hearth_node::NodeError;
use hearth_types::ErrorChain;
use http::{HeaderValue, StatusCode};

/// An API failure, by what the client can do about it.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Missing or invalid API key.
    #[error("{0}")]
    Unauthenticated(String),
    /// No such thing.
    #[error("{0}")]
    NotFound(String),
    /// The request is invalid.
    #[error("{0}")]
    InvalidRequest(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// No capacity right now.
    #[error("{0}")]
    Unavailable(String),
    /// This Hearth (runtime) cannot do that.
    #[error("{0}")]
    NotImplemented(String),
    /// The body is larger than allowed.
    #[error("request body too large (limit {limit} bytes)")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Something failed on our side.
    #[error("{public}")]
    Internal {
        /// What the client is told.
        public: String,
        /// E2B's machine-readable code.
        error_code: &'static str,
        /// What is logged.
        detail: String,
    },
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::InvalidRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Internal { .. } => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Maps a node failure; `op` names the operation for the public message.
    pub fn from_node(err: NodeError, op: &str) -> Self {
        match err {
            NodeError::NotFound { kind, id } => Self::NotFound(format!("{kind} {id} not found")),
            NodeError::InvalidRequest(m) => Self::InvalidRequest(m),
            NodeError::Conflict(m) => Self::Conflict(m),
            NodeError::Capacity(m) => Self::Unavailable(m),
            NodeError::ShuttingDown => Self::Unavailable("hearth is shutting down".into()),
            NodeError::Runtime(e @ hearth_runtime::RuntimeError::Unsupported { .. }) => {
                Self::NotImplemented(e.to_string())
            }
            other => {
                let detail = ErrorChain(&other).to_string();
                let error_code = match op {
                    "create" => "sandbox_create_failed",
                    _ => "internal_server_error",
                };
                Self::Internal {
                    // The chain is the sandbox owner's own diagnostics (which template
                    // failed, why envd refused): useful, and holds no other tenant's data.
                    public: format!("failed to {op} sandbox: {detail}"),
                    error_code,
                    detail,
                }
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let mut body = serde_json::json!({ "code": status.as_u16(), "message": self.to_string() });
        if let Self::Internal {
            error_code, detail, ..
        } = &self
        {
            tracing::error!(error = %detail, "request failed");
            body["error_code"] = serde_json::Value::from(*error_code);
        }
        let mut resp = (
            status,
            [(http::header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        if matches!(
            self,
            Self::Internal { .. }
                | Self::Unavailable(_)
                | Self::Conflict(_)
                | Self::NotImplemented(_)
        ) {
            resp.headers_mut()
                .insert("should-retry", HeaderValue::from_static("false"));
        }
        resp
    }
}
