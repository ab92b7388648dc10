// SPDX-License-Identifier: Apache-2.0
//! The one error type of envd, and the table that gives each error both its HTTP
//! status (plain endpoints) and its Connect code (RPCs).
//!
//! SDK logic depends on these codes: `not_found` (kill → false, exists → false),
//! `already_exists` (make_dir → false), `unauthenticated`, and HTTP 507 for a full
//! disk (NotEnoughSpaceException). Errors carry their `#[source]`; the message sent to
//! the client is the whole chain, because it is the sandbox's own owner who reads it.

use axum::response::{IntoResponse, Response};
use connectrpc::{ConnectError, ErrorCode};
use http::StatusCode;
use std::io;

/// Everything that can go wrong serving one request.
#[derive(Debug, thiserror::Error)]
pub enum EnvdError {
    /// The request is malformed or names something of the wrong kind.
    #[error("{0}")]
    InvalidArgument(String),
    /// The named process, watcher, file or directory does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The thing to create exists already.
    #[error("{0}")]
    AlreadyExists(String),
    /// The caller may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// No valid access token, signature or user.
    #[error("{0}")]
    Unauthenticated(String),
    /// A limit was hit (too many watchers, body too large, …).
    #[error("{0}")]
    ResourceExhausted(String),
    /// The disk (or the user's quota) is full.
    #[error("{context}: no space left on device")]
    NoSpace {
        /// What was being written.
        context: String,
    },
    /// The request cannot be served in the current state.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The client asked for an encoding envd cannot produce.
    #[error("{0}")]
    NotAcceptable(String),
    /// The deadline passed.
    #[error("{0}")]
    DeadlineExceeded(String),
    /// A filesystem or process operation failed; the code follows the errno.
    #[error("{context}")]
    Io {
        /// What envd was doing, with the path involved.
        context: String,
        /// The underlying failure.
        #[source]
        err: io::Error,
    },
    /// A bug or an unexpected host condition.
    #[error("{0}")]
    Internal(String),
}

impl EnvdError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, err: io::Error) -> Self {
        if matches!(err.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
            return Self::NoSpace {
                context: context.into(),
            };
        }
        Self::Io {
            context: context.into(),
            err,
        }
    }

    /// The Connect code for this error.
    pub fn connect_code(&self) -> ErrorCode {
        match self {
            Self::InvalidArgument(_) => ErrorCode::InvalidArgument,
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) => ErrorCode::AlreadyExists,
            Self::PermissionDenied(_) => ErrorCode::PermissionDenied,
            Self::Unauthenticated(_) => ErrorCode::Unauthenticated,
            Self::ResourceExhausted(_) | Self::NoSpace { .. } => ErrorCode::ResourceExhausted,
            Self::FailedPrecondition(_) => ErrorCode::FailedPrecondition,
            Self::NotAcceptable(_) => ErrorCode::InvalidArgument,
            Self::DeadlineExceeded(_) => ErrorCode::DeadlineExceeded,
            Self::Io { err, .. } => match err.raw_os_error() {
                Some(libc::ENOENT) => ErrorCode::NotFound,
                Some(libc::EEXIST) | Some(libc::ENOTEMPTY) => ErrorCode::AlreadyExists,
                Some(libc::EACCES) | Some(libc::EPERM) | Some(libc::EROFS) => {
                    ErrorCode::PermissionDenied
                }
                Some(libc::ENOTDIR)
                | Some(libc::EISDIR)
                | Some(libc::EINVAL)
                | Some(libc::ENAMETOOLONG)
                | Some(libc::ELOOP)
                | Some(libc::EXDEV) => ErrorCode::InvalidArgument,
                Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOMEM) => {
                    ErrorCode::ResourceExhausted
                }
                _ => ErrorCode::Internal,
            },
            Self::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The HTTP status for this error on the plain endpoints.
    pub fn http_status(&self) -> StatusCode {
        match self {
            Self::NoSpace { .. } => StatusCode::INSUFFICIENT_STORAGE,
            Self::NotAcceptable(_) => StatusCode::NOT_ACCEPTABLE,
            Self::ResourceExhausted(_) => StatusCode::PAYLOAD_TOO_LARGE,
            other => match other.connect_code() {
                ErrorCode::InvalidArgument | ErrorCode::FailedPrecondition => {
                    StatusCode::BAD_REQUEST
                }
                ErrorCode::NotFound => StatusCode::NOT_FOUND,
                ErrorCode::AlreadyExists => StatusCode::CONFLICT,
                ErrorCode::PermissionDenied => StatusCode::FORBIDDEN,
                ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
                ErrorCode::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
                _ => StatusCode::INTERNAL_SERVER_ERROR,
            },
        }
    }

    /// The message for the client: this error and all its sources.
    pub fn client_message(&self) -> String {
        hearth_error_chain(self)
    }

    /// Converts to a Connect error (for RPC handlers).
    pub fn to_connect(&self) -> ConnectError {
        ConnectError::new(self.connect_code(), self.client_message())
    }

    fn log(&self) {
        if self.connect_code() == ErrorCode::Internal {
            tracing::error!(error = %self.client_message(), "request failed");
        } else {
            tracing::info!(error = %self.client_message(), code = self.connect_code().as_str(), "request refused");
        }
    }
}

fn hearth_error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl From<EnvdError> for ConnectError {
    fn from(err: EnvdError) -> Self {
        err.log();
        err.to_connect()
    }
}

/// Plain endpoints answer errors as JSON `{"code": <status>, "message": "…"}`.
impl IntoResponse for EnvdError {
    fn into_response(self) -> Response {
        self.log();
        let status = self.http_status();
        http_error(status, &self.client_message())
    }
}

/// A plain-endpoint JSON error response.
pub fn http_error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "code": status.as_u16(), "message": message });
    (
        status,
        [(http::header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn io_errors_map_by_errno() {
        let e = EnvdError::io("stat /x", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(e.connect_code(), ErrorCode::NotFound);
        assert_eq!(e.http_status(), StatusCode::NOT_FOUND);
        let e = EnvdError::io("write /x", io::Error::from_raw_os_error(libc::ENOSPC));
        assert_eq!(e.http_status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(matches!(e, EnvdError::NoSpace { .. }));
    }

    #[test]
    fn client_message_carries_the_cause() {
        let e = EnvdError::io("stat /x", io::Error::from_raw_os_error(libc::EACCES));
        assert!(
            e.client_message().starts_with("stat /x: "),
            "{}",
            e.client_message()
        );
    }
}
