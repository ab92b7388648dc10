// SPDX-License-Identifier: Apache-2.0
//! `POST /files/compose`: `{"source_paths":[…],"destination":…,"username"?}`.
//!
//! Concatenates the sources (regular files, none equal to the destination) into a
//! temporary file beside the destination, renames it over the destination, then
//! deletes the sources; the answer is `{"path","name","type":"file"}` as upstream.
//! A failure (e.g. `507` for a full disk) removes the temporary and leaves the
//! destination and the sources as they were. The body is at most
//! [`MAX_BODY`] bytes.

use crate::error::EnvdError;
use crate::filesystem::ops::{FILE_MODE, ensure_dirs, parent_of};
use crate::http::files::WriteEntry;
use crate::state::Envd;
use crate::users::User;
use axum::extract::Request;
use http_body_util::BodyExt;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Largest accepted request body.
pub const MAX_BODY: usize = 1 << 20;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct ComposeRequest {
    /// Files to concatenate, in order.
    pub source_paths: Vec<String>,
    /// File to create or replace.
    pub destination: String,
    /// User to act as.
    #[serde(default)]
    pub username: Option<String>,
}

/// Reads a JSON body of at most `limit` bytes; larger is `413`.
pub async fn read_limited_body(
    body: axum::body::Body,
    limit: usize,
) -> Result<bytes::Bytes, EnvdError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<http_body_util::LengthLimitError>() => Err(
            EnvdError::ResourceExhausted(format!("request body is larger than {limit} bytes")),
        ),
        Err(err) => Err(EnvdError::InvalidArgument(format!(
            "error reading request body: {err}"
        ))),
    }
}

/// Serves `POST /files/compose`.
pub async fn compose(state: Arc<Envd>, req: Request) -> Result<WriteEntry, EnvdError> {
    let (parts, body) = req.into_parts();
    let body = read_limited_body(body, MAX_BODY).await?;
    let request: ComposeRequest = serde_json::from_slice(&body)
        .map_err(|e| EnvdError::InvalidArgument(format!("invalid request body: {e}")))?;
    if request.source_paths.is_empty() {
        return Err(EnvdError::InvalidArgument(
            "source_paths must not be empty".to_owned(),
        ));
    }
    if request.destination.is_empty() {
        return Err(EnvdError::InvalidArgument(
            "destination is required".to_owned(),
        ));
    }
    let user = match request.username.as_deref().filter(|u| !u.is_empty()) {
        Some(name) => state.users.lookup(name)?,
        None => state.user_from_headers(&parts.headers)?,
    };
    let destination = state.resolve(&request.destination, &user)?;
    let mut sources = Vec::with_capacity(request.source_paths.len());
    for raw in &request.source_paths {
        let resolved = state.resolve(raw, &user)?;
        if resolved == destination {
            return Err(EnvdError::InvalidArgument(format!(
                "source path {raw:?} cannot be the same as destination"
            )));
        }
        sources.push((raw.clone(), resolved));
    }
    let dest = destination.clone();
    tokio::task::spawn_blocking(move || concatenate(&user, &sources, &dest))
        .await
        .map_err(|e| EnvdError::Internal(format!("compose task failed: {e}")))??;
    Ok(WriteEntry::file(&destination, BTreeMap::new()))
}

fn temp_path(destination: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = destination.as_os_str().to_owned();
    name.push(format!(".e2b-compose.{}-{n}.tmp", std::process::id()));
    PathBuf::from(name)
}

fn concatenate(
    user: &User,
    sources: &[(String, PathBuf)],
    destination: &Path,
) -> Result<(), EnvdError> {
    for (raw, path) in sources {
        let meta = std::fs::metadata(path)
            .map_err(|_| EnvdError::NotFound(format!("source file not found: {raw}")))?;
        if !meta.is_file() {
            return Err(EnvdError::InvalidArgument(format!(
                "source path is not a regular file: {raw}"
            )));
        }
    }
    ensure_dirs(&parent_of(destination), user.uid, user.gid)?;
    let tmp = temp_path(destination);
    let result = (|| -> Result<(), EnvdError> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)
            .map_err(|e| {
                EnvdError::io(
                    format!("error creating destination file {}", destination.display()),
                    e,
                )
            })?;
        std::os::unix::fs::fchown(&out, Some(user.uid), Some(user.gid)).map_err(|e| {
            EnvdError::io(
                format!("error changing ownership of {}", destination.display()),
                e,
            )
        })?;
        for (_, path) in sources {
            let mut input = std::fs::File::open(path).map_err(|e| {
                EnvdError::io(format!("error opening source file {}", path.display()), e)
            })?;
            // io::copy between files uses copy_file_range: no userspace copy.
            io::copy(&mut input, &mut out).map_err(|e| {
                EnvdError::io(format!("error composing source {}", path.display()), e)
            })?;
        }
        drop(out);
        std::fs::rename(&tmp, destination).map_err(|e| {
            EnvdError::io(
                format!("error finalizing compose into {}", destination.display()),
                e,
            )
        })
    })();
    if let Err(err) = result {
        if let Err(rm) = std::fs::remove_file(&tmp)
            && rm.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %tmp.display(), error = %rm, "cannot remove compose temporary");
        }
        return Err(err);
    }
    for (_, path) in sources {
        if let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove composed source");
        }
    }
    Ok(())
}
