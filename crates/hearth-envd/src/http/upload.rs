// SPDX-License-Identifier: Apache-2.0
//! `POST /files`: write files from a multipart or raw body.
//!
//! 1. Authorize ([`crate::http::files`]) and validate the `X-Metadata-*` headers.
//! 2. `Content-Encoding: gzip` bodies are inflated as they stream in.
//! 3. `application/octet-stream` writes the body to the `path` query (required).
//!    `multipart/*` writes every part named `file` to the `path` query if given, else
//!    to the part's `filename` taken verbatim, directories included; two parts
//!    resolving to one path are `400`. Anything else is `400`.
//! 4. Each file: parents are created for the user, the file is opened in place with
//!    `O_TRUNC` (mode `0644`), chowned to the user when it is new or owned by someone
//!    else, filled, and its metadata set replaced.
//!
//! Files are written in place rather than through a temporary and a rename so a
//! directory watcher sees what E2B's SDK tests expect (a new file is exactly CREATE,
//! CHMOD, WRITE; an overwrite starts with WRITE). A failed write of a *new* file
//! removes it, so a full disk (`507`) or a broken body leaves nothing behind; a
//! failed overwrite leaves the truncated file, as upstream does.

use crate::error::EnvdError;
use crate::filesystem::metadata::{self, Metadata};
use crate::filesystem::ops::{FILE_MODE, ensure_dirs, parent_of};
use crate::http::files::{FilesQuery, WriteEntry, authorize};
use crate::http::pipe::{self, ChunkStream, PumpError};
use crate::http::signature::Operation;
use crate::state::Envd;
use crate::users::User;
use axum::extract::Request;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use http::header;
use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Serves `POST /files`.
pub async fn upload(state: Arc<Envd>, req: Request) -> Result<Vec<WriteEntry>, EnvdError> {
    let (parts, body) = req.into_parts();
    let query = FilesQuery::parse(parts.uri.query())?;
    let user = authorize(&state, &parts, &query, Operation::Write)?;
    let metadata = metadata::from_headers(&parts.headers)?;
    let content_type = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let media_type = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();

    let mut stream = pipe::body_stream(body);
    match parts
        .headers
        .get(header::CONTENT_ENCODING)
        .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        .as_deref()
    {
        None | Some("") | Some("identity") => {}
        Some("gzip") => stream = pipe::gunzip(stream),
        Some(other) => {
            return Err(EnvdError::InvalidArgument(format!(
                "unsupported Content-Encoding: {other}, supported: [gzip]"
            )));
        }
    }

    if media_type == "application/octet-stream" {
        let Some(raw_path) = query.path.as_deref() else {
            return Err(EnvdError::InvalidArgument(
                "path query parameter is required for raw body upload".to_owned(),
            ));
        };
        let path = state.resolve(raw_path, &user)?;
        let entry = write_file(&user, path, stream, &metadata).await?;
        Ok(vec![entry])
    } else if media_type.starts_with("multipart/") {
        write_multipart(&state, &user, &query, &content_type, stream, &metadata).await
    } else {
        Err(EnvdError::InvalidArgument(format!(
            "unsupported content type: {content_type}, expected multipart/form-data or application/octet-stream"
        )))
    }
}

async fn write_multipart(
    state: &Envd,
    user: &User,
    query: &FilesQuery,
    content_type: &str,
    stream: ChunkStream,
    metadata: &Metadata,
) -> Result<Vec<WriteEntry>, EnvdError> {
    let boundary = multer::parse_boundary(content_type)
        .map_err(|e| EnvdError::InvalidArgument(format!("error parsing multipart form: {e}")))?;
    let mut form = multer::Multipart::new(stream, boundary);
    let mut written: Vec<WriteEntry> = Vec::new();
    loop {
        let field = form
            .next_field()
            .await
            .map_err(|e| EnvdError::InvalidArgument(format!("error reading form: {e}")))?;
        let Some(field) = field else {
            break;
        };
        if field.name() != Some("file") {
            continue;
        }
        let target = match (query.path.as_deref(), field.file_name()) {
            (Some(p), _) => p.to_owned(),
            (None, Some(f)) if !f.is_empty() => f.to_owned(),
            _ => {
                return Err(EnvdError::InvalidArgument(
                    "multipart part 'file' has no filename and no path query parameter was given"
                        .to_owned(),
                ));
            }
        };
        let path = state.resolve(&target, user)?;
        let path_str = path.to_string_lossy();
        if written.iter().any(|e| e.path == path_str) {
            let others: Vec<&str> = written
                .iter()
                .filter(|e| e.path != path_str)
                .map(|e| e.path.as_str())
                .collect();
            let mut message = format!(
                "you cannot upload multiple files to the same path '{path_str}' in one upload request, only the first specified file was uploaded"
            );
            if !others.is_empty() {
                message.push_str(&format!(
                    ", also the following files were uploaded: {}",
                    others.join(", ")
                ));
            }
            return Err(EnvdError::InvalidArgument(message));
        }
        let source = field.map(|chunk| {
            chunk.map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("error reading form: {e}"),
                )
            })
        });
        let entry = write_file(user, path, source, metadata).await?;
        written.push(entry);
    }
    Ok(written)
}

