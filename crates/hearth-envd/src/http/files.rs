// SPDX-License-Identifier: Apache-2.0
//! `GET /files`, `POST /files` and `POST /files/compose` (§2.5, §2.7): what they share.
//!
//! 1. The query (`path`, `username`, `signature`, `signature_expiration`) is parsed
//!    percent-decoded; a malformed expiration is `400`.
//! 2. When the auth middleware marked the request [`SignatureRequired`] (a token is
//!    set and no `X-Access-Token` came), the URL signature must verify for the
//!    operation, else `401`.
//! 3. The user is `username`, else the `Authorization: Basic` user, else the default
//!    user; an unknown user is `401`.
//!
//! Errors are E2B's `{"code":<status>,"message":…}`; see [`crate::error`].

use crate::auth::SignatureRequired;
use crate::error::EnvdError;
use crate::http::signature::{self, Operation};
use crate::state::Envd;
use crate::users::User;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// The query parameters of `/files`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct FilesQuery {
    /// File path as the client sent it (unresolved).
    pub path: Option<String>,
    /// User to act as.
    pub username: Option<String>,
    /// URL signature.
    pub signature: Option<String>,
    /// Signature expiry, unix seconds.
    pub signature_expiration: Option<i64>,
}

impl FilesQuery {
    /// Parses a raw query string; the first occurrence of a parameter wins.
    pub fn parse(query: Option<&str>) -> Result<Self, EnvdError> {
        let mut q = Self::default();
        let mut expiration = None;
        for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            let slot = match key.as_ref() {
                "path" => &mut q.path,
                "username" => &mut q.username,
                "signature" => &mut q.signature,
                "signature_expiration" => &mut expiration,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        if let Some(exp) = expiration {
            q.signature_expiration = Some(exp.parse().map_err(|_| {
                EnvdError::InvalidArgument(format!(
                    "invalid signature_expiration '{exp}': expected unix seconds"
                ))
            })?);
        }
        Ok(q)
    }
}

/// Verifies a signed URL if required, then picks the request's user.
pub fn authorize(
    state: &Envd,
    parts: &http::request::Parts,
    query: &FilesQuery,
    op: Operation,
) -> Result<User, EnvdError> {
    if let Some(required) = parts.extensions.get::<SignatureRequired>() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        signature::verify(
            &required.token,
            query.signature.as_deref(),
            query.path.as_deref().unwrap_or_default(),
            op,
            query.username.as_deref().unwrap_or_default(),
            query.signature_expiration,
            now,
        )?;
    }
    match query.username.as_deref().filter(|u| !u.is_empty()) {
        Some(name) => state.users.lookup(name),
        None => state.user_from_headers(&parts.headers),
    }
}

/// One written file in the `POST /files` and `/files/compose` responses.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct WriteEntry {
    /// Absolute path.
    pub path: String,
    /// Base name.
    pub name: String,
    /// Always `"file"`.
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The `user.e2b.*` metadata now on the file, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl WriteEntry {
    /// The entry for a file at `path` with `metadata`.
    pub fn file(path: &std::path::Path, metadata: BTreeMap<String, String>) -> Self {
        Self {
            path: path.to_string_lossy().into_owned(),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            kind: "file",
            metadata: (!metadata.is_empty()).then_some(metadata),
        }
    }
}

/// A `200 application/json` response.
pub fn json_ok<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            http::StatusCode::OK,
            [(http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(err) => EnvdError::Internal(format!("error encoding response: {err}")).into_response(),
    }
}

/// `GET /files`: download one file.
pub async fn download(State(state): State<Arc<Envd>>, req: Request) -> Response {
    crate::http::download::download(state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

/// `POST /files`: upload one or more files.
pub async fn upload(State(state): State<Arc<Envd>>, req: Request) -> Response {
    match crate::http::upload::upload(state, req).await {
        Ok(entries) => json_ok(&entries),
        Err(err) => err.into_response(),
    }
}

/// `POST /files/compose`: concatenate files into one and delete the sources.
pub async fn compose(State(state): State<Arc<Envd>>, req: Request) -> Response {
    match crate::http::compose::compose(state, req).await {
        Ok(entry) => json_ok(&entry),
        Err(err) => err.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_percent_decoded_and_first_value_wins() {
        let q = FilesQuery::parse(Some(
            "path=%2Fhome%2Fuser%2Fa%20b.txt&username=root&path=/x&signature=v1_a%2Fb&signature_expiration=12",
        ))
        .unwrap();
        assert_eq!(q.path.as_deref(), Some("/home/user/a b.txt"));
        assert_eq!(q.username.as_deref(), Some("root"));
        assert_eq!(q.signature.as_deref(), Some("v1_a/b"));
        assert_eq!(q.signature_expiration, Some(12));
    }

    #[test]
    fn bad_expiration_is_invalid_argument() {
        let err = FilesQuery::parse(Some("signature_expiration=soon")).unwrap_err();
        assert!(matches!(err, EnvdError::InvalidArgument(_)));
    }

    #[test]
    fn write_entry_json_shape() {
        let e = WriteEntry::file(std::path::Path::new("/home/user/x.txt"), BTreeMap::new());
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"path":"/home/user/x.txt","name":"x.txt","type":"file"}"#
        );
    }
}
