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
use axum::response::Response;
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

/// Upstream answers a missing or wrong token with a plain 401 JSON body for every
/// endpoint, RPCs included (the SDKs map an integer `code` to the HTTP status).
fn unauthenticated(req: &Request, message: &str) -> Response {
    tracing::info!(path = %req.uri().path(), message, "request refused");
    crate::error::http_error(StatusCode::UNAUTHORIZED, message)
}

/// Connect procedures whose requests and responses are enveloped streams.
const STREAMING_PROCEDURES: &[&str] = &[
    "/process.Process/Start",
    "/process.Process/Connect",
    "/process.Process/StreamInput",
    "/filesystem.Filesystem/WatchDir",
];

/// The axum middleware refusing a Connect call whose content type does not match the
/// procedure's kind (a streaming procedure called as unary or the reverse) with 415,
/// as the Connect protocol specifies.
pub async fn check_content_type(req: Request, next: Next) -> Response {
    let path = req.uri().path();
    let is_rpc =
        path.starts_with("/process.Process/") || path.starts_with("/filesystem.Filesystem/");
    if !is_rpc || req.method() != http::Method::POST {
        return next.run(req).await;
    }
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let streaming = STREAMING_PROCEDURES.contains(&path);
    let mismatch = if streaming {
        ct == "application/json" || ct == "application/proto"
    } else {
        ct.starts_with("application/connect+")
    };
    if !mismatch {
        return next.run(req).await;
    }
    let expected = if streaming {
        "application/connect+json or application/connect+proto"
    } else {
        "application/json or application/proto"
    };
    tracing::info!(path, content_type = %ct, "wrong content type for the procedure");
    let mut resp = crate::error::http_error(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        &format!("{path} expects {expected}, not {ct:?}"),
    );
    if let Ok(v) = HeaderValue::from_str(expected.replace(" or ", ", ").as_str()) {
        resp.headers_mut().insert("accept-post", v);
    }
    resp
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