/// An opened upload target.
struct Target {
    file: File,
    /// Whether this upload created the file (and so removes it on failure).
    created: bool,
}

/// Creates parents, opens `path` for writing in place and fixes its owner.
fn open_target(path: &Path, user: &User) -> Result<Target, EnvdError> {
    ensure_dirs(&parent_of(path), user.uid, user.gid)?;
    let open = |extra: i32, create: bool| {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(create)
            .truncate(!create)
            .mode(FILE_MODE)
            .custom_flags(extra)
            .open(path)
    };
    let opened = match open(0, true) {
        Ok(file) => Ok((file, true)),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {
            // O_NONBLOCK keeps a FIFO at the path from hanging the open.
            open(libc::O_NONBLOCK, false).map(|f| (f, false))
        }
        Err(err) => Err(err),
    };
    let (file, created) = opened.map_err(|err| match err.raw_os_error() {
        Some(libc::EISDIR) => {
            EnvdError::InvalidArgument(format!("path is a directory: {}", path.display()))
        }
        _ => EnvdError::io(format!("error opening file {}", path.display()), err),
    })?;
    let meta = file
        .metadata()
        .map_err(|err| EnvdError::io(format!("error checking file {}", path.display()), err))?;
    // A new file always gets its owner set (as upstream: the CHMOD event is part of
    // what watchers see for a new file); an existing one only when it differs.
    let needs_chown = created || meta.uid() != user.uid || meta.gid() != user.gid;
    if needs_chown
        && let Err(err) = std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid))
    {
        if created {
            let _ = std::fs::remove_file(path);
        }
        return Err(EnvdError::io(
            format!("error changing file ownership of {}", path.display()),
            err,
        ));
    }
    Ok(Target { file, created })
}

/// Writes one file from `source`; see the module doc for the steps.
pub async fn write_file<S>(
    user: &User,
    path: PathBuf,
    source: S,
    metadata: &Metadata,
) -> Result<WriteEntry, EnvdError>
where
    S: Stream<Item = io::Result<Bytes>> + Unpin,
{
    let (open_path, open_user) = (path.clone(), user.clone());
    let target = tokio::task::spawn_blocking(move || open_target(&open_path, &open_user))
        .await
        .map_err(|e| EnvdError::Internal(format!("open task failed: {e}")))??;
    let created = target.created;
    let cleanup = |path: &Path| {
        if created && let Err(err) = std::fs::remove_file(path) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove partial upload");
        }
    };
    let file = match pipe::pump_into_file(target.file, source).await {
        Ok(file) => file,
        Err(PumpError::Write(err)) => {
            cleanup(&path);
            return Err(EnvdError::io(
                format!("error writing file {}", path.display()),
                err,
            ));
        }
        Err(PumpError::Source(err)) => {
            cleanup(&path);
            return Err(EnvdError::InvalidArgument(format!(
                "error reading upload body for {}: {err}",
                path.display()
            )));
        }
    };
    let meta_path = path.clone();
    let wanted = metadata.clone();
    let result = tokio::task::spawn_blocking(move || {
        metadata::replace(file.as_fd(), &meta_path, &wanted)?;
        drop(file);
        Ok::<_, EnvdError>(metadata::read(&meta_path))
    })
    .await
    .map_err(|e| EnvdError::Internal(format!("metadata task failed: {e}")))?;
    match result {
        Ok(stored) => Ok(WriteEntry::file(&path, stored)),
        Err(err) => {
            cleanup(&path);
            Err(err)
        }
    }
}
