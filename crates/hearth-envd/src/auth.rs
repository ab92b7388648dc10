// SPDX-License-Identifier: Apache-2.0
//! Access-token authentication for every endpoint but `/health`.
//!
//! Once `/init` (or `--access-token`) sets a token, each request must carry it in
//! `X-Access-Token`. The one exception is `/files` with a `signature` query parameter
//! (signed download/upload URLs, §2.7): the middleware lets it through marked with
//! [`SignatureRequired`], and the handler verifies the signature against the path,
//! operation and user it serves. Failures use the caller's protocol's error shape.

use crate::state::Envd;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{BufMut, Bytes, BytesMut};
use connectrpc::ConnectError;
use http::{HeaderValue, StatusCode, header};
use std::sync::Arc;

/// Upstream envd's text for a missing or wrong token.
const UNAUTHORIZED: &str =
    "unauthorized access, please provide a valid access token or method signing if supported";

/// Request extension: the request is authorised only if its URL signature verifies.
#[derive(Debug, Clone)]
pub struct SignatureRequired {
    /// The token the signature must have been made with.
    pub token: String,
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The axum middleware enforcing the access token.
pub async fn require_token(
    State(state): State<Arc<Envd>>,
    mut req: Request,
    next: Next,
) -> Response {
    if req.uri().path() == "/health" {
        return next.run(req).await;
    }
    let Some(token) = state.access_token() else {
        return next.run(req).await;
    };
    match req.headers().get("x-access-token") {
        Some(given) if constant_time_eq(given.as_bytes(), token.as_bytes()) => next.run(req).await,
        Some(_) => unauthenticated(&req, UNAUTHORIZED),
        None => {
            let signed = req.uri().path() == "/files"
                && req
                    .uri()
                    .query()
                    .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("signature=")));
            if signed {
                req.extensions_mut().insert(SignatureRequired { token });
                next.run(req).await
            } else {
                unauthenticated(&req, UNAUTHORIZED)
            }
        }
    }
}

fn unauthenticated(req: &Request, message: &str) -> Response {
    tracing::info!(path = %req.uri().path(), message, "request refused");
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    connect_or_http_error(content_type, ConnectError::unauthenticated(message))
}

/// Renders `err` in the error shape of the request's protocol: a Connect end-of-stream
/// frame for streaming content types, a Connect JSON error for unary RPC content types,
/// and E2B's `{"code":<status>,"message":…}` for everything else.
pub fn connect_or_http_error(content_type: &str, err: ConnectError) -> Response {
    let ct = content_type.split(';').next().unwrap_or_default().trim();
    if ct.starts_with("application/connect+") {
        let mut frame = BytesMut::new();
        let payload = serde_json::json!({
            "error": { "code": err.code.as_str(), "message": err.message.clone().unwrap_or_default() }
        })
        .to_string();
        frame.put_u8(0x02);
        frame.put_u32(u32::try_from(payload.len()).unwrap_or(u32::MAX));
        frame.put_slice(payload.as_bytes());
        let mut resp = (StatusCode::OK, Bytes::from(frame)).into_response();
        if let Ok(v) = HeaderValue::from_str(ct) {
            resp.headers_mut().insert(header::CONTENT_TYPE, v);
        }
        resp
    } else if ct == "application/json" || ct == "application/proto" {
        let mut resp = (err.http_status(), err.to_json()).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    } else {
        crate::error::http_error(
            err.http_status(),
            err.message.as_deref().unwrap_or_default(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_matches_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
